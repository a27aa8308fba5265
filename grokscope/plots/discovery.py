"""Plotly figures of discovered circuits: data in, ``go.Figure`` out.

Inputs are the plain JSON of :func:`grokscope.discovery.series.checkpoint_discovery`
(``Discovery.to_dict()``) and the records of
:func:`grokscope.discovery.series.discovery_series`. Nothing here computes an
analysis or prints.

Example:
    >>> doc = checkpoint_discovery("checkpoints/composition-small", 14658)   # doctest: +SKIP
    >>> discovered_graph(doc).write_html("circuit.html")                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokscope.discovery.graph import GraphNode
from grokscope.plots.style import split_color

_KIND_COLOR = {"embed": "#7f7f7f", "attn_head_out": "#1f77b4", "mlp_out": "#d62728", "logits": "#2ca02c"}


def _xy(node: Mapping[str, Any], n_heads: int, n_layers: int) -> tuple[float, float]:
    """Where a component sits: x = input position (heads spread), y = layer."""
    p, kind = node["position"], node["kind"]
    if kind == "embed":
        return p, -0.6
    if kind == "logits":
        return p, n_layers
    if kind in ("attn_head_out", "q_input", "k_input", "v_input"):
        return p - 0.3 + 0.6 * node["head"] / max(1, n_heads - 1), node["layer"] - 0.25
    return p, node["layer"] + 0.25  # mlp_out, mlp_in


def _node_name(node: Mapping[str, Any]) -> str:
    """The field's name of a component (``a2.h0``, ``m3``, ``input``, ``logits``), as edges are named."""
    return GraphNode(node["kind"], node["position"], node.get("layer"), node.get("head")).name.split("<")[0]


def _role(node: Mapping[str, Any], roles: Mapping[int, str]) -> str:
    return roles.get(node["position"], str(node["position"]))


def _edge_name(ed: Mapping[str, Any], a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    if ed.get("name"):
        return str(ed["name"])
    return f"{GraphNode(a['kind'], a['position'], a.get('layer'), a.get('head')).name}->" \
           f"{GraphNode(b['kind'], b['position'], b.get('layer'), b.get('head')).name}@{a['position']}"


_WIDTH_LEVELS = 8
"""Edge widths are drawn in this many levels of ``|score|`` (one trace per level and sign)."""
_POS, _NEG = "rgba(31,119,180,0.65)", "rgba(214,39,40,0.65)"


def edge_table(doc: Any, k: int = 12, *, circuit_only: bool = True) -> list[dict[str, Any]]:
    """The ``k`` strongest edges (by ``|score|``): name, score, exact effect, share of the circuit's ``|score|``.

    Args:
        doc: a :class:`~grokscope.Discovery` or its JSON.
    """
    doc = doc.to_dict() if hasattr(doc, "to_dict") else doc
    edges, nodes = doc["edges"], doc["nodes"]
    ids = doc["circuit"]["edges"] if circuit_only else range(len(edges))
    ids = sorted(ids, key=lambda e: -abs(edges[e]["score"]))[:k]
    total = sum(abs(edges[e]["score"]) for e in doc["circuit"]["edges"]) or 1.0
    return [{"name": _edge_name(edges[e], nodes[edges[e]["src"]], nodes[edges[e]["dst"]]),
             "score": edges[e]["score"], "exact": edges[e].get("exact"),
             "share": abs(edges[e]["score"]) / total if edges[e].get("in_circuit", True) else 0.0} for e in ids]


def discovered_graph(doc: Any, *, max_edges: int = 150, circuit_only: bool = True, table: int = 12,
                     title: str | None = None) -> go.Figure:
    """The discovered circuit on input positions x layers, every node labelled, with a table
    of its strongest edges beside it.

    Nodes are components named as the edges are (``a2.h0``: head 0 of layer 2; ``m1``: the
    MLP of layer 1; ``input``; ``logits``). An edge is drawn from its writer to the
    component that reads it (a head's query/key/value input at the head); blue = positive
    score (the edge carries the clean answer), red = negative, width grows with
    ``|score|``; a dotted grey line joins a head's key/value read at an earlier position
    to its write at a later one (attention moving information). Hover an edge's midpoint
    for its name, score and exact effect.

    Args:
        doc: a :class:`~grokscope.Discovery` or its JSON (``to_dict()``).
        max_edges: draw at most this many edges (the strongest).
        circuit_only: draw only the circuit's edges (False: the strongest of all edges,
            the ones outside the circuit faint).
        table: rows of the edge table beside the graph (0: no table).
        title: figure title.

    Example:
        >>> fig = gs.plots.discovered_graph(d)          # d = gs.discover(...)   # doctest: +SKIP
        >>> fig.write_image("circuit.png")              # needs kaleido           # doctest: +SKIP
    """
    doc = doc.to_dict() if hasattr(doc, "to_dict") else doc
    g = doc["graph"]
    L, H = g["n_layers"], g["n_heads"]
    nodes = doc["nodes"]
    roles = {int(v): k for k, v in doc["corruption"]["roles"].items()}
    in_circuit = set(doc["circuit"]["edges"])
    pool = doc["circuit"]["edges"] if circuit_only else range(len(doc["edges"]))
    drawn = sorted(pool, key=lambda e: -abs(doc["edges"][e]["score"]))[:max_edges]
    biggest = max((abs(doc["edges"][e]["score"]) for e in drawn), default=1.0) or 1.0
    rows = edge_table(doc, table) if table else []
    fig = make_subplots(rows=1, cols=2 if rows else 1, column_widths=[0.66, 0.34] if rows else None,
                        specs=[[{"type": "xy"}, {"type": "table"}]] if rows else [[{"type": "xy"}]],
                        horizontal_spacing=0.03)
    used: dict[tuple[str, int, Any, Any], Mapping[str, Any]] = {}
    kv_reads: dict[tuple[int, int], set[int]] = {}
    writes: dict[tuple[int, int], set[int]] = {}
    mx, my, mtext = [], [], []
    segments: dict[tuple[bool, bool, int], tuple[list[Any], list[Any]]] = {}
    for e in drawn:
        ed = doc["edges"][e]
        a, b = nodes[ed["src"]], nodes[ed["dst"]]
        comp = dict(b)
        if b["kind"] in ("q_input", "k_input", "v_input"):
            comp["kind"] = "attn_head_out"
            if b["kind"] != "q_input":
                kv_reads.setdefault((b["layer"], b["head"]), set()).add(b["position"])
        elif b["kind"] == "mlp_in":
            comp["kind"] = "mlp_out"
        if a["kind"] == "attn_head_out":
            writes.setdefault((a["layer"], a["head"]), set()).add(a["position"])
        for nd in (a, comp):
            used[(nd["kind"], nd["position"], nd.get("layer"), nd.get("head"))] = nd
        (x0, y0), (x1, y1) = _xy(a, H, L), _xy(comp, H, L)
        s = ed["score"]
        level = min(_WIDTH_LEVELS - 1, int(_WIDTH_LEVELS * abs(s) / biggest))
        seg = segments.setdefault((e in in_circuit, s >= 0, level), ([], []))
        seg[0].extend([x0, x1, None])
        seg[1].extend([y0, y1, None])
        mx.append((x0 + x1) / 2)
        my.append((y0 + y1) / 2)
        exact = "" if ed.get("exact") is None else f"<br>exact effect {ed['exact']:.3f}"
        mtext.append(f"<b>{_edge_name(ed, a, b)}</b> ({_role(a, roles)})<br>score {s:.3f}{exact}"
                     + ("" if e in in_circuit else "<br>(not in the circuit)"))
    for (inside, positive, level), (xs, ys) in sorted(segments.items()):
        color = _POS if positive else _NEG
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False, opacity=1.0 if inside else 0.25,
            line={"width": 0.5 + 8 * (level + 0.5) / _WIDTH_LEVELS, "color": color},
        ), 1, 1)
    dx: list[Any] = []
    dy: list[Any] = []
    for (layer, head), reads in kv_reads.items():
        for p_out in writes.get((layer, head), set()):
            for p_in in reads:
                if p_in < p_out:
                    src = {"kind": "attn_head_out", "position": p_in, "layer": layer, "head": head}
                    dst = {"kind": "attn_head_out", "position": p_out, "layer": layer, "head": head}
                    (x0, y0), (x1, y1) = _xy(src, H, L), _xy(dst, H, L)
                    dx.extend([x0, x1, None])
                    dy.extend([y0, y1, None])
    if dx:
        fig.add_trace(go.Scatter(x=dx, y=dy, mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 1.5, "dash": "dot", "color": "#555"}), 1, 1)
    fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", marker={"size": 7, "color": "rgba(0,0,0,0.25)"},
                             text=mtext, hovertemplate="%{text}<extra></extra>", showlegend=False), 1, 1)
    kind_names = {"embed": "input (embedding)", "attn_head_out": "head a{l}.h{h}", "mlp_out": "MLP m{l}",
                  "logits": "logits"}
    for kind in ("embed", "attn_head_out", "mlp_out", "logits"):
        pts = [nd for (k, *_), nd in used.items() if k == kind]
        if not pts:
            continue
        xy = [_xy(nd, H, L) for nd in pts]
        fig.add_trace(go.Scatter(
            x=[x for x, _ in xy], y=[y for _, y in xy], mode="markers+text", name=kind_names[kind],
            text=[_node_name(nd) for nd in pts], textposition="top center", textfont={"size": 10},
            marker={"size": 13, "color": _KIND_COLOR[kind], "line": {"color": "black", "width": 1}},
            customdata=[f"{_node_name(nd)} at {_role(nd, roles)}<br>{nd['hook_name']}" for nd in pts],
            hovertemplate="%{customdata}<extra></extra>",
        ), 1, 1)
    # legend entries that explain the encoding (no data)
    for name, line in (("edge, score > 0 (carries the clean answer)", {"color": _POS, "width": 4}),
                       ("edge, score < 0 (works against it)", {"color": _NEG, "width": 4}),
                       ("width: |score|", {"color": "#999", "width": 1}),
                       ("dotted: attention reads an earlier position", {"color": "#555", "width": 1.5, "dash": "dot"})):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, line=line), 1, 1)
    if rows:
        fig.add_trace(go.Table(
            columnwidth=[2.2, 1, 1, 1],
            header={"values": ["<b>edge</b>", "<b>score</b>", "<b>exact</b>", "<b>share</b>"], "align": "left",
                    "fill_color": "#eee"},
            cells={"values": [[r["name"] for r in rows], [f"{r['score']:.3f}" for r in rows],
                              ["" if r["exact"] is None else f"{r['exact']:.3f}" for r in rows],
                              [f"{r['share']:.1%}" for r in rows]], "align": "left", "height": 22},
        ), 1, 2)
    fig.update_xaxes(title_text="input position (role)", tickvals=list(range(g["n_pos"])),
                     ticktext=[f"{p}: {roles.get(p, p)}" for p in range(g["n_pos"])], range=[-0.6, g["n_pos"] - 0.4],
                     row=1, col=1)
    fig.update_yaxes(title_text="layer", tickvals=[-0.6, *range(L), L],
                     ticktext=["input", *[f"layer {layer}" for layer in range(L)], "logits"], range=[-1, L + 0.5],
                     row=1, col=1)
    c = doc["circuit"]
    note = "" if doc.get("reliable", True) else " — NOT RELIABLE: clean/corrupt gap is noise"
    fig.update_layout(
        title=title or (f"Discovered circuit at step {doc['step']}: {c['size']} of {g['n_edges']} edges, "
                        f"recovers {c['recovered']:.2f} ({doc['method']}, {doc['corruption']['name']}){note}"),
        height=320 + 90 * L, width=1300 if rows else 900, plot_bgcolor="white",
        legend={"orientation": "h", "y": -0.12, "x": 0, "font": {"size": 11}},
    )
    return fig


def faithfulness_figure(curves: Mapping[str, Mapping[str, Any]], *, title: str | None = None) -> go.Figure:
    """Recovered fraction over circuit size (fraction of edges, log axis), one line per curve.

    Args:
        curves: label -> :class:`~grokscope.FaithfulnessCurve` (or its ``to_dict()``); one
            curve alone is drawn as ``{"circuit": curve}``.
    """
    if hasattr(curves, "to_dict") or "fractions" in curves:
        curves = {"circuit": curves}
    fig = go.Figure()
    for label, cv in curves.items():
        cv = cv.to_dict() if hasattr(cv, "to_dict") else cv
        xs = [f for f in cv["fractions"] if f > 0]
        ys = [r for f, r in zip(cv["fractions"], cv["recovered"]) if f > 0]
        sizes = [s for f, s in zip(cv["fractions"], cv["sizes"]) if f > 0]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{label} (CPR {cv['cpr']:.3f})",
                                 text=[f"{s} edges after pruning" for s in sizes],
                                 hovertemplate="%{x:.3f} of edges: recovers %{y:.3f}<br>%{text}<extra></extra>"))
    fig.add_hline(y=0.9, line_dash="dash", line_color="#888")
    fig.update_xaxes(type="log", title_text="circuit size (fraction of all edges, before pruning)")
    fig.update_yaxes(title_text="recovered fraction of the metric")
    fig.update_layout(title=title or "Faithfulness of the discovered circuits (exact patching)", height=420,
                      plot_bgcolor="white")
    return fig


def discovery_formation(records: Mapping[str, Sequence[Mapping[str, Any]]], *, title: str | None = None) -> go.Figure:
    """Formation over checkpoints: circuit size, faithfulness, overlap, position shares.

    Args:
        records: a :class:`~grokscope.DiscoverySeries` or its ``records`` (split -> records).
    """
    records = getattr(records, "records", records)
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "edges of the smallest circuit recovering 0.9", "faithfulness curve area (CPR)",
        "edge overlap (Jaccard) with the final circuit", "share of |attribution| by input position"))
    for split, recs in records.items():
        steps = [r["step"] for r in recs]
        col = split_color(split)
        fig.add_trace(go.Scatter(x=steps, y=[r["size"] for r in recs], name=split, line={"color": col}), 1, 1)
        fig.add_trace(go.Scatter(x=steps, y=[r["cpr"] for r in recs], showlegend=False, line={"color": col}), 1, 2)
        fig.add_trace(go.Scatter(x=steps, y=[r["jaccard_final"] for r in recs], showlegend=False, line={"color": col}), 2, 1)
        roles = list(recs[0]["shares"]["position"]) if recs else []
        dashes = ("solid", "dash", "dot", "dashdot", "longdash")
        for i, role in enumerate(roles):
            fig.add_trace(go.Scatter(x=steps, y=[r["shares"]["position"][role] for r in recs],
                                     name=f"{split}: {role}", line={"color": col, "dash": dashes[i % len(dashes)]}), 2, 2)
    fig.update_xaxes(type="log", title_text="step")
    fig.update_layout(title=title or "Formation of the discovered circuit over training", height=700, plot_bgcolor="white")
    return fig
