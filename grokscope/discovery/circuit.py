"""Discover a checkpoint's circuit: score every edge, select, measure, explain.

:func:`discover` scores every edge of the component graph on a corruption (EAP-IG by
default), selects the smallest circuit that recovers a target fraction of the metric
(or a fixed number of edges), measures it exactly, measures the exact effect of each
of its edges, and traces the faithfulness curve. :class:`Discovery` holds it all;
``to_dict`` is the JSON the CLI writes (every number can be recomputed from it: the
examples' token ids and answers, the nodes with hook names, every edge's score).

:func:`attribution_shares` splits ``|score|`` by input position and by writer kind;
:func:`hypothesis_coverage` says how much of a circuit's ``|score|`` lies on the
residual-stream paths of a hypothesis (today's ``find_circuit``).

Example:
    >>> cf = make_counterfactuals(ds, "train_inferred", n=300)["h"]      # doctest: +SKIP
    >>> d = discover(model, Corruption.from_counterfactuals(cf))         # doctest: +SKIP
    >>> d.circuit.size, d.circuit.recovered                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from grokscope.discovery.faithfulness import (
    EdgeCircuit,
    FaithfulnessCurve,
    circuit_of_size,
    faithfulness_curve,
    smallest_circuit,
)
from grokscope.discovery.graph import ComponentGraph
from grokscope.discovery.scores import (
    DEFAULT_IG_STEPS,
    Activations,
    Corruption,
    EdgeScores,
    exact_effects,
    gap_reliable,
    metric_name,
    prepare,
    score_edges,
)
from grokscope.display import Summarized
from grokscope.errors import NoisyResultWarning

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DEFAULT_RECOVER = 0.9
JSON_SCHEMA = 1


@dataclass(repr=False)
class Discovery(Summarized):
    """A discovered circuit and the evidence for it.

    Attributes:
        corruption: the examples and their corruption.
        scores: every edge's score.
        circuit: the selected circuit, measured.
        curve: the faithfulness curve of the ranking.
        exact: ``[edge]`` exact single-edge effects where measured (NaN elsewhere).
        clean_metric, corrupt_metric: mean metric of the clean run and with every edge patched.
        metric: the metric's name.
        step: the checkpoint step, when known.
    """

    corruption: Corruption
    scores: EdgeScores
    circuit: EdgeCircuit
    curve: FaithfulnessCurve
    exact: torch.Tensor
    clean_metric: float
    corrupt_metric: float
    metric: str = "logit_diff"
    step: int | None = None
    reliable: bool = True
    """False when the clean/corrupt metric gap is noise (:func:`gap_reliable`); fractions then mean nothing."""


    def summary(self) -> dict[str, Any]:
        """Method, graph size, the circuit's size and recovered fraction, the metric gap."""
        return {"method": self.scores.method, "edges": int(self.graph.n_edges), "circuit": self.circuit.size,
                "recovered": round(float(self.circuit.recovered), 3),
                "gap": round(self.clean_metric - self.corrupt_metric, 3), "reliable": self.reliable, "step": self.step}

    @property
    def graph(self) -> ComponentGraph:
        return self.scores.graph

    def circuit_edges(self) -> list[int]:
        """The circuit's edge numbers, by decreasing ``|score|``."""
        return [int(e) for e in self.scores.order() if self.circuit.keep[e]]

    def shares(self, circuit_only: bool = False) -> dict[str, dict[str, float]]:
        """:func:`attribution_shares` of all edges (or of the circuit's)."""
        return attribution_shares(self.scores, self.circuit.keep if circuit_only else None, self.corruption.roles)

    def edge_records(self, k: int | None = None, *, circuit_only: bool = False) -> list[Edge]:
        """Edges sorted by ``|score|`` (the circuit's only, with ``circuit_only``), the first ``k``."""
        g, scores, keep = self.graph, self.scores.scores.float(), self.circuit.keep
        idx = torch.nonzero(keep).flatten() if circuit_only else torch.arange(g.n_edges)
        idx = idx[torch.argsort(scores[idx].abs(), descending=True, stable=True)][:k]
        total = float(scores[keep].abs().sum()) or 1.0
        out = []
        for e in idx.tolist():
            w, r = g.edge_nodes(e)
            x = float(self.exact[e])
            out.append(Edge(e, g.edge_name(e), w.name, r.name, None if g.summed else w.position, float(scores[e]),
                            None if x != x else x, bool(keep[e]),
                            abs(float(scores[e])) / total if bool(keep[e]) else 0.0))
        return out

    def edges(self, k: int | None = None, *, circuit_only: bool = False) -> Any:
        """The edges as a pandas DataFrame, one row an :class:`Edge`, sorted by ``|score|``.

        Example:
            >>> d.edges(10, circuit_only=True)[["name", "score", "exact", "share"]]   # doctest: +SKIP
        """
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dependency
            raise ImportError("Discovery.edges() needs pandas: pip install pandas") from None
        rows = [dataclasses.asdict(e) for e in self.edge_records(k, circuit_only=circuit_only)]
        return pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(Edge)])

    def to_mib(self, d_model: int | None = None) -> Any:
        """The scores and the circuit in the EAP-IG / MIB graph format (:func:`grokscope.discovery.mib.to_mib`).

        Example:
            >>> d.to_mib(d_model=model.cfg.d_model).to_dict()["edges"]["m0->logits"]   # doctest: +SKIP
        """
        from grokscope.discovery.mib import to_mib

        return to_mib(self, d_model=d_model)

    def to_dict(self) -> dict[str, Any]:
        g = self.graph
        P, W, R = g.n_pos, g.n_writers, g.n_readers
        writer_ids = {(p, w): p * W + w for p in range(P) for w in range(W)}
        nodes: list[dict[str, Any]] = []
        unplaced = {"position": None} if g.summed else {}
        ws = self.scores.writer_scores()
        for p in range(P):
            for w in range(W):
                nodes.append({"id": writer_ids[(p, w)], **g.writer_node(p, w).to_dict(), **unplaced,
                              "score": float(ws[p, w])})
        reader_score = torch.zeros(P, R)
        pe, re_, _ = g.edge_index.unbind(1)
        reader_score.index_put_((pe, re_), self.scores.scores.float(), accumulate=True)
        reader_ids: dict[tuple[int, int], int] = {}
        for p in range(P):
            for r in range(R):
                if r == g.logits_reader and p not in g.read_positions:
                    continue
                reader_ids[(p, r)] = len(nodes)
                nodes.append({"id": len(nodes), **g.reader_node(p, r).to_dict(), **unplaced,
                              "score": float(reader_score[p, r])})
        edges = []
        for e, (p, r, w) in enumerate(g.edge_index.tolist()):
            x = float(self.exact[e])
            edges.append({"name": g.edge_name(e), "src": writer_ids[(p, w)], "dst": reader_ids[(p, r)],
                          "score": float(self.scores.scores[e]),
                          "exact": None if x != x else x, "in_circuit": bool(self.circuit.keep[e])})
        c = self.corruption
        return {
            "schema_version": JSON_SCHEMA,
            "step": self.step,
            "method": self.scores.method,
            "ig_steps": self.scores.ig_steps,
            "metric": self.metric,
            "corruption": {"ablation": c.ablation, "name": c.name, "roles": dict(c.roles)},
            "graph": g.to_dict(),
            "examples": {k: v for k, v in c.to_dict().items() if k not in ("ablation", "name", "roles")},
            "clean_metric": self.clean_metric,
            "reliable": self.reliable,
            "corrupt_metric": self.corrupt_metric,
            "nodes": nodes,
            "edges": edges,
            "circuit": {"edges": self.circuit_edges(), "size": self.circuit.size, "budget": self.circuit.budget,
                        "threshold": self.circuit.threshold, "selection": self.circuit.selection,
                        "recovered": self.circuit.recovered, "fraction_of_edges": self.circuit.size / g.n_edges},
            "curve": self.curve.to_dict(),
            "shares": self.shares(),
            "circuit_shares": self.shares(circuit_only=True),
            "seconds": self.scores.seconds,
        }


def discover(
    model: TransformerBridge,
    clean: Any,
    corrupt: Any = None,
    *,
    answer: Any = None,
    cf_answer: Any = None,
    attention_mask: Any = None,
    ablation: str | None = None,
    metric: Any = None,
    positions: str = "last",
    method: str = "eap-ig",
    ig_steps: int = DEFAULT_IG_STEPS,
    batch_size: int | None = None,
    top: int | None = None,
    recover: float = DEFAULT_RECOVER,
    selection: str = "top",
    measure_circuit_edges: int = 200,
    step: int | None = None,
) -> Discovery:
    """Score every edge, select the smallest faithful circuit, measure it.

    Takes what a researcher has: prompts as strings (tokenized with the model's
    tokenizer, right-padded, each scored at its own last real token; see
    :func:`grokscope.discovery.inputs.encode`), token tensors (with ``attention_mask``
    for right-padded prompts of different lengths), or a ready :class:`Corruption`
    (``discover(model, corruption)`` and ``discover(model, corruption, "exact")`` keep working).

    Args:
        model: any ``TransformerBridge`` (HF-booted or native) or grokscope model, in eval mode.
        clean: prompts (list of strings or ``[example, pos]`` token ids) or a :class:`Corruption`.
        corrupt: counterfactual prompts of the same form (each as many tokens as its clean
            prompt); None with ``ablation="mean"`` or ``"zero"``.
        answer, cf_answer: ``[example]`` token ids or single-token strings.
        attention_mask: ``[example, pos]`` for token-id prompts (1 real, 0 right padding).
        ablation: ``counterfactual`` (default with ``corrupt``), ``mean`` (default without:
            each writer replaced by its mean over the prompts) or ``zero``.
        metric: ``logit_diff`` (needs ``answer`` and ``cf_answer``), ``logprob`` (needs
            ``answer``) or a callable ``metric(logits, example) -> Tensor[batch]`` with
            ``logits`` ``[batch, d_vocab]`` at each prompt's scoring position and ``example``
            the batch's indices into the prompts. None: ``logit_diff`` when counterfactual
            answers are given, else ``logprob``.
        positions: ``last`` (a node per component and position; the prediction read at
            each prompt's scoring position) or ``sum`` (one node per head / MLP, scores and
            patches summed over positions, as EAP-IG and MIB do for prompts of different lengths).
        method: ``eap``, ``eap-ig``, ``eap-ig-activations``, ``eap-ig-exact`` or ``exact``
            (:data:`grokscope.discovery.scores.METHODS`).
        ig_steps: EAP-IG path points (default :data:`DEFAULT_IG_STEPS`, from a measurement).
        batch_size: examples per slice: writer values are computed ``batch_size`` prompts at
            a time and no forward pass holds more rows, so peak memory is bounded by it, not by
            the number of prompts (None: every prompt's writers held, rows from a float budget).
        top: a fixed budget of edges (None: the smallest circuit recovering ``recover``).
        recover: the recovered fraction to reach when ``top`` is None.
        selection: ``top`` or ``greedy``.
        measure_circuit_edges: also patch alone (exact effect) up to this many of the
            circuit's strongest edges (0: none).
        step: checkpoint step to record.

    Returns:
        A :class:`Discovery`.

    Example:
        >>> d = discover(model, ["When Mary and John went out, John gave a drink to"],
        ...              ["When Mary and John went out, Mary gave a drink to"],
        ...              answer=[" Mary"], cf_answer=[" John"])            # doctest: +SKIP
        >>> d.edges(10)                                                    # doctest: +SKIP
    """
    from grokscope.discovery.inputs import encode

    if isinstance(clean, Corruption):
        if isinstance(corrupt, str):  # the old positional method: discover(model, corruption, "exact")
            method, corrupt = corrupt, None
        if corrupt is not None or answer is not None or cf_answer is not None or attention_mask is not None:
            raise ValueError("discover(model, corruption): the Corruption already holds the prompts and answers")
        corruption = clean
    else:
        corruption = encode(model, clean, corrupt, answer=answer, cf_answer=cf_answer,
                            attention_mask=attention_mask, ablation=ablation)
    if metric is None:
        metric = "logit_diff" if corruption.cf_answer is not None else "logprob"
    name = metric_name(metric)
    acts: Activations = prepare(model, corruption, metric, positions=positions, batch_size=batch_size)
    reliable, why = gap_reliable(acts.clean_metric, acts.corrupt_metric)
    if not reliable:
        warnings.warn(f"discovery{'' if step is None else f' at step {step}'}: {why}; the result is marked "
                      "reliable=False", NoisyResultWarning, stacklevel=2)
    scores = score_edges(model, corruption, method, metric=metric, ig_steps=ig_steps, acts=acts)
    curve = faithfulness_curve(model, acts, scores, selection=selection)
    if top is not None:
        circuit = circuit_of_size(model, acts, scores, top, selection)
    else:
        circuit = smallest_circuit(model, acts, scores, recover, selection=selection, curve=curve)
    exact = torch.full((scores.graph.n_edges,), float("nan"))
    measured = getattr(scores, "measured", None)  # eap-ig-exact: its top edges are already exact
    if measured is not None:
        exact[measured] = scores.scores[measured].float()
    if method == "exact":
        exact = scores.scores.clone()
    elif measure_circuit_edges > 0 and bool(circuit.keep.any()):
        ids = [int(e) for e in scores.order() if circuit.keep[e]][:measure_circuit_edges]
        ids = [e for e in ids if exact[e] != exact[e]]
        if ids:
            exact[ids] = exact_effects(model, acts, ids)
    return Discovery(corruption, scores, circuit, curve, exact, float(acts.clean_metric.double().mean()),
                     float(acts.corrupt_metric.double().mean()), name, step, reliable)


def attribution_shares(
    scores: EdgeScores, keep: torch.Tensor | None = None, roles: Mapping[str, int] | None = None
) -> dict[str, dict[str, float]]:
    """Share of ``|score|`` by input position (named by role) and by writer kind.

    Args:
        scores: edge scores.
        keep: restrict to these edges (a circuit), or None for all.
        roles: role -> position, to name positions (else ``"0"``, ``"1"``...).

    Returns:
        ``{"position": {role: share}, "kind": {"embed"|"attn_head_out"|"mlp_out": share}}``.
    """
    g = scores.graph
    a = scores.scores.abs().double()
    if keep is not None:
        a = a * keep.double()
    total = float(a.sum()) or 1.0
    p, _, w = g.edge_index.unbind(1)
    by_pos = {v: k for k, v in (roles or {}).items()}
    pos = {by_pos.get(q, str(q)): float(a[p == q].sum()) / total for q in range(g.n_pos)}
    kinds = torch.tensor([("embed", "attn_head_out", "mlp_out").index(k) for k in g.writer_kind])[w]
    kind = {k: float(a[kinds == i].sum()) / total for i, k in enumerate(("embed", "attn_head_out", "mlp_out"))}
    return {"position": pos, "kind": kind}


def _edge_span(g: ComponentGraph, e: int) -> tuple[int, int, int]:
    """``(position, first, last)``: the residual states ``S[first..last, position]`` an edge travels."""
    p, r, w = (int(x) for x in g.edge_index[e])
    first = int(g.writer_layer[w]) + 1
    last = g.reader_layer(r)
    return p, first, max(first, last)


def hypothesis_coverage(scores: EdgeScores, keep: torch.Tensor, hypothesis: Mapping[str, Any]) -> float:
    """Share of a circuit's ``|score|`` that lies on a residual-path hypothesis.

    The hypothesis is a ``find_circuit`` dict: nodes are residual states ``S[l, p]``
    (``layer``, ``position``) and edges join them. A hypothesis edge ``S[l1, p1] ->
    S[l2, p2]`` covers the states ``S[l1..l2, p1]`` and ``S[l1..l2, p2]`` (information
    stays at a position, or moves between the two by attention somewhere in that
    layer range). A circuit edge from a writer of layer ``lw`` to a reader of layer
    ``lr`` at position ``p`` travels ``S[lw+1..lr, p]``; it is covered when every one
    of those states is.

    Returns:
        Covered ``|score|`` / the circuit's ``|score|`` (NaN for an empty circuit).
    """
    g = scores.graph
    nodes = {nd["name"]: (int(nd["layer"]), int(nd["position"])) for nd in hypothesis.get("nodes", [])}
    covered: set[tuple[int, int]] = set()
    for ed in hypothesis.get("edges", []):
        if ed["src"] not in nodes or ed["dst"] not in nodes:
            continue
        (l1, p1), (l2, p2) = nodes[ed["src"]], nodes[ed["dst"]]
        lo, hi = min(l1, l2), max(l1, l2)
        for layer in range(lo, hi + 1):
            covered.add((layer, p1))
            covered.add((layer, p2))
    total, inside = 0.0, 0.0
    for e in torch.nonzero(keep).flatten().tolist():
        s = abs(float(scores.scores[e]))
        total += s
        p, first, last = _edge_span(g, e)
        if all((layer, p) in covered for layer in range(first, last + 1)):
            inside += s
    return inside / total if total > 0 else float("nan")


def describe_edges(d: Discovery, k: int = 15) -> list[str]:
    """The circuit's ``k`` strongest edges as readable lines (name, score, exact effect)."""
    return [f"{e.name:<22s} score {e.score:8.3f}" + ("" if e.exact is None else f"  exact {e.exact:8.3f}")
            for e in d.edge_records(k, circuit_only=True)]


@dataclass(frozen=True)
class Edge:
    """One edge of a discovered graph, named one way everywhere.

    Attributes:
        index: its index in the graph (``ComponentGraph.edge_index`` row).
        name: ``writer->reader@position`` (:meth:`ComponentGraph.edge_name`), e.g. ``m0->a2.h1<v>@3``.
        source, target: the writer's and the reader's node names (``m0``, ``a2.h1<v>``).
        position: the input position both sit at (None in a graph summed over positions).
        score: the method's attribution score.
        exact: the exact effect of patching this edge alone (None where not measured).
        in_circuit: whether the selected circuit holds it.
        share: its share of the circuit's total ``|score|`` (0 outside the circuit).
    """

    index: int
    name: str
    source: str
    target: str
    position: int | None
    score: float
    exact: float | None
    in_circuit: bool
    share: float
