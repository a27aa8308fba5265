"""Circuits from edge scores, and how faithful they are, measured exactly.

A circuit is a set of edges. It is *measured* by patching every edge outside it
(:func:`grokscope.discovery.edge_sets.patch_edge_sets`) and reading the metric:
``recovered = (m(circuit) - m(corrupt)) / (m(clean) - m(corrupt))`` with the means over
examples (1: the clean run's metric, 0: every edge patched). The empty circuit is the
corrupt run (0) and the full graph the clean run (1).

Selection: ``top`` takes the ``n`` edges with the largest ``|score|``; ``greedy`` grows
the circuit from the logits, always adding the best-scoring edge into a reader the
circuit already reaches. Both then drop edges cut off from the input or the logits
(:func:`grokscope.discovery.graph.prune`).

The faithfulness curve is measured at MIB's circuit sizes (fractions of all edges,
:data:`CURVE_FRACTIONS`, plus the empty circuit); CPR is the area under it (higher is
better) and CMD the area between it and 1 (lower is better), both by the trapezoid
rule over the edge fraction. :func:`smallest_circuit` bisects the ranking for the
smallest budget whose pruned circuit recovers at least a threshold.

Example:
    >>> acts = prepare(model, corruption)                          # doctest: +SKIP
    >>> curve = faithfulness_curve(model, acts, scores)            # doctest: +SKIP
    >>> curve.cpr, curve.cmd                                       # doctest: +SKIP
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from grokscope.discovery.edge_sets import patch_edge_sets
from grokscope.discovery.graph import ComponentGraph, prune
from grokscope.discovery.scores import Activations, EdgeScores

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

CURVE_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Circuit sizes as fractions of all edges (the MIB circuit track's)."""
SELECTIONS = ("top", "greedy")


def _greedy(graph: ComponentGraph, scores: torch.Tensor, n: int) -> Bool[torch.Tensor, " edge"]:
    incoming: dict[tuple[int, int], list[int]] = {}
    for e, (p, r, _) in enumerate(graph.edge_index.tolist()):
        incoming.setdefault((p, r), []).append(e)
    heap: list[tuple[float, int]] = []
    reached: set[tuple[int, int]] = set()

    def reach(p: int, r: int) -> None:
        if (p, r) in reached:
            return
        reached.add((p, r))
        for e in incoming.get((p, r), []):
            heapq.heappush(heap, (-abs(float(scores[e])), e))

    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    for p in graph.read_positions:
        reach(p, graph.logits_reader)
    taken = 0
    while heap and taken < n:
        _, e = heapq.heappop(heap)
        if keep[e]:
            continue
        keep[e] = True
        taken += 1
        p, _, w = (int(x) for x in graph.edge_index[e])
        node = graph.writer_node(p, w)
        if node.kind == "embed":
            continue
        if node.kind == "mlp_out":
            reach(p, graph.mlp_reader(node.layer))  # type: ignore[arg-type]
        else:
            reach(p, graph.qkv_reader(node.layer, 0, node.head))  # type: ignore[arg-type]
            for q in range(p + 1):
                reach(q, graph.qkv_reader(node.layer, 1, graph.kv_head(node.head)))  # type: ignore[arg-type]
                reach(q, graph.qkv_reader(node.layer, 2, graph.kv_head(node.head)))  # type: ignore[arg-type]
    return keep


def select(scores: EdgeScores, n: int, selection: str = "top", *, pruned: bool = True) -> Bool[torch.Tensor, " edge"]:
    """A circuit of at most ``n`` edges from edge scores.

    Args:
        scores: the edge scores.
        n: the budget (edges before pruning).
        selection: ``top`` (largest ``|score|``) or ``greedy`` (grown from the logits).
        pruned: drop edges cut off from the input or the logits.

    Returns:
        ``[edge]`` the circuit.

    Example:
        >>> from grokscope.discovery.graph import ComponentGraph
        >>> g = ComponentGraph(1, 1, 1)
        >>> sc = EdgeScores(g, torch.arange(g.n_edges, dtype=torch.float), "exact")
        >>> int(select(sc, 3, pruned=False).sum())
        3
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    graph = scores.graph
    n = max(0, min(int(n), graph.n_edges))
    if selection == "greedy":
        keep = _greedy(graph, scores.scores, n)
    else:
        keep = torch.zeros(graph.n_edges, dtype=torch.bool)
        keep[scores.order()[:n]] = True
    return prune(graph, keep) if pruned else keep


def recovered(
    model: TransformerBridge, acts: Activations, keep: Bool[torch.Tensor, "config edge"]
) -> tuple[Float[torch.Tensor, " config"], Float[torch.Tensor, " config"]]:
    """Recovered fraction and mean metric of each circuit, measured by patching.

    Returns:
        ``(recovered [config], mean metric [config])``.
    """
    if keep.ndim == 1:
        keep = keep[None]
    lo, hi = float(acts.corrupt_metric.double().mean()), float(acts.clean_metric.double().mean())
    n_kept = keep.sum(1)
    mean = torch.empty(len(keep), dtype=torch.float64)
    mean[n_kept == 0] = lo  # every edge patched: the corrupt run
    mean[n_kept == keep.shape[1]] = hi  # nothing patched: the clean run
    run = torch.nonzero((n_kept > 0) & (n_kept < keep.shape[1])).flatten()
    if len(run):
        full = acts.expand(keep[run])
        m = torch.cat([patch_edge_sets(model, sub.graph, sub.clean_tokens, sub.corrupt_writers, full, sub.metric,
                                       score_pos=sub.score_pos, batch_size=sub.batch_size)
                       for _, sub in acts.chunks(model)], dim=1)
        mean[run] = m.double().mean(1)
    if abs(hi - lo) < 1e-12:  # no gap: nothing to recover (discover() warns and marks it unreliable)
        return torch.zeros_like(mean).float(), mean.float()
    return ((mean - lo) / (hi - lo)).float(), mean.float()


@dataclass
class FaithfulnessCurve:
    """Recovered fraction over circuit sizes.

    Attributes:
        fractions: budget as a fraction of all edges (0 first).
        budgets: budget in edges.
        sizes: edges left after pruning.
        recovered: recovered fraction of each circuit.
        selection: ``top`` or ``greedy``.
    """

    fractions: list[float]
    budgets: list[int]
    sizes: list[int]
    recovered: list[float]
    selection: str = "top"

    @property
    def cpr(self) -> float:
        """Area under the curve over the edge fraction (MIB's CPR; higher is better)."""
        return _trapezoid(self.fractions, self.recovered)

    @property
    def cmd(self) -> float:
        """Area between the curve and 1 (MIB's CMD; lower is better)."""
        return _trapezoid(self.fractions, [abs(1.0 - f) for f in self.recovered])

    def to_dict(self) -> dict[str, Any]:
        return {"selection": self.selection, "fractions": self.fractions, "budgets": self.budgets,
                "sizes": self.sizes, "recovered": self.recovered, "cpr": self.cpr, "cmd": self.cmd}


def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


def faithfulness_curve(
    model: TransformerBridge,
    acts: Activations,
    scores: EdgeScores,
    *,
    fractions: Sequence[float] = CURVE_FRACTIONS,
    selection: str = "top",
) -> FaithfulnessCurve:
    """Measure the recovered fraction of the circuit at each size (plus the empty one)."""
    n_edges = scores.graph.n_edges
    fr = [0.0] + [float(f) for f in fractions]
    budgets = [int(round(f * n_edges)) if f < 1 else n_edges for f in fr]
    budgets = [max(1, b) if f > 0 else 0 for f, b in zip(fr, budgets)]
    keeps = torch.stack([select(scores, b, selection) for b in budgets])
    rec, _ = recovered(model, acts, keeps)
    return FaithfulnessCurve(fr, budgets, [int(k.sum()) for k in keeps], [float(x) for x in rec], selection)


@dataclass
class EdgeCircuit:
    """A selected circuit and what it recovers.

    Attributes:
        keep: ``[edge]`` the circuit's edges.
        budget: edges selected before pruning.
        recovered: measured recovered fraction.
        threshold: the target it was searched for (None for a fixed budget).
        selection: ``top`` or ``greedy``.
    """

    keep: Bool[torch.Tensor, " edge"]
    budget: int
    recovered: float
    threshold: float | None = None
    selection: str = "top"

    @property
    def size(self) -> int:
        return int(self.keep.sum())


def circuit_of_size(model: TransformerBridge, acts: Activations, scores: EdgeScores, n: int, selection: str = "top") -> EdgeCircuit:
    """The circuit of budget ``n``, measured."""
    keep = select(scores, n, selection)
    rec, _ = recovered(model, acts, keep)
    return EdgeCircuit(keep, int(n), float(rec[0]), None, selection)


def smallest_circuit(
    model: TransformerBridge,
    acts: Activations,
    scores: EdgeScores,
    threshold: float = 0.9,
    *,
    selection: str = "top",
    curve: FaithfulnessCurve | None = None,
) -> EdgeCircuit:
    """The smallest budget whose pruned circuit recovers ``>= threshold``, by bisection.

    The curve's sizes bracket the search (the first size that reaches the threshold
    and the one before it); inside the bracket the budget is bisected, measuring each
    candidate exactly. The full graph recovers 1, so a circuit is always found.
    """
    curve = curve or faithfulness_curve(model, acts, scores, selection=selection)
    n_edges = scores.graph.n_edges
    hi = next((b for b, f in zip(curve.budgets, curve.recovered) if f >= threshold), n_edges)
    lower = [b for b, f in zip(curve.budgets, curve.recovered) if b < hi]
    lo = max(lower) if lower else 0
    best_rec = next((f for b, f in zip(curve.budgets, curve.recovered) if b == hi), None)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        rec, _ = recovered(model, acts, select(scores, mid, selection))
        if float(rec[0]) >= threshold:
            hi, best_rec = mid, float(rec[0])
        else:
            lo = mid
    keep = select(scores, hi, selection)
    if best_rec is None:
        best_rec = float(recovered(model, acts, keep)[0][0])
    return EdgeCircuit(keep, hi, best_rec, threshold, selection)


Circuit = EdgeCircuit
"""Deprecated alias (grokscope 0.1): :class:`EdgeCircuit` (the located hypothesis circuit
is :class:`grokscope.patching.hypothesis.LocatedCircuit`)."""
