"""Plotly figures of grokscope's analyses: results in, ``go.Figure`` out.

One package, one module per family, every figure importable from here
(``from grokscope import plots; plots.lens_heatmap(...)``):

- :mod:`.style`: the shared colours and axis helpers (the only names plot modules share);
- :mod:`.curves`: training curves, runs compared;
- :mod:`.lens`: the logit-lens heatmap;
- :mod:`.tracing`: causal-tracing heatmaps and the circuit-hypothesis diagram;
- :mod:`.formation`: lens, tracing and circuit measures across checkpoints (sliders);
- :mod:`.diagnoses`: the diagnosis and progress-measure figures, and their registry;
- :mod:`.discovery`: the discovered component graph, faithfulness curves, circuit formation;
- :mod:`.phase`: phase diagrams of sweeps.

Nothing here computes an analysis, prints or calls ``.show()``. Figures take result
objects directly (a :class:`~grokscope.SeriesResult` with a step, a ``LensResult``,
``TraceResult``, ``Discovery``) or their ``to_dict()``.

Example:
    >>> from grokscope import plots
    >>> "lens_heatmap" in dir(plots) and "discovered_graph" in dir(plots)
    True
"""

from grokscope.plots.curves import compare_runs, training_curves
from grokscope.plots.diagnoses import (
    DIAGNOSIS_FIGURES,
    attention_probe_figure,
    forecast_figure,
    fourier_embedding_figure,
    ood_diagnosis_figure,
    periodic_heatmaps,
    progress_figure,
    register_diagnosis_figure,
    value_gap_figure,
)
from grokscope.plots.discovery import (
    discovered_graph,
    discovery_formation,
    edge_table,
    faithfulness_figure,
)
from grokscope.plots.formation import circuit_measures, lens_formation, tracing_formation
from grokscope.plots.lens import lens_heatmap
from grokscope.plots.phase import phase_diagram
from grokscope.plots.style import (
    DIVERGING,
    MEASURE_COLORS,
    NOTE_WIDTH,
    PHASE_COLORS,
    SEQUENTIAL,
    SPLIT_COLORS,
    SPLIT_LABELS,
    split_color,
)
from grokscope.plots.tracing import circuit_diagram, tracing_heatmap

__all__ = [
    "training_curves", "compare_runs",
    "lens_heatmap", "tracing_heatmap", "circuit_diagram",
    "lens_formation", "tracing_formation", "circuit_measures",
    "ood_diagnosis_figure", "value_gap_figure", "fourier_embedding_figure", "progress_figure",
    "forecast_figure", "periodic_heatmaps", "register_diagnosis_figure", "DIAGNOSIS_FIGURES",
           "attention_probe_figure",
    "discovered_graph", "edge_table", "faithfulness_figure", "discovery_formation", "phase_diagram",
    "SEQUENTIAL", "DIVERGING", "SPLIT_COLORS", "SPLIT_LABELS", "MEASURE_COLORS", "PHASE_COLORS", "NOTE_WIDTH",
    "split_color",
]
