"""Training curves of one run and of several runs side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokscope.plots.style import (
    SPLIT_LABELS,
    dashed,
    log_steps,
    ordered_splits,
    split_color,
    step_axis_title,
)


def training_curves(
    metrics: Sequence[dict[str, Any]],
    checkpoint_steps: Sequence[int] | None = None,
    grokking: dict[str, Any] | None = None,
    *,
    log_x: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Accuracy and loss of every split against the step; checkpoints and grokking marked.

    Args:
        metrics: metrics.jsonl records (``step``, ``acc``, ``loss``, ``train_loss``).
        checkpoint_steps: steps with a checkpoint, drawn as ticks on the accuracy panel.
        grokking: :func:`grokscope.runs.grokking.summarize_metrics` output: vertical lines at
            ``train_saturated_step`` and ``iid_generalized_step``, the gap annotated.
        log_x: logarithmic step axis (step 0 is left out).
        title: figure title.

    Returns:
        Two panels sharing the step axis. Traces: one accuracy and one loss trace per
        split, the training-batch loss, the checkpoint ticks, one per grokking line.

    Example:
        >>> fig = training_curves(run.metrics(), run.steps())        # doctest: +SKIP
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("accuracy", "loss"))
    recs = [m for m in metrics if "step" in m]
    steps = np.array([m["step"] for m in recs], dtype=float)
    keep = log_steps(steps, log_x)
    for row, key in ((1, "acc"), (2, "loss")):
        names = ordered_splits(sorted({k for m in recs for k in m.get(key, {})}))
        for split in names:
            ys = np.array([m.get(key, {}).get(split, np.nan) for m in recs], dtype=float)
            ys = np.where(np.isfinite(ys), ys, np.nan)
            fig.add_trace(
                go.Scatter(
                    x=steps[keep], y=ys[keep], mode="lines", name=SPLIT_LABELS.get(split, split),
                    legendgroup=split, showlegend=row == 1,
                    line={"color": split_color(split), "dash": dashed(split)},
                    hovertemplate=f"{split}<br>step %{{x}}<br>{key} %{{y:.4f}}<extra></extra>",
                ),
                row=row, col=1,
            )
    tl = np.array([np.nan if m.get("train_loss") is None else m["train_loss"] for m in recs], dtype=float)
    if np.isfinite(tl).any():
        fig.add_trace(
            go.Scatter(x=steps[keep], y=tl[keep], mode="lines", name="training batch loss",
                       line={"color": split_color("train"), "width": 1},
                       hovertemplate="train batch loss<br>step %{x}<br>%{y:.4f}<extra></extra>"),
            row=2, col=1,
        )
    if checkpoint_steps is not None:
        cs = np.asarray(list(checkpoint_steps), dtype=float)
        cs = cs[log_steps(cs, log_x)]
        fig.add_trace(
            go.Scatter(x=cs, y=np.zeros(len(cs)), mode="markers", name="checkpoints",
                       marker={"symbol": "triangle-up", "size": 9, "color": "black"},
                       hovertemplate="checkpoint at step %{x}<extra></extra>"),
            row=1, col=1,
        )
    if grokking:
        sat, gen = grokking.get("train_saturated_step"), grokking.get("iid_generalized_step")
        lines = [(sat, "train saturated", "#444", "dash"), (gen, "test ID generalized", "#ff7f0e", "dash")]
        for step, label, color, dash in lines:
            if step is None or (log_x and step <= 0):
                continue
            text = f"{label} (step {step})"
            if label.startswith("test") and grokking.get("grokking_gap") is not None:
                text += f"; grokking gap {grokking['grokking_gap']}"
            # Both labels sit left of their line (a label right of a late line runs off
            # the plot); the later one sits higher so that close lines do not overlap.
            top = 1.04 if label.startswith("train") else 1.10
            fig.add_trace(
                go.Scatter(x=[step, step], y=[0, top], mode="lines+text", name=text,
                           text=["", text], textposition="top left",
                           line={"color": color, "dash": dash, "width": 1.5},
                           hovertemplate=f"{text}<extra></extra>"),
                row=1, col=1,
            )
    fig.update_xaxes(type="log" if log_x else "linear")
    fig.update_xaxes(title_text=step_axis_title(log_x), row=2, col=1)
    fig.update_yaxes(title_text="accuracy (top-1)", range=[-0.03, 1.18], row=1, col=1)
    fig.update_yaxes(title_text="loss (cross-entropy)", row=2, col=1)
    fig.update_layout(title=title or "training curves", height=640, hovermode="closest",
                      legend={"orientation": "v"})
    return fig


def compare_runs(
    runs: dict[str, Sequence[dict[str, Any]]],
    splits: Sequence[str] = ("train_inferred", "test_inferred_iid", "test_inferred_ood"),
    *,
    log_x: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Accuracy curves of several runs side by side: one panel per split, one colour per run.

    Args:
        runs: label -> metrics.jsonl records (``Run.metrics()``), in legend order.
        splits: one panel per split, left to right.
        log_x: logarithmic step axis (step 0 is left out).
        title: figure title.

    Returns:
        ``len(splits)`` panels sharing the accuracy axis; one trace per (run, split),
        a run's traces sharing its colour and legend entry.

    Example:
        >>> compare_runs({"phi 7.2": a.metrics(), "phi 9": b.metrics()})   # doctest: +SKIP
    """
    fig = make_subplots(rows=1, cols=len(splits), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[SPLIT_LABELS.get(s, s) for s in splits])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    for i, (label, metrics) in enumerate(runs.items()):
        recs = [m for m in metrics if "step" in m]
        steps = np.array([m["step"] for m in recs], dtype=float)
        keep = log_steps(steps, log_x)
        for col, split in enumerate(splits, start=1):
            ys = np.array([m.get("acc", {}).get(split, np.nan) for m in recs], dtype=float)
            fig.add_trace(go.Scatter(
                x=steps[keep], y=ys[keep], mode="lines", name=label, legendgroup=label, showlegend=col == 1,
                line={"color": palette[i % len(palette)]},
                hovertemplate=f"{label}<br>{split}<br>step %{{x}}<br>accuracy %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
    fig.update_xaxes(type="log" if log_x else "linear", title_text=step_axis_title(log_x))
    fig.update_yaxes(range=[-0.03, 1.03])
    fig.update_yaxes(title_text="accuracy (top-1)", row=1, col=1)
    fig.update_layout(title=title or "runs compared", height=420, width=max(560, 360 * len(splits)),
                      hovermode="closest")
    return fig
