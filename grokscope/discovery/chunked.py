"""Activations held ``batch_size`` examples at a time, so peak memory does not grow with the examples.

:func:`chunked_baselines` computes the baselines (and, for mean ablation, the mean writers) in
one pass over slices of the examples and holds no writer values;
:meth:`grokscope.discovery.scores.Activations.chunks` then recomputes each slice's writers
when scoring, patching or measuring a circuit needs them.

Example:
    >>> acts = prepare(model, corruption, batch_size=32)        # doctest: +SKIP
    >>> [lo for lo, _ in acts.chunks(model)]                    # doctest: +SKIP
    [0, 32, 64]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from grokscope.discovery.edges import writer_activations
from grokscope.discovery.graph import ComponentGraph

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["chunked_baselines"]


def chunked_baselines(
    model: TransformerBridge, c: Any, graph: ComponentGraph, m: Any, bs: int
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """What :func:`~grokscope.discovery.scores.prepare` needs, ``bs`` examples at a time, holding
    no writer values: ``(replacement writers, clean metric, corrupt metric)``. The replacement is
    None for a counterfactual (recomputed per slice), the mean or zero writers otherwise; the
    corrupt metric of a mean or zero ablation is left for the caller to patch. ``c`` is the
    :class:`~grokscope.discovery.scores.Corruption`."""
    n, sp = len(c.clean), c.score_pos
    clean_m, corrupt_m = torch.empty(n), torch.empty(n)
    total: torch.Tensor | None = None
    count: torch.Tensor | None = None
    for lo in range(0, n, bs):
        sl = slice(lo, min(n, lo + bs))
        ex = torch.arange(lo, sl.stop)
        spl = None if sp is None else sp[sl]
        cw, cl = writer_activations(model, graph, c.clean[sl], bs, with_logits=True, score_pos=spl)
        clean_m[sl] = m(cl, ex.to(cl.device)).float().cpu()
        if c.ablation == "counterfactual":
            _, xl = writer_activations(model, graph, c.corrupt[sl], bs, with_logits=True, score_pos=spl)  # type: ignore[index]
            corrupt_m[sl] = m(xl, ex.to(xl.device)).float().cpu()
        elif c.ablation == "mean":
            mask = (torch.ones(cw.shape[:2]) if c.attention_mask is None else c.attention_mask[sl].float())
            mask = mask.to(cw.device, cw.dtype)[:, :, None, None]
            part, cnt = (cw * mask).sum(0, keepdim=True), mask.sum(0, keepdim=True)
            total, count = (part, cnt) if total is None else (total + part, count + cnt)  # type: ignore[operator]
        del cw
    replace = None
    if c.ablation == "mean":
        replace = total / count.clamp(min=1)  # type: ignore[union-attr, operator]
    elif c.ablation == "zero":
        d = int(model.cfg.d_model)
        replace = torch.zeros(1, graph.n_pos, graph.n_writers, d, device=next(model.parameters()).device)
    return replace, clean_m, corrupt_m
