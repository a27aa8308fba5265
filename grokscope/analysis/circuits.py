"""The circuit of a checkpoint as data, read off the logit lens and causal tracing.

Composition (the paper's "staged" circuit): the layer ``b*`` where the bridge entity
is resolved at ``r1`` is the first ``l`` with MRR(bridge at ``S[l, r1]``) >=
``threshold``; the upper-layer retrieval is the first layer where the answer ``t``
passes the threshold at the last position (``r2``). Nodes are the input states
``S[0, h|r1|r2]``, the bridge state ``S[b*, r1]``, the carried relation ``S[b*, r2]``
and the output ``S[L, r2]``; each node carries its causal strength under every
perturbation (the resid tracing at that state). Each edge is weighted by the causal
strength of its intermediate state under the perturbation that changes what the edge
carries: ``S[0, h] -> S[b*, r1]`` and ``S[b*, r1] -> S[L, r2]`` both by patching
``S[b*, r1]`` with the ``h'`` run (the paper's link that grows during grokking); an
input linked straight to the output, by the input state itself.

Comparison (the "parallel" circuit): ``v1`` resolved at ``S[l1, e1]`` and ``v2`` at
``S[l2, e2]``, the label space at ``S[la, attr]`` (mean MRR of the three labels),
then the answer at ``S[L, e2]``.

A lens target that never passes the threshold leaves its node out; the inputs are then
linked straight to the output (a memorising circuit, as before grokking).

Example:
    >>> from grokscope.run import Run                                # doctest: +SKIP
    >>> run = Run.open("runs/composition-tiny")                     # doctest: +SKIP
    >>> c = find_circuit(run.load_model(), run.dataset(), n=300)    # doctest: +SKIP
    >>> c.layers["bridge@r1"], [e.to_dict() for e in c.edges]        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from grokscope.analysis.lens import LensResult, lens_split
from grokscope.analysis.tracing import TraceResult, make_counterfactuals, task_family, trace

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

DEFAULT_THRESHOLD = 0.5
"""Lens MRR a state must reach to count as holding its target."""


@dataclass(frozen=True)
class CircuitNode:
    """One residual state of the circuit.

    Attributes:
        name: ``"S[l,role]"``.
        hook_name: the state's hook (``blocks.{l}.hook_resid_pre`` / last ``hook_resid_post``).
        layer: ``l`` (0..L).
        position: input position.
        role: the role at that position (``r1``, ``e2`` ...).
        content: what the state holds (``h``, ``bridge``, ``r2``, ``t``, ``v1``, ``labels``...).
        strengths: perturbation -> causal strength of this state (resid tracing).
        mrr: lens MRR of ``content`` at this state (None for input tokens).
    """

    name: str
    hook_name: str
    layer: int
    position: int
    role: str
    content: str
    strengths: dict[str, float]
    mrr: float | None = None

    @property
    def strength(self) -> float:
        """The largest causal strength over perturbations."""
        return max(self.strengths.values()) if self.strengths else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "strength": self.strength}


@dataclass(frozen=True)
class CircuitEdge:
    """Information flow ``src -> dst``, weighted by a causal strength.

    Attributes:
        src, dst: node names.
        weight: causal strength under ``perturbation`` of the edge's intermediate state
            (``dst`` for an edge out of an input token, else ``src``).
        perturbation: the perturbation that changes what the edge carries.
    """

    src: str
    dst: str
    weight: float
    perturbation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Circuit:
    """A checkpoint's circuit: nodes, edges, resolve layers and the evidence.

    Attributes:
        task: ``composition`` or ``comparison``.
        n_layers: ``L``.
        threshold: the lens MRR threshold used.
        layers: lens target -> first layer passing the threshold (None: never).
        nodes, edges: the circuit.
        mrr: lens target -> MRR per layer (the evidence for ``layers``).
        strength: perturbation -> ``[layer, pos]`` resid causal strength.
        hook_names: hook of each layer ``l``.
        roles: role -> input position.
        step: checkpoint step, when known.
    """

    task: str
    n_layers: int
    threshold: float
    layers: dict[str, int | None]
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    mrr: dict[str, list[float]]
    strength: dict[str, list[list[float]]]
    hook_names: list[str]
    roles: dict[str, int]
    step: int | None = None
    notes: list[str] = field(default_factory=list)

    def node(self, name: str) -> CircuitNode:
        for nd in self.nodes:
            if nd.name == name:
                return nd
        raise KeyError(f"no node {name!r}; nodes: {[nd.name for nd in self.nodes]}")

    @property
    def parallel(self) -> bool | None:
        """Comparison: v1 and v2 resolved by the lens within one layer of each other, or
        (when the lens decodes neither) both entities' effects held at their own positions
        past layer 0 by tracing. None for composition or when there is no evidence."""
        if self.task != "comparison":
            return None
        l1, l2 = self.layers.get("v1@e1"), self.layers.get("v2@e2")
        if l1 is not None and l2 is not None:
            return abs(l1 - l2) <= 1
        h1, h2 = self.layers.get("e1 held@e1"), self.layers.get("e2 held@e2")
        if h1 is not None and h2 is not None:
            return True
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "step": self.step,
            "n_layers": self.n_layers,
            "threshold": self.threshold,
            "layers": dict(self.layers),
            "parallel": self.parallel,
            "nodes": [nd.to_dict() for nd in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "mrr": self.mrr,
            "strength": self.strength,
            "hook_names": list(self.hook_names),
            "roles": dict(self.roles),
            "notes": list(self.notes),
        }


def first_layer(mrr: torch.Tensor, threshold: float, start: int = 0) -> int | None:
    """First layer index ``>= start`` whose MRR reaches ``threshold`` (None: none).

    Example:
        >>> first_layer(torch.tensor([0.1, 0.4, 0.7, 0.9]), 0.5)
        2
    """
    hits = torch.nonzero(mrr[start:] >= threshold).flatten()
    return int(hits[0]) + start if len(hits) else None


def build_circuit(
    task: str, lens: LensResult, tracing: TraceResult, threshold: float = DEFAULT_THRESHOLD, step: int | None = None
) -> Circuit:
    """Assemble the circuit from a lens result and a resid tracing result (pure data).

    Args:
        task: ``composition`` or ``comparison`` (``complex`` counts as comparison).
        lens: from :func:`grokscope.analysis.lens.lens_split` on an inferred split.
        tracing: from :func:`grokscope.analysis.tracing.trace` with ``site="resid"``
            over every layer and position.
        threshold: lens MRR a state must reach.
        step: checkpoint step to record.

    Returns:
        A :class:`Circuit`.

    Example:
        >>> c = build_circuit("composition", lens, tracing)     # doctest: +SKIP
    """
    if tracing.site != "resid":
        raise ValueError(f"build_circuit needs resid tracing, got site {tracing.site!r}")
    n_states = len(tracing.hook_names)
    if tracing.layers != list(range(n_states)) or n_states != len(lens.hook_names):
        raise ValueError("build_circuit needs resid tracing over every layer 0..L (trace(..., layers=None))")
    family = task_family(task)
    roles = dict(tracing.counterfactuals[tracing.perturbations[0]].roles)
    col = {p: i for i, p in enumerate(tracing.positions)}
    strength = {p: tracing.strength[k] for k, p in enumerate(tracing.perturbations)}
    L = n_states - 1
    hooks = tracing.hook_names

    def node(layer: int, role: str, content: str, mrr: float | None = None) -> CircuitNode:
        pos = roles[role]
        return CircuitNode(
            name=f"S[{layer},{role}]",
            hook_name=hooks[layer],
            layer=layer,
            position=pos,
            role=role,
            content=content,
            strengths={p: float(s[layer, col[pos]]) for p, s in strength.items() if pos in col},
            mrr=mrr,
        )

    def edge(src: CircuitNode, dst: CircuitNode, pert: str) -> CircuitEdge:
        # weighted by the state between input and output: the destination for an edge
        # out of an input token, else the source (the output itself is always strong)
        via = dst if src.layer == 0 and dst.layer < L else src
        return CircuitEdge(src.name, dst.name, via.strengths.get(pert, float("nan")), pert)

    mrr = {name: lens.mrr(name) for name in lens.names}
    notes: list[str] = []
    if family == "composition":
        need = {"bridge@r1", "r2@r2", "t@last"}
        if not need <= set(mrr):
            raise ValueError(f"lens result lacks {sorted(need - set(mrr))}; use lens_targets on an inferred split")
        layers = {
            "bridge@r1": first_layer(mrr["bridge@r1"], threshold),
            "t@last": first_layer(mrr["t@last"], threshold),
        }
        b = layers["bridge@r1"]
        layers["r2@r2"] = first_layer(mrr["r2@r2"], threshold, start=b) if b is not None else None
        inputs = {r: node(0, r, r) for r in ("h", "r1", "r2")}
        out = node(L, "r2", "t", float(mrr["t@last"][L]))
        nodes, edges = [*inputs.values()], []
        if b is not None and 0 < b < L:
            bridge = node(b, "r1", "bridge", float(mrr["bridge@r1"][b]))
            carried = node(b, "r2", "r2", float(mrr["r2@r2"][b]))
            nodes += [bridge, carried, out]
            edges += [
                edge(inputs["h"], bridge, "h"), edge(inputs["r1"], bridge, "r1"),
                edge(inputs["r2"], carried, "r2"),
                edge(bridge, out, "h"), edge(carried, out, "r2"),
            ]
        else:
            notes.append("bridge never resolved at r1 below the last layer: inputs linked straight to the output")
            nodes.append(out)
            edges += [edge(inputs[r], out, r) for r in ("h", "r1", "r2")]
    else:
        need = {"v1@e1", "v2@e2", "label0@attr", "label1@attr", "label2@attr", "label@last"}
        if not need <= set(mrr):
            raise ValueError(f"lens result lacks {sorted(need - set(mrr))}; use lens_targets on an inferred split")
        label_space = (mrr["label0@attr"] + mrr["label1@attr"] + mrr["label2@attr"]) / 3
        mrr["labels@attr"] = label_space
        layers = {
            "v1@e1": first_layer(mrr["v1@e1"], threshold),
            "v2@e2": first_layer(mrr["v2@e2"], threshold),
            "labels@attr": first_layer(label_space, threshold),
            "label@last": first_layer(mrr["label@last"], threshold),
        }
        inputs = {r: node(0, r, r) for r in ("attr", "e1", "e2")}
        out = node(L, "e2", "label", float(mrr["label@last"][L]))
        nodes, edges = [*inputs.values()], []
        # Tracing view of the same question: up to which layer does an entity's effect
        # still sit at its own position (every S[0..l, e] flips >= threshold of the
        # predictions when patched from the e' run)? Values the lens cannot decode may
        # still be held there; both entities held in their own positions is the
        # paper's parallel circuit.
        for role in ("e1", "e2"):
            held = None
            if role in strength and roles[role] in col:
                s_pos = strength[role][:, col[roles[role]]]
                for lay in range(L):
                    if float(s_pos[lay]) < threshold:
                        break
                    held = lay
            layers[f"{role} held@{role}"] = held if held is not None and held >= 1 else None
        for target, role, content, pert in (
            ("v1@e1", "e1", "v1", "e1"), ("v2@e2", "e2", "v2", "e2"), ("labels@attr", "attr", "labels", "attr")
        ):
            lay = layers[target]
            held = layers.get(f"{role} held@{role}")
            if lay is not None and 0 < lay < L:
                mid = node(lay, role, content, float(mrr[target][lay]))
                nodes.append(mid)
                edges += [edge(inputs[role], mid, pert), edge(mid, out, pert)]
            elif held is not None:
                mid = node(held, role, f"{content} (held, by tracing)", float(mrr[target][held]))
                nodes.append(mid)
                edges += [edge(inputs[role], mid, pert), edge(mid, out, pert)]
                notes.append(
                    f"{target} not decodable by the lens (MRR {float(mrr[target].max()):.2f} at best), but "
                    f"tracing holds {role}'s effect at its own position up to S[{held},{role}]"
                )
            else:
                notes.append(f"{target} never resolved below the last layer: {role} linked straight to the output")
                edges.append(edge(inputs[role], out, pert))
        nodes.append(out)
    return Circuit(
        task=family,
        n_layers=L,
        threshold=float(threshold),
        layers=layers,
        nodes=nodes,
        edges=edges,
        mrr={k: v.tolist() for k, v in mrr.items()},
        strength={p: s.tolist() for p, s in strength.items()},
        hook_names=list(hooks),
        roles=roles,
        step=step,
        notes=notes,
    )


def find_circuit(
    model: TransformerBridge,
    dataset: TaskDataset,
    split: str = "train_inferred",
    *,
    n: int | None = 300,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    within_class: bool = False,
    step: int | None = None,
) -> Circuit:
    """Run the lens and resid causal tracing on ``n`` examples and build the circuit.

    The lens and the counterfactuals sample the same rows of the split (both draw
    ``numpy.random.default_rng(seed).choice(len(split), n, replace=False)`` first).

    Args:
        model: the checkpoint's model.
        dataset: its dataset (KB for the counterfactuals).
        split: an inferred split.
        n: examples (the paper: 300).
        seed: sampling seed.
        threshold: lens MRR threshold.
        within_class: lens ranks within the target's token class.
        step: checkpoint step to record.

    Example:
        >>> c = find_circuit(model, ds, n=300)                  # doctest: +SKIP
    """
    lens = lens_split(model, dataset.splits[split], dataset.vocab, n=n, seed=seed, within_class=within_class)
    cfs = make_counterfactuals(dataset, split, n=n, seed=seed)
    tracing = trace(model, cfs, site="resid")
    return build_circuit(dataset.task, lens, tracing, threshold=threshold, step=step)
