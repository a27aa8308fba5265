"""The checkpoint-series engine: a run's checkpoints, one seeded sample of examples, a
per-checkpoint disk cache, typed records, and a registry of the analyses run at each step.

- :mod:`.engine`: :func:`analyse_series`, :func:`register_step_analysis`, :func:`parse_steps`;
- :mod:`.records`: :class:`CheckpointRecord`, :class:`SeriesResult`;
- :mod:`.cache`: :class:`AnalysisCache` (``RUN/.grokscope-cache``), :class:`Checkpoint`;
- :mod:`.sampling`: :func:`sample_rows`, the one sampler every analysis uses.

The engine imports no analysis: lens, patching, discovery and progress register with it.
"""

from grokscope.series.cache import AnalysisCache, Checkpoint
from grokscope.series.engine import (
    SeriesRequest,
    StepOutput,
    analyse_series,
    parse_steps,
    register_step_analysis,
    weight_norm,
)
from grokscope.series.records import CheckpointRecord, SeriesResult, register_series_measure
from grokscope.series.sampling import sample_rows

__all__ = ["AnalysisCache", "Checkpoint", "SeriesRequest", "StepOutput", "analyse_series", "parse_steps",
           "register_step_analysis", "weight_norm", "CheckpointRecord", "SeriesResult",
           "register_series_measure", "sample_rows"]
