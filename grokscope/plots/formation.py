"""Figures of a circuit's formation over a run's checkpoints (slider heatmaps, measures).

Data in (a :class:`~grokscope.series.records.SeriesResult`), a plotly Figure out;
:mod:`grokscope.plots` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokscope.plots.lens import lens_layout, lens_matrix, lens_trace, lens_view
from grokscope.plots.style import (
    MEASURE_COLORS,
    SPLIT_LABELS,
    log_steps,
    split_color,
    step_axis_title,
)
from grokscope.plots.tracing import trace_figure, trace_traces, trace_view

if TYPE_CHECKING:
    from grokscope.series.records import SeriesResult


def _slider(steps: Sequence[int], active: int, prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sliders = [{
        "active": active,
        "currentvalue": {"prefix": prefix},
        "pad": {"t": 50},
        "x": 0.1,
        "len": 0.9,
        "steps": [
            {"label": str(s), "method": "animate",
             "args": [[str(s)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                 "transition": {"duration": 0}}]}
            for s in steps
        ],
    }]
    buttons = [{
        "type": "buttons", "direction": "left", "showactive": False, "x": 0.0, "y": 0.0, "xanchor": "left",
        "yanchor": "top", "pad": {"t": 75},
        "buttons": [
            {"label": "play", "method": "animate",
             "args": [None, {"frame": {"duration": 600, "redraw": True}, "fromcurrent": True,
                             "transition": {"duration": 0}}]},
            {"label": "pause", "method": "animate",
             "args": [[None], {"mode": "immediate", "frame": {"duration": 0, "redraw": False}}]},
        ],
    }]
    return sliders, buttons


def lens_formation(series: SeriesResult, *, title: str | None = None) -> go.Figure:
    """The logit-lens heatmap with a slider over checkpoints (one plotly frame per step).

    Starts at the last checkpoint.

    Example:
        >>> fig = lens_formation(series); len(fig.frames) == len(series.steps)   # doctest: +SKIP
        True
    """
    frames = []
    for step in series.steps:
        view = lens_view(series, step)
        frames.append(go.Frame(data=[lens_trace(*lens_matrix(view))], name=str(step)))
    fig = go.Figure(data=list(frames[-1].data), frames=frames)
    sliders, buttons = _slider(series.steps, len(series.steps) - 1, "checkpoint step ")
    lens_layout(fig, series.hook_names, title or "formation of the logit lens over training (slider: checkpoint step)")
    fig.update_layout(sliders=sliders, updatemenus=buttons, height=fig.layout.height + 120)
    return fig


def tracing_formation(series: SeriesResult, *, metric: str = "strength", title: str | None = None) -> go.Figure:
    """Causal-tracing heatmaps (one panel per perturbation) with a slider over checkpoints.

    Example:
        >>> fig = tracing_formation(series); len(fig.frames) == len(series.steps)  # doctest: +SKIP
        True
    """
    label = "causal strength" if metric == "strength" else "normalised logit diff"
    views = [trace_view(series, step, metric) for step in series.steps]
    n = len(series.perturbations)
    titles = [f"perturb {p} (patch {p}' run)" for p in series.perturbations]
    fig = trace_figure(views[-1], 1, titles, label)
    for i, tr in enumerate(trace_traces(views[-1], label)):
        fig.add_trace(tr, row=1, col=1 + i)
    fig.frames = [
        go.Frame(data=trace_traces(v, label), name=str(v["step"]), traces=list(range(n))) for v in views
    ]
    sliders, buttons = _slider(series.steps, len(series.steps) - 1, "checkpoint step ")
    fig.update_layout(title=title or f"formation of causal tracing (resid): {label} (slider: checkpoint step)",
                      sliders=sliders, updatemenus=buttons, height=fig.layout.height + 140)
    return fig


def circuit_measures(series: SeriesResult, *, log_x: bool = True, title: str | None = None) -> go.Figure:
    """Circuit measures over training beside the accuracies and the weight norm.

    Left: :meth:`SeriesResult.measures` (lens MRR solid, causal strength dashed) at the
    reference layer; middle: accuracies of the inferred splits at the analysed steps;
    right: total weight norm.

    Returns:
        One trace per measure, per accuracy split, and one for the weight norm.

    Example:
        >>> circuit_measures(series)                                 # doctest: +SKIP
    """
    m = series.measures()
    steps = np.asarray(series.steps, dtype=float)
    keep = log_steps(steps, log_x)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        f"circuit measures at S[{m['reference_layer']}] ({m['hook_name']})", "accuracy", "total weight norm"))
    if len(m["measures"]) > len(MEASURE_COLORS):
        raise ValueError(f"{len(m['measures'])} measures but {len(MEASURE_COLORS)} distinct colours; extend MEASURE_COLORS")
    for color, (label, vals) in zip(MEASURE_COLORS, m["measures"].items()):
        ys = np.asarray(vals, dtype=float)
        fig.add_trace(go.Scatter(
            x=steps[keep], y=ys[keep], mode="lines+markers", name=label, legendgroup="measures",
            line={"color": color, "dash": "dash" if label.startswith("strength") else "solid"},
            hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.3f}}<extra></extra>",
        ), row=1, col=1)
    for split in ("train_inferred", "test_inferred_iid", "test_inferred_ood"):
        ys = np.array([np.nan if a is None else a for a in series.acc(split)], dtype=float)
        if not np.isfinite(ys).any():
            continue
        fig.add_trace(go.Scatter(
            x=steps[keep], y=ys[keep], mode="lines+markers", name=f"acc {SPLIT_LABELS.get(split, split)}",
            legendgroup="acc", line={"color": split_color(split)},
            hovertemplate=f"{split}<br>step %{{x}}<br>acc %{{y:.3f}}<extra></extra>",
        ), row=1, col=2)
    wn = np.asarray(m["weight_norm"], dtype=float)
    fig.add_trace(go.Scatter(
        x=steps[keep], y=wn[keep], mode="lines+markers", name="weight norm", line={"color": "#444"},
        hovertemplate="step %{x}<br>sqrt(sum of squared params) %{y:.2f}<extra></extra>",
    ), row=1, col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(type="log" if log_x else "linear", title_text=step_axis_title(log_x), row=1, col=c)
    fig.update_yaxes(title_text="MRR / causal strength", range=[-0.03, 1.03], row=1, col=1)
    fig.update_yaxes(title_text="accuracy (top-1)", range=[-0.03, 1.03], row=1, col=2)
    fig.update_yaxes(title_text="sqrt(sum of squared params)", row=1, col=3)
    fig.update_layout(title=title or "circuit formation beside accuracy", height=520,
                      legend={"orientation": "h", "y": -0.25})
    return fig


