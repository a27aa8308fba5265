"""Many patched runs, batched: edge sets, single edges and groups of edges.

Each function lays out (row, edge) pairs and runs :func:`grokscope.discovery.edges.patched_metric`
on as many rows per forward pass as a float budget allows (or ``batch_size``), so memory is
bounded by the batch, not by the number of examples or edges.

Example:
    >>> per = patch_single_edges(model, graph, clean, corrupt_w, clean_w, metric, clean_m)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int

from grokscope.discovery.edges import FLOAT_BUDGET, RowMetric, patched_metric
from grokscope.discovery.graph import ComponentGraph

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["rows_per_batch", "patch_edge_sets", "patch_single_edges", "patch_edge_groups"]


def rows_per_batch(graph: ComponentGraph, d_model: int, budget: int = FLOAT_BUDGET, cap: int = 4096) -> int:
    """Rows per patched forward pass so that the live-writer buffer stays within ``budget`` floats."""
    return max(1, min(cap, budget // (graph.n_pos * graph.n_writers * d_model)))


def patch_edge_sets(
    model: TransformerBridge,
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "example pos"],
    corrupt: Float[torch.Tensor, "example pos writer d_model"],
    keep: Bool[torch.Tensor, "config edge"],
    metric: RowMetric,
    *,
    batch_size: int | None = None,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, "config example"]:
    """The metric with every edge outside each kept set patched, per example, through
    (row, edge) pairs: the reference engine. Circuits are measured with
    :func:`grokscope.discovery.edge_sets.patch_edge_sets` (dense masks, many circuits per
    forward pass; memory that does not grow with the edges listed).

    Whichever is smaller, the kept or the patched edges, is what the batch lists, so a
    nearly full and a nearly empty circuit are both cheap.

    Args:
        model: the model.
        graph: its graph.
        clean: ``[example, pos]`` inputs.
        corrupt: ``[example, pos, writer, d_model]`` replacement writer values.
        keep: ``[config, edge]`` the edges each configuration keeps.
        metric: the per-row metric.
        batch_size: rows per forward pass (default: from :func:`rows_per_batch` and the
            number of listed edges).

    Returns:
        ``[config, example]`` metric values.
    """
    n = len(clean)
    d = int(model.cfg.d_model)
    out = torch.empty(keep.shape[0], n)
    for c in range(keep.shape[0]):
        complement = int(keep[c].sum()) <= graph.n_edges // 2
        listed = torch.nonzero(keep[c] if complement else ~keep[c]).flatten()
        per_row = max(1, len(listed))
        bs = max(1, min(batch_size or n, rows_per_batch(graph, d), FLOAT_BUDGET // (per_row * d)))
        for lo in range(0, n, bs):
            ex = torch.arange(lo, min(n, lo + bs))
            pr = torch.arange(len(ex)).repeat_interleave(len(listed))
            pe = listed.repeat(len(ex))
            out[c, lo : lo + len(ex)] = patched_metric(
                model, graph, clean[ex], ex, corrupt, pr, pe, metric, complement=complement, score_pos=score_pos
            ).float().cpu()
    return out


def patch_single_edges(
    model: TransformerBridge,
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "example pos"],
    corrupt: Float[torch.Tensor, "example pos writer d_model"],
    clean_writers: Float[torch.Tensor, "example pos writer d_model"],
    metric: RowMetric,
    clean_metric: Float[torch.Tensor, " example"],
    *,
    edges: Sequence[int] | None = None,
    batch_size: int | None = None,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, "edge example"]:
    """The metric with one edge patched, for every (edge, example) pair, batched.

    A pair whose writer has the same clean and corrupt value is the clean run exactly
    (patching an identical value) and is filled from ``clean_metric`` without running.

    Returns:
        ``[edge, example]`` metric values (rows follow ``edges``, default all edges).
    """
    edge_ids = torch.arange(graph.n_edges) if edges is None else torch.as_tensor(list(edges), dtype=torch.long)
    d = int(model.cfg.d_model)
    p, _, w = graph.edge_index[edge_ids].unbind(1)
    dev = corrupt.device
    same = (corrupt[:, p.to(dev), w.to(dev)] == clean_writers[:, p.to(dev), w.to(dev)]).all(-1).T.cpu()  # [edge, example]
    out = clean_metric.float().cpu()[None, :].repeat(len(edge_ids), 1)
    je, ie = torch.nonzero(~same, as_tuple=True)
    bs = min(batch_size or len(je) or 1, rows_per_batch(graph, d))
    for lo in range(0, len(je), bs):
        jb, ib = je[lo : lo + bs], ie[lo : lo + bs]
        vals = patched_metric(
            model, graph, clean[ib], ib, corrupt, torch.arange(len(jb)), edge_ids[jb], metric, score_pos=score_pos
        )
        out[jb, ib] = vals.float().cpu()
    return out


def patch_edge_groups(
    model: TransformerBridge,
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "example pos"],
    corrupt: Float[torch.Tensor, "example pos writer d_model"],
    groups: Sequence[Int[torch.Tensor, " member"]],
    metric: RowMetric,
    *,
    batch_size: int | None = None,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, "group example"]:
    """The metric with each group of edges patched together (every other edge clean), per example.

    A group is e.g. one edge of the summed graph: its edges at every position.

    Returns:
        ``[group, example]`` metric values.
    """
    n = len(clean)
    d = int(model.cfg.d_model)
    rows = [(j, i) for j in range(len(groups)) for i in range(n)]
    out = torch.empty(len(groups), n)
    longest = max((len(g) for g in groups), default=1)
    bs = max(1, min(batch_size or len(rows) or 1, rows_per_batch(graph, d), FLOAT_BUDGET // (max(1, longest) * d)))
    for lo in range(0, len(rows), bs):
        chunk = rows[lo : lo + bs]
        jb = torch.tensor([j for j, _ in chunk])
        ib = torch.tensor([i for _, i in chunk])
        sizes = torch.tensor([len(groups[j]) for j, _ in chunk])
        pr = torch.arange(len(chunk)).repeat_interleave(sizes)
        pe = torch.cat([groups[j] for j, _ in chunk]) if len(chunk) else torch.empty(0, dtype=torch.long)
        out[jb, ib] = patched_metric(model, graph, clean[ib], ib, corrupt, pr, pe, metric,
                                     score_pos=score_pos).float().cpu()
    return out
