"""Figures of the diagnoses and progress measures, and the registry the report reads.

A diagnosis (:mod:`grokscope.progress.diagnoses`) gets its report figure by
:func:`register_diagnosis_figure`; :mod:`grokscope.plots` re-exports every name here.
Data in, a plotly Figure out; nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokscope.plots.style import (
    SEQUENTIAL,
    SPLIT_COLORS,
    SPLIT_LABELS,
    layer_ticks,
    ordered_splits,
    split_color,
)


def ood_diagnosis_figure(ood: dict[str, Any], *, title: str | None = None) -> go.Figure:
    """The paper's OOD diagnosis: bridge MRR at ``S[l, r1]`` by layer vs the final accuracy.

    Args:
        ood: :func:`grokscope.progress.diagnoses.ood_diagnosis` output.

    Returns:
        Per split: the bridge MRR line, the answer's MRR line (dotted) and the final
        accuracy as a star at the last layer.

    Example:
        >>> ood_diagnosis_figure(series.checkpoints[-1]["ood"])      # doctest: +SKIP
    """
    hooks = ood.get("hook_names", [])
    fig = go.Figure()
    for split in ordered_splits(list(ood.get("splits", {}))):
        d = ood["splits"][split]
        color, name = split_color(split), SPLIT_LABELS.get(split, split)
        x = list(range(len(d["bridge_mrr"])))
        fig.add_trace(go.Scatter(
            x=x, y=d["bridge_mrr"], mode="lines+markers", name=f"{name}: MRR of bridge at S[l, r1]",
            line={"color": color}, customdata=hooks,
            hovertemplate=f"{split}<br>%{{customdata}} at r1<br>bridge MRR %{{y:.3f}}<extra></extra>",
        ))
        fig.add_trace(go.Scatter(
            x=x, y=d["t_mrr"], mode="lines", name=f"{name}: MRR of answer t at S[l, r2]",
            line={"color": color, "dash": "dot"}, customdata=hooks,
            hovertemplate=f"{split}<br>%{{customdata}} at r2<br>t MRR %{{y:.3f}}<extra></extra>",
        ))
        fig.add_trace(go.Scatter(
            x=[x[-1]], y=[d["accuracy"]], mode="markers+text", name=f"{name}: final accuracy",
            marker={"symbol": "star", "size": 16, "color": color}, text=[f"acc {d['accuracy']:.2f}"],
            textposition="middle left",
            hovertemplate=f"{split}<br>final top-1 accuracy %{{y:.3f}} (n={d['n']})<extra></extra>",
        ))
    vals, ticks = layer_ticks(hooks)
    fig.update_xaxes(title_text="residual state S[l] (hook name)", tickvals=vals, ticktext=ticks)
    fig.update_yaxes(title_text="MRR / accuracy", range=[-0.03, 1.05])
    fig.update_layout(title=title or "OOD diagnosis: lower layers resolve the bridge, upper layers fail", height=460)
    return fig


def value_gap_figure(diag: dict[str, Any], *, title: str | None = None) -> go.Figure:
    """Comparison: accuracy by value distance ``|v1 - v2|``, one line per split.

    Args:
        diag: :func:`grokscope.progress.diagnoses.value_gap_diagnosis` output.

    Returns:
        Accuracy against ``|v1 - v2|`` (0 = equal values) per split, with the number
        of examples at each distance in the hover; the overall accuracy is in the legend.

    Example:
        >>> value_gap_figure(series.checkpoints[-1]["ood"])            # doctest: +SKIP
    """
    fig = go.Figure()
    for split in ordered_splits(list(diag.get("splits", {}))):
        d = diag["splits"][split]
        fig.add_trace(go.Scatter(
            x=d["gap"], y=d["acc_by_gap"], mode="lines+markers", customdata=d["n_by_gap"],
            name=f"{SPLIT_LABELS.get(split, split)} (all: {d['accuracy']:.2f}, n={d['n']})",
            line={"color": split_color(split)},
            hovertemplate=f"{split}<br>|v1 - v2| = %{{x}}<br>accuracy %{{y:.3f}} (n=%{{customdata}})<extra></extra>",
        ))
    fig.update_xaxes(title_text="|v1 - v2| (0: equal values)", dtick=1)
    fig.update_yaxes(title_text="accuracy (top-1)", range=[-0.03, 1.05])
    fig.update_layout(title=title or "comparison accuracy by the distance of the two values", height=440)
    return fig



DIAGNOSIS_FIGURES: dict[str, tuple[str, str, Any]] = {}
"""Diagnosis name -> (section title, caption, figure function) for the report."""


def register_diagnosis_figure(name: str, title: str, caption: str, draw: Any) -> None:
    """Register the report figure of a diagnosis (:mod:`grokscope.progress.diagnoses`)."""
    DIAGNOSIS_FIGURES[name] = (title, caption, draw)


register_diagnosis_figure(
    "ood_lens", "OOD diagnosis",
    "On test OOD inferred facts the lower layers still resolve the bridge at r1 (solid), but the "
    "answer never forms in the upper layers (dotted) and the final accuracy (star) stays low; "
    "test ID facts for contrast.",
    ood_diagnosis_figure,
)
register_diagnosis_figure(
    "value_gap", "OOD diagnosis",
    "Accuracy by the distance of the two compared values (0: equal). A model that retrieves "
    "the values and compares them gets far-apart pairs right; where test OOD falls only at "
    "small distances, the OOD values are retrieved but imprecisely.",
    value_gap_figure,
)


def attention_probe_figure(result: dict[str, Any], *, title: str | None = None) -> go.Figure:
    """Mean attention per head onto each group of each probe: one heatmap per probe.

    Args:
        result: :func:`grokscope.progress.diagnoses.attention_probe_diagnosis` output.

    Returns:
        Rows ``L{layer}.H{head}``, columns the probe's groups, colour the mean weight.

    Example:
        >>> attention_probe_figure(series.checkpoints[-1].diagnoses["attention_probes"])  # doctest: +SKIP
    """
    probes = result.get("probes", [])
    fig = make_subplots(rows=1, cols=max(len(probes), 1), horizontal_spacing=0.12,
                        subplot_titles=[f"{p['name']} ({p['n_rows']} queries)" for p in probes] or [""])
    for i, pr in enumerate(probes):
        z = np.array([[np.nan if v is None else v for v in head] for layer in pr["mass"] for head in layer], dtype=float)
        labels = [f"L{layer}.H{head}" for layer in range(len(pr["mass"])) for head in range(len(pr["mass"][layer]))]
        keep = ~np.isnan(z).all(0)
        z, groups = z[:, keep], [g for g, k in zip(pr["groups"], keep) if k]
        fig.add_trace(go.Heatmap(
            z=z, x=groups, y=labels, zmin=0, zmax=1, colorscale=SEQUENTIAL, showscale=i == len(probes) - 1,
            text=np.round(z, 2), texttemplate="%{text}", textfont={"size": 9},
            hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>",
        ), row=1, col=i + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=i + 1)
    fig.update_layout(title=title or f"attention per head ({result.get('split', '')}, {result.get('n_examples', 0)} examples)",
                      height=max(360, 22 * sum(len(layer) for layer in probes[0]["mass"]) + 160) if probes else 360)
    return fig


register_diagnosis_figure(
    "attention_probes", "Attention per head",
    "Mean attention weight of each head (rows L{layer}.H{head}) from a query position onto the groups of key "
    "positions the task names (its attention probes; a group's members summed), on sampled test examples.",
    attention_probe_figure,
)


# --------------------------------------------------------------------------- progress measures (modular addition)


def fourier_embedding_figure(result: dict[str, Any], *, title: str | None = None) -> go.Figure:
    """Norm of the residue embedding per Fourier frequency (Nanda et al.'s sparse embedding).

    Args:
        result: a :func:`grokscope.progress.fourier.fourier_progress` dict (the ``fourier``
            diagnosis of one checkpoint).

    Example:
        >>> fourier_embedding_figure(series.checkpoints[-1].diagnoses["fourier"])  # doctest: +SKIP
    """
    power = np.asarray(result["embed_power"], dtype=float)
    key = set(result.get("key_freqs", []))
    colors = ["#d62728" if k in key else "#1f77b4" for k in range(len(power))]
    fig = go.Figure(go.Bar(
        x=list(range(len(power))), y=np.sqrt(power), marker_color=colors,
        hovertemplate="frequency %{x}<br>norm %{y:.3f}<extra></extra>",
    ))
    fig.update_xaxes(title_text=f"frequency k (cos and sin of 2 pi k x / {result['p']})")
    fig.update_yaxes(title_text="embedding norm")
    keys = ", ".join(map(str, sorted(key))) or "none"
    fig.update_layout(title=title or f"residue embedding by Fourier frequency (key, red: {keys})", height=400)
    return fig


def progress_figure(data: dict[str, Any], *, title: str | None = None) -> go.Figure:
    """Restricted and excluded loss beside train and test loss, the weight norm and Gini,
    with the phases (memorisation, circuit formation, cleanup) shaded.

    Args:
        data: :func:`grokscope.progress.forecasting.report_data` output (``progress`` and ``phases``).
    """
    prog, ph = data["progress"], data["phases"]
    steps = prog["steps"]
    recs = prog["records"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss on the training pairs (log)", "weight norm and sparsity"),
                        specs=[[{}, {"secondary_y": True}]])
    for key, label, color, dash in (
        ("train_loss", "train loss", SPLIT_COLORS["train_inferred"], "solid"),
        ("test_loss", "test loss", SPLIT_COLORS["test_inferred_iid"], "solid"),
        ("restricted_loss", "restricted loss (key frequencies only)", "#2ca02c", "dash"),
        ("excluded_loss", "excluded loss (key frequencies removed)", "#9467bd", "dash"),
    ):
        fig.add_trace(go.Scatter(x=steps, y=[r.get(key) for r in recs], name=label, mode="lines+markers",
                                 line={"color": color, "dash": dash}, marker={"size": 4}), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[r["weight_norm"] for r in recs], name="weight norm", mode="lines",
                             line={"color": "#7f7f7f"}), row=1, col=2)
    for key, label, color in (("gini_embed", "Gini (embedding, Fourier)", "#e377c2"),
                              ("gini_logits", "Gini (logits, Fourier)", "#17becf")):
        fig.add_trace(go.Scatter(x=steps, y=[r[key] for r in recs], name=label, mode="lines",
                                 line={"color": color, "dash": "dot"}), row=1, col=2, secondary_y=True)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(title_text="Gini", range=[0, 1], row=1, col=2, secondary_y=True)
    fig.update_xaxes(title_text="step")
    bounds = [(0, ph.get("memorised"), "memorisation", "rgba(31,119,180,0.08)"),
              (ph.get("memorised"), ph.get("cleanup"), "circuit formation", "rgba(44,160,44,0.08)"),
              (ph.get("cleanup"), ph.get("grokked"), "cleanup", "rgba(255,127,14,0.10)")]
    for lo, hi, label, color in bounds:
        if lo is None or hi is None or hi <= lo:
            continue
        for col in (1, 2):
            fig.add_vrect(x0=lo, x1=hi, fillcolor=color, line_width=0, row=1, col=col,
                          annotation_text=label if col == 1 else None, annotation_position="top left")
    keys = ", ".join(map(str, prog["key_freqs"])) or "none"
    fig.update_layout(title=title or f"progress measures (key frequencies {keys})", height=460)
    return fig


def forecast_figure(fc: dict[str, Any], *, title: str | None = None) -> go.Figure:
    """Lead of each cheap measure's onset over test accuracy's onset (steps; > 0: it moved first;
    grey: the series was still moving right after the reference, so its lead says nothing).

    Args:
        fc: :func:`grokscope.progress.forecasting.forecast` output.
    """
    names = [n for n, m in fc["measures"].items() if m["lead"] is not None]
    leads = [fc["measures"][n]["lead"] for n in names]
    res = [fc["measures"][n]["resolution"] for n in names]
    fig = go.Figure(go.Bar(
        y=names, x=leads, orientation="h", customdata=res,
        marker_color=["#bbbbbb" if fc["measures"][n].get("moving_at_reference") else "#2ca02c" if v > 0 else "#d62728"
                      for n, v in zip(names, leads)],
        hovertemplate="%{y}<br>lead %{x} steps (grid %{customdata} steps)<extra></extra>",
    ))
    fig.add_vline(x=0, line_color="#444")
    fig.update_xaxes(title_text="onset of test accuracy minus onset of the measure (steps)")
    fig.update_layout(title=title or "grokking forecast: which cheap measure moves first",
                      height=160 + 40 * max(1, len(names)))
    return fig


register_diagnosis_figure(
    "fourier", "Embedding in the Fourier basis",
    "Norm of the residue embedding per frequency k (cos and sin of 2 pi k a / p): a grokked model "
    "uses a few key frequencies (red, found automatically: at least 10x the median frequency's power).",
    fourier_embedding_figure,
)


def periodic_heatmaps(tables: Any, labels: Sequence[str], *, title: str | None = None, cols: int = 4) -> go.Figure:
    """Activations as functions of ``(a, b)``: one heatmap per table (``[n, p, p]``).

    Args:
        tables: e.g. ``pair_activations(...)["neurons"][[0, 5, 9]]`` or ``["attn_to_a"]``.
        labels: one subplot title per table.
    """
    tables = np.asarray(tables)
    n = len(tables)
    rows = (n + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=min(cols, n), subplot_titles=list(labels))
    for i, z in enumerate(tables):
        fig.add_trace(go.Heatmap(z=z, colorscale=SEQUENTIAL, showscale=i == 0,
                                 hovertemplate="a=%{y}, b=%{x}<br>%{z:.3f}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="b")
    fig.update_yaxes(title_text="a", autorange="reversed")
    fig.update_layout(title=title or "activations at = over every pair (a, b)", height=300 * rows + 80)
    return fig
