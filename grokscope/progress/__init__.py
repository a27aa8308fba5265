"""Progress measures over a checkpoint series: the circuit's measures, the Fourier progress
measures of modular addition, the grokking forecast, and the task diagnoses.

- :mod:`.measures`: :func:`circuit_measures` (registered as the series' measures);
- :mod:`.diagnoses`: the diagnosis registry (:func:`register_diagnosis`), the paper's
  OOD and value-gap diagnoses, :func:`checkpoint_diagnosis` (the ``diagnoses`` step analysis);
- :mod:`.fourier`: key frequencies, restricted / excluded loss, :func:`progress_series`;
- :mod:`.forecast`: onsets, phases and the forecast of when test accuracy rises.
"""

from grokscope.progress.diagnoses import (
    checkpoint_diagnosis,
    ood_diagnosis,
    register_diagnosis,
    run_diagnosis,
    value_gap_diagnosis,
)
from grokscope.progress.forecasting import Phases, forecast, locate_phases
from grokscope.progress.fourier import (
    ProgressSeries,
    fourier_progress,
    key_frequencies,
    progress_series,
)
from grokscope.progress.measures import circuit_measures

__all__ = ["circuit_measures", "register_diagnosis", "run_diagnosis", "ood_diagnosis", "value_gap_diagnosis",
           "checkpoint_diagnosis", "ProgressSeries", "fourier_progress", "key_frequencies", "progress_series",
           "Phases", "forecast", "locate_phases"]
