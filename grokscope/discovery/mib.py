"""The discovered graph in the field's shared format: EAP-IG / MIB graph JSON.

The EAP-IG library (``hannamw/EAP-IG``, ``eap.graph.Graph.to_json`` / ``from_json``) and the
MIB circuit-localization track (which loads a submission with ``Graph.from_json``) hold a
circuit as one JSON object::

    {"cfg":   {"n_layers": 4, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 64},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "m0": {...},
               ..., "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": false}, ...,
               "a0.h0->m0": {...}, "m3->logits": {"score": 21.7, "in_graph": true}}}

Nodes: ``input`` (the embeddings), ``a{layer}.h{head}``, ``m{layer}``, ``logits``; an edge
into a head names the head's query, key or value input (``m0->a2.h1<v>``). These are the
node names grokscope's graph already uses (:attr:`GraphNode.name`); only the position is
dropped: MIB's graph has one node per head / MLP, summed over positions. So

* **export** (:func:`to_mib`): an edge's score is the sum of its scores over positions (what
  EAP-IG computes: it sums ``activation difference . gradient`` over positions), its
  ``in_graph`` is true when the circuit holds it at any position. Nodes are in the graph
  when they have an in-graph edge out and (the input excepted) one in, as EAP-IG's
  ``prune`` leaves them; ``logits`` always. The sign convention is EAP-IG's: positive
  means the edge carries the clean-vs-corrupt difference in the metric's direction.
  MIB's directory layout for a submission is :func:`mib_path`.
* **import** (:func:`from_mib` / :func:`read_mib`, then :meth:`MibGraph.keep`): an MIB
  edge in the graph keeps that writer -> reader edge at every position, which a grokscope
  faithfulness measurement then patches (:func:`measure_mib`: every other edge patched,
  the recovered fraction of the metric).

Example:
    >>> d = discover(model, corruption)                                     # doctest: +SKIP
    >>> write_mib(d, "circuits/eap-ig-exact_patching_edge/mytask_mymodel/importances.json")  # doctest: +SKIP
    >>> measure_mib(model, corruption, read_mib("their_importances.json")).recovered  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from grokscope.discovery.faithfulness import EdgeCircuit, recovered
from grokscope.discovery.graph import ComponentGraph
from grokscope.discovery.scores import Activations, Corruption, EdgeScores, prepare
from grokscope.errors import GrokscopeError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

MIB_FILE = "importances.json"
"""The file name MIB's attribution scripts write and its evaluation reads."""


class MibFormatError(GrokscopeError, ValueError):
    """A graph JSON that is not in the EAP-IG / MIB format, or does not fit the model's graph."""


def mib_node_names(n_layers: int, n_heads: int) -> list[str]:
    """Node names in EAP-IG's order: ``input``, then per layer its heads and its MLP, then ``logits``.

    Example:
        >>> mib_node_names(1, 2)
        ['input', 'a0.h0', 'a0.h1', 'm0', 'logits']
    """
    names = ["input"]
    for layer in range(n_layers):
        names += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
    return names + ["logits"]


def mib_edge_names(n_layers: int, n_heads: int) -> list[str]:
    """Every edge name of the position-free graph, in the order ``eap.graph.Graph.from_model`` adds them.

    Example:
        >>> mib_edge_names(1, 1)
        ['input->a0.h0<q>', 'input->a0.h0<k>', 'input->a0.h0<v>', 'input->m0', 'a0.h0->m0', 'input->logits', 'a0.h0->logits', 'm0->logits']
    """
    out: list[str] = []
    stream = ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for src in stream:
            for head in heads:
                out += [f"{src}->{head}<{x}>" for x in "qkv"]
        stream = stream + heads
        out += [f"{src}->m{layer}" for src in stream]
        stream = stream + [f"m{layer}"]
    return out + [f"{src}->logits" for src in stream]


def _edge_keys(graph: ComponentGraph) -> list[str]:
    """The position-free name of each of the graph's edges (``a0.h1->m2``, ``m0->a2.h1<v>``)."""
    keys = []
    for e in range(graph.n_edges):
        w, r = graph.edge_nodes(e)
        keys.append(f"{w.name}->{r.name}")
    return keys


@dataclass
class MibGraph:
    """A position-free graph in EAP-IG / MIB form.

    Attributes:
        cfg: ``n_layers``, ``n_heads``, ``parallel_attn_mlp``, ``d_model``.
        scores: edge name -> score.
        in_graph: edge name -> whether the circuit holds it.
        nodes: node name -> whether the circuit holds it.
    """

    cfg: dict[str, Any]
    scores: dict[str, float]
    in_graph: dict[str, bool]
    nodes: dict[str, bool] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MibGraph(n_layers={self.cfg.get('n_layers')}, n_heads={self.cfg.get('n_heads')}, "
                f"edges={len(self.scores)}, in_graph={sum(self.in_graph.values())})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``eap.graph.Graph.from_json`` reads."""
        return {"cfg": dict(self.cfg),
                "nodes": {n: {"in_graph": bool(v)} for n, v in self.nodes.items()},
                "edges": {n: {"score": float(self.scores[n]), "in_graph": bool(self.in_graph[n])} for n in self.scores}}

    def _check(self, graph: ComponentGraph) -> None:
        L, H = self.cfg.get("n_layers"), self.cfg.get("n_heads")
        if (L, H) != (graph.n_layers, graph.n_heads):
            raise MibFormatError(f"the MIB graph has n_layers={L}, n_heads={H}; the model's graph "
                                 f"{graph.n_layers}, {graph.n_heads}")
        if self.cfg.get("parallel_attn_mlp"):
            raise MibFormatError("the MIB graph is of a parallel attention/MLP model; this graph is sequential")

    def keep(self, graph: ComponentGraph) -> Bool[torch.Tensor, " edge"]:
        """``[edge]`` the circuit on grokscope's graph: every position of each in-graph edge."""
        self._check(graph)
        return torch.tensor([bool(self.in_graph.get(k, False)) for k in _edge_keys(graph)], dtype=torch.bool)

    def edge_scores(self, graph: ComponentGraph, method: str = "mib") -> EdgeScores:
        """Scores on grokscope's graph: each edge's MIB score at every position (for ranking).

        The MIB score is one number per writer -> reader pair; it is not split over
        positions, so a ranking by these scores keeps or drops a pair at all positions
        (and :func:`to_mib` of these scores sums them over positions again: on an
        ``n_pos``-position graph the exported score is ``n_pos`` times the imported one,
        once for the logits, which are read at one position).
        """
        self._check(graph)
        s = torch.tensor([float(self.scores.get(k, 0.0)) for k in _edge_keys(graph)])
        return EdgeScores(graph, s, method)


def _summed(graph: ComponentGraph, values: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in zip(_edge_keys(graph), values.double().tolist()):
        out[k] = out.get(k, 0.0) + v
    return out


def to_mib(
    source: Any,
    keep: Bool[torch.Tensor, " edge"] | None = None,
    *,
    d_model: int | None = None,
) -> MibGraph:
    """A discovery (or edge scores and a circuit) as an EAP-IG / MIB graph.

    Args:
        source: a :class:`grokscope.discovery.circuit.Discovery` (its scores and circuit),
            or :class:`EdgeScores`.
        keep: ``[edge]`` the circuit (default: the discovery's; none for bare scores).
        d_model: recorded in ``cfg`` (EAP-IG's graph stores it; default: 0 when unknown).

    Returns:
        :class:`MibGraph` with every edge of the position-free graph.
    """
    scores = source if isinstance(source, EdgeScores) else getattr(source, "scores", None)
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"to_mib takes a Discovery or EdgeScores, got {type(source).__name__}")
    graph = scores.graph
    if keep is None:
        circuit = getattr(source, "circuit", None)
        keep = circuit.keep if circuit is not None else torch.zeros(graph.n_edges, dtype=torch.bool)
    if keep.shape != (graph.n_edges,):
        raise ValueError(f"keep must have shape [{graph.n_edges}], got {tuple(keep.shape)}")
    L, H = graph.n_layers, graph.n_heads
    summed = _summed(graph, scores.scores.float())
    held = _summed(graph, keep.float())
    names = mib_edge_names(L, H)
    missing = set(summed) - set(names)
    assert not missing, f"edges outside EAP-IG's graph: {sorted(missing)[:3]}"
    edge_scores = {n: summed.get(n, 0.0) for n in names}
    in_graph = {n: held.get(n, 0.0) > 0 for n in names}
    out_of = {n: False for n in mib_node_names(L, H)}
    into = dict(out_of)
    for n, v in in_graph.items():
        if v:
            src, dst = n.split("->")
            out_of[src] = True
            into[dst.split("<")[0]] = True
    nodes = {n: out_of[n] and (n == "input" or into[n]) for n in out_of}
    nodes["logits"] = True
    cfg = {"n_layers": L, "n_heads": H, "parallel_attn_mlp": False,
           "d_model": int(d_model) if d_model is not None else 0}
    return MibGraph(cfg, edge_scores, in_graph, nodes)


def write_mib(source: Any, path: str | Path, keep: Bool[torch.Tensor, " edge"] | None = None, *,
              d_model: int | None = None) -> Path:
    """Write :func:`to_mib` as JSON (parent folders created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_mib(source, keep, d_model=d_model).to_dict()))
    return p


def from_mib(doc: dict[str, Any]) -> MibGraph:
    """An EAP-IG / MIB graph JSON object (``Graph.to_json``'s) as a :class:`MibGraph`.

    Raises:
        MibFormatError: keys missing, or an edge or node name outside EAP-IG's graph of
            that shape.
    """
    missing = [k for k in ("cfg", "nodes", "edges") if k not in doc]
    if missing:
        raise MibFormatError(f"not an EAP-IG / MIB graph: missing key(s) {', '.join(missing)}; "
                             "expected 'cfg', 'nodes', 'edges'")
    cfg = dict(doc["cfg"])
    try:
        L, H = int(cfg["n_layers"]), int(cfg["n_heads"])
    except (KeyError, TypeError, ValueError):
        raise MibFormatError("the graph's cfg needs integer n_layers and n_heads") from None
    allowed = set(mib_edge_names(L, H))
    scores: dict[str, float] = {}
    in_graph: dict[str, bool] = {}
    for name, info in doc["edges"].items():
        if name not in allowed:
            raise MibFormatError(f"edge {name!r} is not in EAP-IG's graph of {L} layers x {H} heads "
                                 "(names look like 'm0->a2.h1<v>', 'a0.h1->logits')")
        if not isinstance(info, dict) or "in_graph" not in info:
            raise MibFormatError(f"edge {name!r} needs an object with 'in_graph' (and 'score')")
        s = info.get("score")
        scores[name] = float("nan") if s is None else float(s)
        in_graph[name] = bool(info["in_graph"])
    node_names = set(mib_node_names(L, H))
    nodes = {}
    for name, info in doc["nodes"].items():
        if name not in node_names:
            raise MibFormatError(f"node {name!r} is not in EAP-IG's graph of {L} layers x {H} heads")
        nodes[name] = bool(info.get("in_graph", False)) if isinstance(info, dict) else bool(info)
    return MibGraph(cfg, scores, in_graph, nodes)


def read_mib(path: str | Path) -> MibGraph:
    """:func:`from_mib` of a JSON file (``importances.json``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise MibFormatError(f"{path}: not JSON ({e})") from None
    return from_mib(doc)


def mib_path(root: str | Path, method: str, task: str, model: str, *, ablation: str = "patching",
             level: str = "edge") -> Path:
    """Where MIB's circuit-track scripts keep a circuit:
    ``root/{method}_{ablation}_{level}/{task with '-' for '_'}_{model}/importances.json``.

    Example:
        >>> mib_path("circuits", "eap-ig-exact", "my_task", "gpt2").as_posix()
        'circuits/eap-ig-exact_patching_edge/my-task_gpt2/importances.json'
    """
    return Path(root) / f"{method}_{ablation}_{level}" / f"{task.replace('_', '-')}_{model}" / MIB_FILE


def mib_scores(graph: ComponentGraph, scores: Float[torch.Tensor, " edge"]) -> dict[str, float]:
    """Per-position scores summed to MIB's position-free edges (edge name -> score)."""
    return _summed(graph, scores)


def measure_mib(
    model: TransformerBridge, corruption: Corruption, mib: MibGraph, *, acts: Activations | None = None
) -> EdgeCircuit:
    """An imported circuit measured here: every edge outside it patched, the recovered fraction.

    Args:
        model: the model the circuit was found on (eval mode).
        corruption: the clean inputs and what the other edges are patched with.
        mib: the circuit (:func:`read_mib`).
        acts: :func:`grokscope.discovery.scores.prepare` output to reuse.

    Returns:
        :class:`EdgeCircuit` (``selection="mib"``; its ``budget`` is its size on this graph).
    """
    acts = acts or prepare(model, corruption)
    keep = mib.keep(acts.graph)
    rec, _ = recovered(model, acts, keep)
    return EdgeCircuit(keep, int(keep.sum()), float(rec[0]), None, "mib")
