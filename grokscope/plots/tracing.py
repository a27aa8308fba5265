"""Causal-tracing heatmaps (strength of every ``S[l, p]`` under each perturbation) and
the diagram of the task's circuit hypothesis as located on one checkpoint."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from grokscope.plots.style import (
    DIVERGING,
    NOTE_WIDTH,
    SEQUENTIAL,
    is_series,
    layer_ticks,
)


def trace_view(source: Any, step: int | None, metric: str) -> dict[str, Any]:
    if is_series(source):
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


def trace_text(view: dict[str, Any], pert: str, z: np.ndarray, label: str) -> list[list[str]]:
    out = []
    for i, hook in enumerate(view["hook_names"]):
        out.append([
            f"perturb {pert} -> {pert}'<br>hook {hook}<br>position {p} ({role})<br>{label} {z[i, p]:.3f}"
            for p, role in enumerate(view["position_roles"])
        ])
    return out


def trace_traces(view: dict[str, Any], metric_label: str, diff: dict[str, Any] | None = None) -> list[go.Heatmap]:
    traces = []
    for p in view["perturbations"]:
        z = view["values"][p]
        traces.append(go.Heatmap(
            z=z, x=view["position_roles"], y=list(range(len(z))), coloraxis="coloraxis",
            text=trace_text(view, p, z, metric_label), hovertemplate="%{text}<extra></extra>",
            name=f"{p}'", texttemplate="%{z:.2f}",
        ))
    if diff is not None:
        for p in view["perturbations"]:
            z = view["values"][p] - diff["values"][p]
            label = f"change (step {view['step']} - step {diff['step']})"
            traces.append(go.Heatmap(
                z=z, x=view["position_roles"], y=list(range(len(z))), coloraxis="coloraxis2",
                text=trace_text(view, p, z, label), hovertemplate="%{text}<extra></extra>",
                name=f"{p}' change", texttemplate="%{z:+.2f}",
            ))
    return traces


def trace_figure(view: dict[str, Any], rows: int, titles: list[str], metric_label: str) -> go.Figure:
    n = len(view["perturbations"])
    fig = make_subplots(rows=rows, cols=n, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.24, shared_yaxes=True)
    vals, ticks = layer_ticks(view["hook_names"]) if view["heads"] is None else (
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
            (:func:`~grokscope.patching.checkpoint.checkpoint_trace`, ``TraceResult``).
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
    view = trace_view(source, step, metric)
    diff = None
    if diff_from is not None:
        diff = trace_view(source if is_series(source) else diff_from, diff_from if is_series(source) else None, metric)
        if diff["perturbations"] != view["perturbations"] or len(diff["hook_names"]) != len(view["hook_names"]):
            raise ValueError("diff_from must trace the same perturbations and layers")
    label = "causal strength" if metric == "strength" else "normalised logit diff"
    at = f"step {view['step']}" if view["step"] is not None else "this checkpoint"
    titles = [f"perturb {p} (patch {p}' run), {at}" for p in view["perturbations"]]
    if diff is not None:
        titles += [f"{p}': step {view['step']} minus step {diff['step']}" for p in view["perturbations"]]
    fig = trace_figure(view, 2 if diff is not None else 1, titles, label)
    n = len(view["perturbations"])
    for i, tr in enumerate(trace_traces(view, label, diff)):
        fig.add_trace(tr, row=1 + i // n, col=1 + i % n)
    fig.update_layout(title=title or f"causal tracing ({view['site']}): {label}")
    return fig


def circuit_diagram(circuit: Any, *, title: str | None = None) -> go.Figure:
    """The circuit as a graph: nodes at (input position, layer), edges weighted by strength.

    Args:
        circuit: ``LocatedCircuit.to_dict()`` (or a LocatedCircuit, or the ``circuit`` entry of a
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
    vals, ticks = layer_ticks(hooks)
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
