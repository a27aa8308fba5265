"""Circuits measured many at a time: every edge outside each kept set patched, batched.

:func:`patch_edge_sets` runs the faithfulness curve, the smallest-circuit search and any
other "measure these circuits" question. Where :func:`grokscope.discovery.edges.patched_metric`
lists (row, edge) pairs (right for one edge per row), a circuit patches hundreds of edges
per row, so here each configuration is a dense mask ``patched[pos, reader, writer]`` and
the patch at every reader is one batched product: ``input_v += sum_u patched[v, u] *
(corrupt_u - live_u)``, with the live writer values read in the same forward pass. The
rows of one forward pass are (configuration, example) pairs, so the whole curve is a
few forward passes, not one per circuit.

The values are those of ``patched_metric`` with ``complement=True`` (tested against it
and against a plain forward with every other edge patched by hand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from grokscope.discovery.edges import (
    FLOAT_BUDGET,
    RowMetric,
    _check_model,
    _device,
    _Fork,
    patched_run_hooks,
    scored_logits,
)
from grokscope.discovery.graph import ComponentGraph

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def patched_masks(graph: ComponentGraph, keep: Bool[torch.Tensor, "config edge"]) -> Float[torch.Tensor, "config pos reader writer"]:
    """``1`` where an edge of the graph is patched (not kept), per configuration.

    Example:
        >>> g = ComponentGraph(1, 1, 1)
        >>> m = patched_masks(g, torch.zeros(1, g.n_edges, dtype=torch.bool))
        >>> int(m.sum()) == g.n_edges
        True
    """
    p, r, w = graph.edge_index.unbind(1)
    out = torch.zeros(keep.shape[0], graph.n_pos, graph.n_readers, graph.n_writers)
    out[:, p, r, w] = (~keep).float()
    return out


def masked_metric(
    model: TransformerBridge,
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "row pos"],
    example: Int[torch.Tensor, " row"],
    corrupt: Float[torch.Tensor, "example pos writer d_model"],
    masks: Float[torch.Tensor, "config pos reader writer"],
    config: Int[torch.Tensor, " row"],
    metric: RowMetric,
    *,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, " row"]:
    """The metric of each row with the edges of its configuration's mask patched, in one
    forward pass.

    Args:
        tokens: ``[row, pos]`` clean inputs.
        example: ``[row]`` example index of each row (into ``corrupt`` and ``metric``).
        corrupt: ``[example, pos, writer, d_model]`` replacement writer values.
        masks: ``[config, pos, reader, writer]`` 1 where the edge is patched.
        config: ``[row]`` the configuration of each row; rows of one configuration are
            contiguous (each configuration's patch is then one matrix product per position).
        metric: the per-row metric.
        score_pos: ``[example]`` the position each example's logits are read at (None: the last).
    """
    _check_model(model, graph)
    device = _device(model)
    tokens, example = tokens.to(device), example.to(device)
    W = graph.n_writers
    d = int(model.cfg.d_model)
    fork = _Fork(model, graph)
    dtype = corrupt.dtype
    masks = masks.to(device=device, dtype=dtype)
    config = config.to(device)
    rows, P = tokens.shape
    starts = [0] + (torch.nonzero(config[1:] != config[:-1]).flatten() + 1).tolist() + [rows]
    segments = [(int(config[a]), a, b) for a, b in zip(starts[:-1], starts[1:])]
    if len({c for c, _, _ in segments}) != len(segments):
        raise ValueError("rows of one configuration must be contiguous")
    repl = corrupt[example]  # [row, pos, writer, d]
    live = torch.zeros(rows, P, W, d, device=device, dtype=dtype)
    resid: dict[int, torch.Tensor] = {}
    bound = graph.bound.tolist()
    valid = graph.valid.to(device=device, dtype=dtype)

    def delta(r0: int, n: int) -> torch.Tensor | None:
        """``[row, pos, n, d_model]`` the patch of readers ``r0 .. r0 + n - 1`` (None: none patched).

        Where most of a configuration's edges into these readers are patched, every writer's
        difference is added and the few kept taken back: only the writers with a patched (or
        kept) edge enter the product, so a small circuit in a large graph is cheap."""
        b = bound[r0]
        m = masks[:, :, r0 : r0 + n, :b]  # [config, pos, n, writer]
        used = m.flatten(1).any(1).tolist()
        if not any(used[c] for c, _, _ in segments):
            return None
        ok = valid[:, r0 : r0 + n, :b]
        out = torch.zeros(rows, P, n, d, device=device, dtype=dtype)
        for c, lo, hi in segments:
            if not used[c]:
                continue
            kept = ok - m[c]
            on_p, on_k = m[c].flatten(0, 1).any(0), kept.flatten(0, 1).any(0)  # writers with a patched / kept edge
            diff = repl[lo:hi, :, :b] - live[lo:hi, :, :b]
            if int(on_k.sum()) < int(on_p.sum()):
                out[lo:hi] = diff.sum(2)[:, :, None, :] * ok[None, :, :, 0, None]
                if bool(on_k.any()):
                    out[lo:hi] -= torch.einsum("pnw,rpwd->rpnd", kept[:, :, on_k], diff[:, :, on_k])
            else:
                out[lo:hi] = torch.einsum("pnw,rpwd->rpnd", m[c][:, :, on_p], diff[:, :, on_p])
        return out

    def qkv(layer: int, which: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            n = graph.n_readers_of(which)  # query heads, or key/value heads
            dl = delta(graph.qkv_reader(layer, which, 0), n)
            if dl is None:
                return t
            r0 = graph.qkv_reader(layer, which, 0)
            touched = masks[:, :, r0 : r0 + n].any(-1)[config]  # [row, pos, head]
            new = fork.project(layer, which, resid[layer][:, :, None, :] + dl)
            return torch.where(touched[..., None], new.to(t.dtype), t)

        return hook

    def add(reader: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            dl = delta(reader, 1)
            return t if dl is None else t + dl[:, :, 0].to(t.dtype)

        return hook

    hooks = patched_run_hooks(model, graph, live, resid, qkv=qkv, mlp_in=lambda layer: add(graph.mlp_reader(layer)),
                              logits_in=add(graph.logits_reader))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
        return metric(scored_logits(logits, score_pos, example), example)


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
    """The metric with every edge outside each kept set patched, per example.

    Args:
        model: the model (eval mode).
        graph: its graph.
        clean: ``[example, pos]`` inputs.
        corrupt: ``[example, pos, writer, d_model]`` replacement writer values.
        keep: ``[config, edge]`` the edges each configuration keeps.
        metric: the per-row metric.
        batch_size: rows (configuration x example pairs) per forward pass (default: as
            many as keep the largest buffer, ``[row, pos, writer, d_model]``, within
            :data:`~grokscope.discovery.edges.FLOAT_BUDGET` floats; a smaller ``batch_size`` caps it).
        score_pos: ``[example]`` the position each example's logits are read at (None: the last).

    Returns:
        ``[config, example]`` metric values.

    Example:
        >>> vals = patch_edge_sets(model, acts.graph, acts.clean_tokens, acts.corrupt_writers,
        ...                        keep, acts.metric)              # doctest: +SKIP
    """
    if keep.ndim == 1:
        keep = keep[None]
    n, C = len(clean), keep.shape[0]
    d = int(model.cfg.d_model)
    masks = patched_masks(graph, keep.cpu())
    bs = max(1, min(batch_size or C * n, FLOAT_BUDGET // (graph.n_pos * graph.n_writers * d * 3)))
    out = torch.empty(C * n)
    cfg_of = torch.arange(C).repeat_interleave(n)
    ex_of = torch.arange(n).repeat(C)
    for lo in range(0, C * n, bs):
        c, ex = cfg_of[lo : lo + bs], ex_of[lo : lo + bs]
        out[lo : lo + len(c)] = masked_metric(model, graph, clean[ex], ex, corrupt, masks, c, metric,
                                              score_pos=score_pos).float().cpu()
    return out.reshape(C, n)
