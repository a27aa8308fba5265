"""Metrics read from the logits at each example's scoring position: a user's callable, checked.

The built-in ones (``logit_diff``, ``logprob``) are :class:`grokscope.discovery.scores.Metric`;
a callable ``metric(logits[batch, d_vocab], example) -> Tensor[batch]`` gets ``example``, the
batch's indices into all the examples, so it can look up its own labels while the engine
chunks the batch.

Example:
    >>> m = CallableMetric(lambda logits, example: logits[:, 0] - logits[:, 1])
    >>> m(torch.tensor([[2.0, 0.5]]), torch.tensor([0])).tolist()
    [1.5]
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CallableMetric", "Offset", "as_metric", "metric_name", "spearman"]


class CallableMetric:
    """A user's ``metric(logits[batch, d_vocab], example) -> Tensor[batch]``, its output checked."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, logits: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        out = self.fn(logits, example)
        if not isinstance(out, torch.Tensor) or out.shape != (len(logits),):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"metric {self.name} must return a tensor of shape [batch] = [{len(logits)}], got {shape}")
        return out


def as_metric(metric: Any, corruption: Any) -> Any:
    """A metric name (``logit_diff``, ``logprob``) or a callable, as a per-row metric."""
    if callable(metric):
        return CallableMetric(metric)
    return corruption.metric(metric)


def metric_name(metric: Any) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", type(metric).__name__)


class Offset:
    """A metric called with slice-local example indices, passed on as indices into all examples."""

    def __init__(self, metric: Any, lo: int) -> None:
        self.metric, self.lo = metric, lo

    def __call__(self, logits: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        return self.metric(logits, example + self.lo)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks from 1, ties sharing their average rank."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    i, n = 0, len(x)
    starts = torch.cat([torch.tensor([True]), sorted_x[1:] != sorted_x[:-1]]).nonzero().flatten().tolist() + [n]
    for i in range(len(starts) - 1):
        a, b = starts[i], starts[i + 1]
        ranks[order[a:b]] = (a + b + 1) / 2
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (ties get average ranks).

    Example:
        >>> round(spearman(torch.tensor([1., 2., 3.]), torch.tensor([10., 30., 20.])), 3)
        0.5
    """
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")
