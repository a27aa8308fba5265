"""The logit-lens heatmap (MRR of each lens target at each residual state ``S[l]``)
and its building blocks, shared with the formation figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from grokscope.plots.style import (
    SEQUENTIAL,
    is_series,
    layer_ticks,
)


def lens_view(source: Any, step: int | None) -> dict[str, Any]:
    """Normalise a SeriesResult (+ step) or a lens dict to one table."""
    if is_series(source):
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


def lens_matrix(view: dict[str, Any]) -> tuple[np.ndarray, list[str], list[list[str]]]:
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


def lens_trace(z: np.ndarray, xlabels: list[str], text: list[list[str]]) -> go.Heatmap:
    return go.Heatmap(
        z=z, x=xlabels, y=list(range(len(z))), text=text, hovertemplate="%{text}<extra></extra>",
        colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0, colorbar={"title": {"text": "MRR"}},
        texttemplate="%{z:.2f}", name="logit lens MRR",
    )


def lens_layout(fig: go.Figure, hook_names: Sequence[str], title: str) -> None:
    vals, ticks = layer_ticks(hook_names)
    fig.update_yaxes(title_text="residual state S[l] (hook name)", tickvals=vals, ticktext=ticks)
    fig.update_xaxes(title_text="lens target @ input position (role)")
    fig.update_layout(title=title, height=150 + 70 * len(hook_names))


def lens_heatmap(source: Any, step: int | None = None, *, title: str | None = None) -> go.Figure:
    """Logit-lens MRR of every target (columns, by input position) at every layer (rows).

    Args:
        source: a SeriesResult (then ``step``, default the last) or a lens dict
            (:func:`~grokscope.lens.checkpoint.checkpoint_lens`, ``LensResult.to_dict()``).
        step: the checkpoint to show.
        title: figure title.

    Returns:
        One heatmap; hover: hook name, position, MRR, the most frequent decoded token.

    Example:
        >>> lens_heatmap(series, step=1500)                          # doctest: +SKIP
    """
    view = lens_view(source, step)
    z, xlabels, text = lens_matrix(view)
    fig = go.Figure(lens_trace(z, xlabels, text))
    at = f" at step {view['step']}" if view.get("step") is not None else ""
    lens_layout(fig, view["hook_names"], title or f"logit lens: MRR of each target{at}")
    return fig
