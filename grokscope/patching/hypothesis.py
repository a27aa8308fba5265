"""A task's circuit hypothesis checked on a checkpoint, read off the lens and tracing.

The hypothesis is data the task supplies (:class:`grokscope.tasks.CircuitHypothesis`:
stages ``content@role`` placed at the first layer whose lens MRR passes the threshold,
their source and output edges); this module evaluates it and never tests a task's name.
For the paper's tasks:

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
    >>> from grokscope.runs.run import Run                                # doctest: +SKIP
    >>> run = Run.open("runs/composition-tiny")                     # doctest: +SKIP
    >>> c = find_circuit(run.load_model(), run.dataset(), n=300)    # doctest: +SKIP
    >>> c.layers["bridge@r1"], [e.to_dict() for e in c.edges]        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from grokscope.lens.logit import LensResult, lens_split
from grokscope.patching.tracing import TraceResult, make_counterfactuals, trace
from grokscope.series.engine import DEFAULT_THRESHOLD  # noqa: F401  (re-exported)
from grokscope.tasks.base import Task, get_task, task_of

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

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
class LocatedCircuit:
    """A checkpoint's circuit: nodes, edges, resolve layers and the evidence.

    Attributes:
        task: the task's name.
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
    kind: str = "staged"
    parallel_stages: list[tuple[str, str]] = field(default_factory=list)
    """(lens target, role) of the stages a parallel hypothesis resolves side by side."""

    def node(self, name: str) -> CircuitNode:
        for nd in self.nodes:
            if nd.name == name:
                return nd
        raise KeyError(f"no node {name!r}; nodes: {[nd.name for nd in self.nodes]}")

    @property
    def parallel(self) -> bool | None:
        """A parallel hypothesis (comparison): its side-by-side stages (v1 at e1, v2 at e2)
        resolved by the lens within one layer of each other, or (when the lens decodes
        none) every one's effect held at its own position past layer 0 by tracing. None
        for a staged hypothesis or when there is no evidence."""
        if self.kind != "parallel" or not self.parallel_stages:
            return None
        found = [self.layers.get(t) for t, _ in self.parallel_stages]
        if all(x is not None for x in found):
            return max(found) - min(found) <= 1  # type: ignore[type-var,operator]
        held = [self.layers.get(f"{r} held@{r}") for _, r in self.parallel_stages]
        if all(x is not None for x in held):
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


def _held_layer(strength: dict[str, torch.Tensor], pert: str, pos: int, col: dict[int, int], L: int, threshold: float) -> int | None:
    """Up to which layer an input's effect still sits at its own position: every
    ``S[0..l, pos]`` flips >= ``threshold`` of the predictions when patched from the
    counterfactual run (None unless past layer 0)."""
    if pert not in strength or pos not in col:
        return None
    s_pos, held = strength[pert][:, col[pos]], None
    for lay in range(L):
        if float(s_pos[lay]) < threshold:
            break
        held = lay
    return held if held is not None and held >= 1 else None


def build_circuit(
    task: str | Task, lens: LensResult, tracing: TraceResult, threshold: float = DEFAULT_THRESHOLD, step: int | None = None
) -> LocatedCircuit:
    """Evaluate the task's circuit hypothesis on a lens and a resid tracing result (pure data).

    A task without a hypothesis (``hypothesis = None``) gets an empty circuit that keeps
    the lens and tracing evidence and says so in ``notes``.

    Args:
        task: the registered task (or its name) whose ``hypothesis`` is evaluated.
        lens: from :func:`grokscope.lens.logit.lens_split` on an inferred split.
        tracing: from :func:`grokscope.patching.tracing.trace` with ``site="resid"``
            over every layer and position.
        threshold: lens MRR a state must reach.
        step: checkpoint step to record.

    Returns:
        A :class:`LocatedCircuit`.

    Example:
        >>> c = build_circuit(task_of(ds), lens, tracing)        # doctest: +SKIP
    """
    spec = get_task(task) if isinstance(task, str) else task
    hyp = spec.hypothesis
    if tracing.site != "resid":
        raise ValueError(f"build_circuit needs resid tracing, got site {tracing.site!r}")
    n_states = len(tracing.hook_names)
    if tracing.layers != list(range(n_states)) or n_states != len(lens.hook_names):
        raise ValueError("build_circuit needs resid tracing over every layer 0..L (trace(..., layers=None))")
    roles = dict(tracing.counterfactuals[tracing.perturbations[0]].roles)
    col = {p: i for i, p in enumerate(tracing.positions)}
    strength = {p: tracing.strength[k] for k, p in enumerate(tracing.perturbations)}
    L = n_states - 1
    hooks = tracing.hook_names
    if hyp is None:  # nothing to locate: the evidence only (edge-level discovery finds circuits of any task)
        return LocatedCircuit(
            task=spec.name, n_layers=L, threshold=float(threshold), layers={}, nodes=[], edges=[],
            mrr={name: lens.mrr(name).tolist() for name in lens.names},
            strength={p: v.tolist() for p, v in strength.items()}, hook_names=list(hooks), roles=roles, step=step,
            notes=[f"the {spec.name} task declares no circuit hypothesis: nothing located (see the discovered circuit)"],
        )

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
    if not hyp.lens_names <= set(mrr):
        raise ValueError(f"lens result lacks {sorted(hyp.lens_names - set(mrr))}; use lens_targets on an inferred split")
    for name, parts in hyp.derived.items():
        mrr[name] = sum(mrr[x] for x in parts) / len(parts)
    layers: dict[str, int | None] = {}
    for st in hyp.stages:
        if st.search_after is None:
            layers[st.target] = first_layer(mrr[st.target], threshold)
    layers[hyp.output_target] = first_layer(mrr[hyp.output_target], threshold)
    for st in hyp.stages:
        if st.search_after is not None:
            start = layers.get(st.search_after)
            layers[st.target] = first_layer(mrr[st.target], threshold, start=start) if start is not None else None
    for st in hyp.stages:
        if st.held_fallback:
            layers[f"{st.role} held@{st.role}"] = _held_layer(strength, st.perturbation, roles[st.role], col, L, threshold)

    inputs = {r: node(0, r, r) for r in hyp.inputs}
    out = node(L, hyp.output_role, hyp.output_content, float(mrr[hyp.output_target][L]))
    nodes, edges, notes = [*inputs.values()], [], []
    if hyp.kind == "staged":
        place = [layers.get(st.at or st.target) for st in hyp.stages]
        if all(lay is not None and 0 < lay < L for lay in place):
            mids = [node(lay, st.role, st.content, float(mrr[st.target][lay])) for st, lay in zip(hyp.stages, place)]  # type: ignore[arg-type]
            by_target = {st.target: m for st, m in zip(hyp.stages, mids)}
            nodes += [*mids, out]
            for st, mid in zip(hyp.stages, mids):
                edges += [edge(inputs[r], mid, p) for r, p in st.sources]
            for st, mid in zip(hyp.stages, mids):
                feeds = next((x for x in hyp.stages if x.search_after == st.target and x.at is None), None)
                edges.append(edge(mid, by_target[feeds.target] if feeds is not None else out, st.perturbation))
        else:
            first = hyp.stages[0]
            notes.append(f"{first.content} never resolved at {first.role} below the last layer: inputs linked straight to the output")
            nodes.append(out)
            edges += [edge(inputs[r], out, r) for r in hyp.inputs]
    else:
        for st in hyp.stages:
            lay, held = layers[st.target], layers.get(f"{st.role} held@{st.role}")
            if lay is not None and 0 < lay < L:
                mid = node(lay, st.role, st.content, float(mrr[st.target][lay]))
            elif held is not None:
                mid = node(held, st.role, f"{st.content} (held, by tracing)", float(mrr[st.target][held]))
                notes.append(
                    f"{st.target} not decodable by the lens (MRR {float(mrr[st.target].max()):.2f} at best), but "
                    f"tracing holds {st.role}'s effect at its own position up to S[{held},{st.role}]"
                )
            else:
                notes.append(f"{st.target} never resolved below the last layer: {st.role} linked straight to the output")
                edges += [edge(inputs[r], out, p) for r, p in st.sources]
                continue
            nodes.append(mid)
            edges += [*(edge(inputs[r], mid, p) for r, p in st.sources), edge(mid, out, st.perturbation)]
        nodes.append(out)
    return LocatedCircuit(
        task=spec.name,
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
        kind=hyp.kind,
        parallel_stages=[(st.target, st.role) for st in hyp.stages if st.held_fallback],
    )


def find_circuit(
    model: TransformerBridge,
    dataset: TaskDataset,
    split: str | None = None,
    *,
    n: int | None = 300,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    within_class: bool = False,
    step: int | None = None,
) -> LocatedCircuit:
    """Run the lens and resid causal tracing on ``n`` examples and build the circuit.

    The lens and the counterfactuals sample the same rows of the split (both draw
    ``numpy.random.default_rng(seed).choice(len(split), n, replace=False)`` first).

    Args:
        model: the checkpoint's model.
        dataset: its dataset (KB for the counterfactuals).
        split: an inferred split (None: the task's ``default_split``: ``train_inferred``,
            or ``analysis`` for the text task, whose rows of one template line up).
        n: examples (the paper: 300).
        seed: sampling seed.
        threshold: lens MRR threshold.
        within_class: lens ranks within the target's token class.
        step: checkpoint step to record.

    Example:
        >>> c = find_circuit(model, ds, n=300)                  # doctest: +SKIP
    """
    spec = task_of(dataset)
    split = split or spec.default_split
    lens = lens_split(model, dataset.splits[split], dataset.vocab, n=n, seed=seed, within_class=within_class, task=spec)
    cfs = make_counterfactuals(dataset, split, n=n, seed=seed)
    tracing = trace(model, cfs, site="resid")
    return build_circuit(spec, lens, tracing, threshold=threshold, step=step)


Circuit = LocatedCircuit
"""Deprecated alias (grokscope 0.1): the located hypothesis circuit is :class:`LocatedCircuit`;
the discovered edge set is :class:`grokscope.discovery.faithfulness.EdgeCircuit`."""
