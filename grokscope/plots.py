"""Plotly figures of grokscope's analyses: data in, ``go.Figure`` out.

Nothing here computes an analysis, prints or calls ``.show()``. Places are named by
their hook names (``blocks.2.hook_resid_pre``) on every axis and in every hover.
Colour scales are fixed across figures: :data:`SEQUENTIAL` on ``[0, 1]`` for MRR and
causal strength, :data:`DIVERGING` on ``[-1, 1]`` for differences, and one colour per
split (:data:`SPLIT_COLORS`).

Inputs are the plain data of :mod:`grokscope.analysis.series`: a
:class:`~grokscope.analysis.series.SeriesResult` (with a step), or the dicts of
:func:`~grokscope.analysis.series.checkpoint_lens` /
:func:`~grokscope.analysis.series.checkpoint_trace` /
:func:`~grokscope.analysis.series.checkpoint_circuit` (``LensResult.to_dict()``,
``TraceResult.to_dict()`` and ``Circuit.to_dict()`` work too).

Example:
    >>> from grokscope.analysis.series import analyse_series          # doctest: +SKIP
    >>> s = analyse_series("runs/tiny", progress=False)               # doctest: +SKIP
    >>> training_curves(s.metrics, s.steps, s.grokking).write_html("curves.html")  # doctest: +SKIP
    >>> lens_formation(s)          # a slider over checkpoints            # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    pass

SEQUENTIAL = "Viridis"
"""Colour scale of every ``[0, 1]`` quantity (MRR, causal strength)."""
DIVERGING = "RdBu_r"
"""Colour scale of every difference (``[-1, 1]``, white at 0)."""

SPLIT_COLORS: dict[str, str] = {
    "train_inferred": "#1f77b4",
    "test_inferred_iid": "#ff7f0e",
    "test_inferred_ood": "#d62728",
    "id_atomic": "#2ca02c",
    "ood_atomic": "#9467bd",
    "train": "#7f7f7f",
}
MEASURE_COLORS: tuple[str, ...] = (
    "#17becf", "#e377c2", "#8c564b", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173",
    "#8c6d31", "#5254a3",
)
"""One colour per circuit measure, none shared with a split (:data:`SPLIT_COLORS`) or the
weight norm, so every line of the measures figure's legend has its own colour."""
NOTE_WIDTH = 110
"""Characters per line of a figure's explanatory note (fits a 1,400-px window)."""
SPLIT_LABELS: dict[str, str] = {
    "train_inferred": "train (inferred)",
    "test_inferred_iid": "test ID (inferred)",
    "test_inferred_ood": "test OOD (inferred)",
    "id_atomic": "ID atomic",
    "ood_atomic": "OOD atomic",
}
SPLIT_ORDER = ("train_inferred", "test_inferred_iid", "test_inferred_ood", "id_atomic", "ood_atomic")
_FALLBACK = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")


def split_color(split: str) -> str:
    """The fixed colour of a split (unknown splits get a stable fallback)."""
    if split in SPLIT_COLORS:
        return SPLIT_COLORS[split]
    return _FALLBACK[sum(map(ord, split)) % len(_FALLBACK)]


def _ordered_splits(keys: Sequence[str]) -> list[str]:
    known = [k for k in SPLIT_ORDER if k in keys]
    return known + sorted(k for k in keys if k not in SPLIT_ORDER)


def _dashed(split: str) -> str:
    return "dot" if split.endswith("atomic") else "solid"


def _layer_ticks(hook_names: Sequence[str]) -> tuple[list[int], list[str]]:
    return list(range(len(hook_names))), [f"S[{i}] {h}" for i, h in enumerate(hook_names)]


def _log_steps(steps: Sequence[int], log_x: bool) -> np.ndarray:
    """Mask of the steps that can be drawn (a log axis cannot show step 0)."""
    s = np.asarray(steps, dtype=float)
    return s > 0 if log_x else np.ones(len(s), dtype=bool)


def _step_axis_title(log_x: bool) -> str:
    return "training step (log scale; step 0 not shown)" if log_x else "training step"


def _is_series(obj: Any) -> bool:
    return hasattr(obj, "checkpoints") and hasattr(obj, "steps")


# --------------------------------------------------------------------------- training curves


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
        grokking: :func:`grokscope.analysis.grokking.summarize_metrics` output: vertical lines at
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
    keep = _log_steps(steps, log_x)
    for row, key in ((1, "acc"), (2, "loss")):
        names = _ordered_splits(sorted({k for m in recs for k in m.get(key, {})}))
        for split in names:
            ys = np.array([m.get(key, {}).get(split, np.nan) for m in recs], dtype=float)
            ys = np.where(np.isfinite(ys), ys, np.nan)
            fig.add_trace(
                go.Scatter(
                    x=steps[keep], y=ys[keep], mode="lines", name=SPLIT_LABELS.get(split, split),
                    legendgroup=split, showlegend=row == 1,
                    line={"color": split_color(split), "dash": _dashed(split)},
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
        cs = cs[_log_steps(cs, log_x)]
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
    fig.update_xaxes(title_text=_step_axis_title(log_x), row=2, col=1)
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
        keep = _log_steps(steps, log_x)
        for col, split in enumerate(splits, start=1):
            ys = np.array([m.get("acc", {}).get(split, np.nan) for m in recs], dtype=float)
            fig.add_trace(go.Scatter(
                x=steps[keep], y=ys[keep], mode="lines", name=label, legendgroup=label, showlegend=col == 1,
                line={"color": palette[i % len(palette)]},
                hovertemplate=f"{label}<br>{split}<br>step %{{x}}<br>accuracy %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
    fig.update_xaxes(type="log" if log_x else "linear", title_text=_step_axis_title(log_x))
    fig.update_yaxes(range=[-0.03, 1.03])
    fig.update_yaxes(title_text="accuracy (top-1)", row=1, col=1)
    fig.update_layout(title=title or "runs compared", height=420, width=max(560, 360 * len(splits)),
                      hovermode="closest")
    return fig


# --------------------------------------------------------------------------- logit lens


def _lens_view(source: Any, step: int | None) -> dict[str, Any]:
    """Normalise a SeriesResult (+ step) or a lens dict to one table."""
    if _is_series(source):
        step = source.steps[-1] if step is None else step
        ck = source.checkpoint(step)
        hide = getattr(source, "lens_undecodable", {})
        return {
            "step": step, "hook_names": source.hook_names,
            "mrr": {k: v for k, v in ck["lens"].items() if k not in hide},
            "target_positions": source.lens_targets, "position_roles": source.position_roles,
            "top_tokens": ck.get("top_tokens"),
        }
    if hasattr(source, "to_dict"):
        source = source.to_dict()
    targets = source["targets"]
    pos = source.get("target_positions") or {
        k: (v["positions"][0] if v.get("positions") else i) for i, (k, v) in enumerate(targets.items())
    }
    roles = source.get("position_roles") or [str(p) for p in range(max(pos.values()) + 1)]
    hide = source.get("undecodable") or {}
    return {
        "step": step if step is not None else source.get("step"), "hook_names": source["hook_names"],
        "mrr": {k: v["mrr"] for k, v in targets.items() if k not in hide}, "target_positions": pos,
        "position_roles": roles, "top_tokens": source.get("top_tokens"),
    }


def _lens_matrix(view: dict[str, Any]) -> tuple[np.ndarray, list[str], list[list[str]]]:
    names = sorted(view["mrr"], key=lambda k: (view["target_positions"][k], list(view["mrr"]).index(k)))
    hooks, roles = view["hook_names"], view["position_roles"]
    z = np.array([[view["mrr"][k][layer] for k in names] for layer in range(len(hooks))], dtype=float)
    xlabels = [f"{k}<br>pos {view['target_positions'][k]} ({roles[view['target_positions'][k]]})" for k in names]
    top = view.get("top_tokens") or {}
    text = []
    for layer, hook in enumerate(hooks):
        row = []
        for k in names:
            p = view["target_positions"][k]
            line = f"hook {hook}<br>position {p} ({roles[p]})<br>target {k}<br>MRR {view['mrr'][k][layer]:.3f}"
            if top.get("tokens"):
                line += f"<br>top decoded token {top['tokens'][layer][p]} ({100 * top['share'][layer][p]:.0f}% of examples)"
            row.append(line)
        text.append(row)
    return z, xlabels, text


def _lens_trace(z: np.ndarray, xlabels: list[str], text: list[list[str]]) -> go.Heatmap:
    return go.Heatmap(
        z=z, x=xlabels, y=list(range(len(z))), text=text, hovertemplate="%{text}<extra></extra>",
        colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0, colorbar={"title": {"text": "MRR"}},
        texttemplate="%{z:.2f}", name="logit lens MRR",
    )


def _lens_layout(fig: go.Figure, hook_names: Sequence[str], title: str) -> None:
    vals, ticks = _layer_ticks(hook_names)
    fig.update_yaxes(title_text="residual state S[l] (hook name)", tickvals=vals, ticktext=ticks)
    fig.update_xaxes(title_text="lens target @ input position (role)")
    fig.update_layout(title=title, height=150 + 70 * len(hook_names))


def lens_heatmap(source: Any, step: int | None = None, *, title: str | None = None) -> go.Figure:
    """Logit-lens MRR of every target (columns, by input position) at every layer (rows).

    Args:
        source: a SeriesResult (then ``step``, default the last) or a lens dict
            (:func:`~grokscope.analysis.series.checkpoint_lens`, ``LensResult.to_dict()``).
        step: the checkpoint to show.
        title: figure title.

    Returns:
        One heatmap; hover: hook name, position, MRR, the most frequent decoded token.

    Example:
        >>> lens_heatmap(series, step=1500)                          # doctest: +SKIP
    """
    view = _lens_view(source, step)
    z, xlabels, text = _lens_matrix(view)
    fig = go.Figure(_lens_trace(z, xlabels, text))
    at = f" at step {view['step']}" if view.get("step") is not None else ""
    _lens_layout(fig, view["hook_names"], title or f"logit lens: MRR of each target{at}")
    return fig


# --------------------------------------------------------------------------- causal tracing


def _trace_view(source: Any, step: int | None, metric: str) -> dict[str, Any]:
    if _is_series(source):
        step = source.steps[-1] if step is None else step
        ck = source.checkpoint(step)
        table = ck["strength"] if metric == "strength" else ck["logit_diff"]
        return {
            "step": step, "site": "resid", "hook_names": source.hook_names,
            "position_roles": source.position_roles, "perturbations": source.perturbations,
            "values": {p: np.asarray(table[p], dtype=float) for p in source.perturbations},
            "layers": list(range(len(source.hook_names))), "heads": None,
        }
    if hasattr(source, "to_dict"):
        source = source.to_dict(per_example=False)
    perts = source["perturbations"]
    values = {p: np.asarray(source[metric][i], dtype=float) for i, p in enumerate(perts)}
    heads = None
    hooks = list(source["hook_names"])
    if source.get("site") == "head":  # [layer, head, pos] -> rows layer.head
        n_heads = values[perts[0]].shape[1]
        heads = n_heads
        values = {p: v.reshape(-1, v.shape[-1]) for p, v in values.items()}
        hooks = [f"{h}[head {k}]" for h in hooks for k in range(n_heads)]
    return {
        "step": step if step is not None else source.get("step"), "site": source.get("site", "resid"),
        "hook_names": hooks, "position_roles": source["position_roles"], "perturbations": perts,
        "values": values, "layers": source.get("layers"), "heads": heads,
    }


def _trace_text(view: dict[str, Any], pert: str, z: np.ndarray, label: str) -> list[list[str]]:
    out = []
    for i, hook in enumerate(view["hook_names"]):
        out.append([
            f"perturb {pert} -> {pert}'<br>hook {hook}<br>position {p} ({role})<br>{label} {z[i, p]:.3f}"
            for p, role in enumerate(view["position_roles"])
        ])
    return out


def _trace_traces(view: dict[str, Any], metric_label: str, diff: dict[str, Any] | None = None) -> list[go.Heatmap]:
    traces = []
    for p in view["perturbations"]:
        z = view["values"][p]
        traces.append(go.Heatmap(
            z=z, x=view["position_roles"], y=list(range(len(z))), coloraxis="coloraxis",
            text=_trace_text(view, p, z, metric_label), hovertemplate="%{text}<extra></extra>",
            name=f"{p}'", texttemplate="%{z:.2f}",
        ))
    if diff is not None:
        for p in view["perturbations"]:
            z = view["values"][p] - diff["values"][p]
            label = f"change (step {view['step']} - step {diff['step']})"
            traces.append(go.Heatmap(
                z=z, x=view["position_roles"], y=list(range(len(z))), coloraxis="coloraxis2",
                text=_trace_text(view, p, z, label), hovertemplate="%{text}<extra></extra>",
                name=f"{p}' change", texttemplate="%{z:+.2f}",
            ))
    return traces


def _trace_figure(view: dict[str, Any], rows: int, titles: list[str], metric_label: str) -> go.Figure:
    n = len(view["perturbations"])
    fig = make_subplots(rows=rows, cols=n, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.24, shared_yaxes=True)
    vals, ticks = _layer_ticks(view["hook_names"]) if view["heads"] is None else (
        list(range(len(view["hook_names"]))), view["hook_names"])
    for r in range(1, rows + 1):
        fig.update_yaxes(tickvals=vals, ticktext=ticks, row=r, col=1,
                         title_text=f"{view['site']} state (hook name)")
        for c in range(1, n + 1):
            fig.update_xaxes(title_text="input position (role)", row=r, col=c)
    fig.update_layout(
        coloraxis={"colorscale": SEQUENTIAL, "cmin": 0.0, "cmax": 1.0,
                   "colorbar": {"title": {"text": metric_label}, "len": 1.0 / rows, "y": 1.0,
                                "yanchor": "top"}},
        height=140 + rows * (60 + 45 * len(view["hook_names"])),
    )
    if rows > 1:
        fig.update_layout(coloraxis2={"colorscale": DIVERGING, "cmin": -1.0, "cmax": 1.0, "cmid": 0.0,
                                      "colorbar": {"title": {"text": "change"}, "len": 0.5, "y": 0.0,
                                                   "yanchor": "bottom"}})
    return fig


def tracing_heatmap(
    source: Any,
    step: int | None = None,
    *,
    diff_from: Any = None,
    metric: str = "strength",
    title: str | None = None,
) -> go.Figure:
    """Causal tracing per perturbation (one panel each), layer x position.

    Args:
        source: a SeriesResult (then ``step``, default the last) or a trace dict
            (:func:`~grokscope.analysis.series.checkpoint_trace`, ``TraceResult``).
        step: the checkpoint to show.
        diff_from: adds a second row, this checkpoint minus an early one: an earlier
            step of the same SeriesResult, or a trace dict.
        metric: ``strength`` (the paper's fraction of changed predictions) or
            ``logit_diff`` (normalised logit-difference effect).
        title: figure title.

    Returns:
        One heatmap per perturbation (and per perturbation again for the diff row).

    Example:
        >>> tracing_heatmap(series, 1500, diff_from=300)             # doctest: +SKIP
    """
    if metric not in ("strength", "logit_diff"):
        raise ValueError(f"metric must be 'strength' or 'logit_diff', got {metric!r}")
    view = _trace_view(source, step, metric)
    diff = None
    if diff_from is not None:
        diff = _trace_view(source if _is_series(source) else diff_from, diff_from if _is_series(source) else None, metric)
        if diff["perturbations"] != view["perturbations"] or len(diff["hook_names"]) != len(view["hook_names"]):
            raise ValueError("diff_from must trace the same perturbations and layers")
    label = "causal strength" if metric == "strength" else "normalised logit diff"
    at = f"step {view['step']}" if view["step"] is not None else "this checkpoint"
    titles = [f"perturb {p} (patch {p}' run), {at}" for p in view["perturbations"]]
    if diff is not None:
        titles += [f"{p}': step {view['step']} minus step {diff['step']}" for p in view["perturbations"]]
    fig = _trace_figure(view, 2 if diff is not None else 1, titles, label)
    n = len(view["perturbations"])
    for i, tr in enumerate(_trace_traces(view, label, diff)):
        fig.add_trace(tr, row=1 + i // n, col=1 + i % n)
    fig.update_layout(title=title or f"causal tracing ({view['site']}): {label}")
    return fig


# --------------------------------------------------------------------------- circuit


def circuit_diagram(circuit: Any, *, title: str | None = None) -> go.Figure:
    """The circuit as a graph: nodes at (input position, layer), edges weighted by strength.

    Args:
        circuit: ``Circuit.to_dict()`` (or a Circuit, or the ``circuit`` entry of a
            SeriesResult checkpoint).
        title: figure title.

    Returns:
        One line trace per edge (width and colour by causal strength), one trace of
        edge hover points, one trace of nodes labelled with their role and content.

    Example:
        >>> circuit_diagram(find_circuit(model, ds).to_dict())        # doctest: +SKIP
    """
    if hasattr(circuit, "to_dict"):
        circuit = circuit.to_dict()
    nodes = {nd["name"]: nd for nd in circuit["nodes"]}
    roles = circuit["roles"]
    hooks = circuit["hook_names"]
    fig = go.Figure()
    mx, my, mtext = [], [], []
    for e in circuit["edges"]:
        a, b = nodes[e["src"]], nodes[e["dst"]]
        w = float(e["weight"]) if e["weight"] is not None and np.isfinite(e["weight"]) else 0.0
        color = sample_colorscale(SEQUENTIAL, [min(max(w, 0.0), 1.0)])[0]
        fig.add_trace(go.Scatter(
            x=[a["position"], b["position"]], y=[a["layer"], b["layer"]], mode="lines",
            line={"width": 1 + 9 * max(w, 0.0), "color": color}, hoverinfo="skip", showlegend=False,
            name=f"{e['src']} -> {e['dst']}",
        ))
        mx.append((a["position"] + b["position"]) / 2)
        my.append((a["layer"] + b["layer"]) / 2)
        mtext.append(f"{e['src']} -> {e['dst']}<br>{a['hook_name']} -> {b['hook_name']}<br>"
                     f"weight {w:.3f} (causal strength under {e['perturbation']}')")
    fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", marker={"size": 8, "color": "rgba(0,0,0,0.25)"},
                             text=mtext, hovertemplate="%{text}<extra></extra>", name="edges", showlegend=False))
    nx, ny, label, hover, col = [], [], [], [], []
    for nd in circuit["nodes"]:
        nx.append(nd["position"])
        ny.append(nd["layer"])
        label.append(f"{nd['name']}: {nd['content']}")
        s = nd.get("strength")
        s = float(s) if s is not None and np.isfinite(s) else 0.0
        col.append(s)
        strengths = ", ".join(f"{k}' {v:.2f}" for k, v in nd["strengths"].items())
        mrr = "" if nd.get("mrr") is None else f"<br>MRR of {nd['content']} {nd['mrr']:.3f}"
        hover.append(f"{nd['name']} ({nd['content']})<br>hook {nd['hook_name']}<br>position {nd['position']} "
                     f"({nd['role']})<br>causal strength: {strengths}{mrr}")
    fig.add_trace(go.Scatter(
        x=nx, y=ny, mode="markers+text", text=label, textposition="middle right", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", name="nodes", showlegend=False,
        marker={"size": 22, "color": col, "colorscale": SEQUENTIAL, "cmin": 0.0, "cmax": 1.0,
                "line": {"color": "black", "width": 1},
                "colorbar": {"title": {"text": "causal strength"}}},
    ))
    by_pos = sorted(roles.items(), key=lambda kv: kv[1])
    vals, ticks = _layer_ticks(hooks)
    fig.update_xaxes(title_text="input position (role)", tickvals=[p for _, p in by_pos],
                     ticktext=[f"{p}: {r}" for r, p in by_pos],
                     range=[min(p for _, p in by_pos) - 0.5, max(p for _, p in by_pos) + 1.2])
    fig.update_yaxes(title_text="residual state S[l] (hook name)", tickvals=vals, ticktext=ticks,
                     range=[-0.5, len(hooks) - 0.5])
    layers = ", ".join(f"{k}: {v}" for k, v in circuit.get("layers", {}).items())
    step = f" at step {circuit['step']}" if circuit.get("step") is not None else ""
    fig.update_layout(title=title or f"{circuit['task']} circuit{step} (resolve layers {layers})",
                      height=200 + 80 * len(hooks), plot_bgcolor="white")
    notes = circuit.get("notes") or []
    if notes:
        lines = [line for note in notes for line in textwrap.wrap(note, NOTE_WIDTH)]
        fig.add_annotation(text="<br>".join(lines), xref="paper", yref="paper", x=0, y=-0.18,
                           xanchor="left", yanchor="top", showarrow=False, align="left", font={"size": 11})
        fig.update_layout(margin={"b": 90 + 16 * len(lines)}, height=fig.layout.height + 16 * len(lines))
    return fig


# --------------------------------------------------------------------------- diagnosis figures

_MOVED_FORMATION = {"lens_formation", "tracing_formation", "circuit_measures"}
_MOVED = {"ood_diagnosis_figure", "value_gap_figure", "register_diagnosis_figure", "fourier_embedding_figure", "progress_figure", "forecast_figure", "periodic_heatmaps", "DIAGNOSIS_FIGURES"}


def __getattr__(name: str) -> Any:
    """Diagnosis and progress figures (and their registry) live in :mod:`grokscope.diagnosis_plots`,
    the figures over a run's checkpoints in :mod:`grokscope.formation_plots`."""
    if name in _MOVED:
        from grokscope import diagnosis_plots

        return getattr(diagnosis_plots, name)
    if name in _MOVED_FORMATION:
        from grokscope import formation_plots

        return getattr(formation_plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
