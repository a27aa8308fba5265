"""Two-hop composition (PAPER.md, Task 1), generated exactly and vectorized.

Each entity has ``out_degree`` distinct relations, each to a uniformly random tail.
``ood_fraction`` of the atomic FACTS are OOD. Every pair of chained facts (h, r1, b),
(b, r2, t) is an inferred candidate (h, r1, r2) -> t with bridge b: both hops ID ->
test ID with probability ``test_fraction``, else a training candidate; both hops OOD ->
test OOD; one hop of each -> dropped. ``round(phi * #ID atomic)`` training candidates
are sampled uniformly. The training set is every atomic fact plus that sample.

Example:
    >>> ds = composition(n_entities=50, n_relations=10, out_degree=5, phi=3.6, seed=1)
    >>> ds.counts["n_train_inferred"] == round(3.6 * ds.counts["n_id_atomic"])
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from grokscope.tasks.base import (
    CircuitHypothesis,
    CounterfactualDraw,
    LensTarget,
    Stage,
    Task,
    check,
    check_fraction,
    check_seed_probe,
    clip_fraction,
    inverse_index,
    pick_per_row,
    register_task,
)
from grokscope.tasks.dataset import (
    ROLES_COMPOSITION_ATOMIC,
    CompositionKB,
    Split,
    TaskDataset,
    concat_splits,
    make_split,
)
from grokscope.tasks.vocab import END, Vocab


def check_chain_kb(cfg: Any) -> None:
    """The checks shared by every task on the composition knowledge base (composition, k-hop)."""
    check(cfg.n_entities >= 2, f"n_entities must be >= 2, got {cfg.n_entities}")
    check(cfg.n_relations >= 1, f"n_relations must be >= 1, got {cfg.n_relations}")
    check(1 <= cfg.out_degree <= cfg.n_relations,
           f"out_degree must be in [1, n_relations={cfg.n_relations}], got {cfg.out_degree}")
    check_fraction("ood_fraction", cfg.ood_fraction)
    check_fraction("test_fraction", cfg.test_fraction, open_low=False)
    check(cfg.phi >= 0 and math.isfinite(cfg.phi), f"phi must be >= 0, got {cfg.phi!r}")
    check_seed_probe(cfg)


@dataclass(frozen=True)
class CompositionConfig:
    """Two-hop composition (PAPER.md, Task 1). Defaults are the paper's values.

    Attributes:
        n_entities: |E|, entities ``<e_i>``.
        n_relations: |R|, relations ``<r_j>``.
        out_degree: distinct relations per head entity (each to a uniform random tail).
        ood_fraction: share of atomic FACTS held out as OOD (still trained as atomic facts).
        phi: inferred/atomic ratio; round(phi * #ID atomic) training inferred facts.
        test_fraction: probability that an ID-ID inferred fact is held out as test ID.
        probe_size: cap on each probe split (the paper: 3,000).
        seed: data seed; same arguments + seed give byte-identical data.
    """

    n_entities: int = 2000
    n_relations: int = 200
    out_degree: int = 20
    ood_fraction: float = 0.05
    phi: float = 7.2
    test_fraction: float = 0.005
    probe_size: int = 3000
    seed: int = 0
    task: Literal["composition"] = "composition"

    def __post_init__(self) -> None:
        check(self.task == "composition", f"task must be 'composition', got {self.task!r}")
        check_chain_kb(self)

    @property
    def n_atomic(self) -> int:
        return self.n_entities * self.out_degree



def composition(
    n_entities: int = 2000,
    n_relations: int = 200,
    out_degree: int = 20,
    ood_fraction: float = 0.05,
    phi: float = 7.2,
    seed: int = 0,
    *,
    test_fraction: float = 0.005,
    probe_size: int = 3000,
) -> TaskDataset:
    """Generate the composition task. Defaults are the paper's values.

    Args:
        n_entities: |E|.
        n_relations: |R|.
        out_degree: relations per entity (distinct; <= n_relations).
        ood_fraction: share of atomic facts that are OOD, in (0, 1).
        phi: training inferred facts per ID atomic fact.
        seed: data seed; the same arguments and seed give byte-identical data.
        test_fraction: chance an ID-ID inferred fact is held out as test ID.
        probe_size: cap on each probe split.

    Returns:
        A :class:`TaskDataset` with a :class:`CompositionKB`.

    Raises:
        ValueError: for invalid sizes or fractions, or a phi above the maximum the
            knowledge base allows (the message gives that maximum).
    """
    cfg = CompositionConfig(
        n_entities=n_entities, n_relations=n_relations, out_degree=out_degree,
        ood_fraction=ood_fraction, phi=phi, test_fraction=test_fraction,
        probe_size=probe_size, seed=seed,
    )
    return generate_composition(cfg)


def atomic_facts(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, CompositionKB]:
    """The composition knowledge base (shared by k-hop): ``out_degree`` distinct relations
    per head, each to a uniform random tail, ``ood_fraction`` of the facts OOD.

    Returns ``rels`` and ``tails`` (E, k), the OOD marks (E, k), and the KB.
    """
    n_e, n_r, k = cfg.n_entities, cfg.n_relations, cfg.out_degree
    rels = np.argsort(rng.random((n_e, n_r)), axis=1, kind="stable")[:, :k]  # (E, k)
    tails = rng.integers(0, n_e, size=(n_e, k))  # (E, k)
    n_atomic = n_e * k
    n_ood = int(round(cfg.ood_fraction * n_atomic))
    if n_ood < 1 or n_ood >= n_atomic:
        raise ValueError(
            f"ood_fraction={cfg.ood_fraction} of {n_atomic} atomic facts gives {n_ood} OOD facts; "
            "need at least 1 OOD and 1 ID fact"
        )
    ood_k = np.zeros(n_atomic, dtype=bool)
    ood_k[rng.choice(n_atomic, size=n_ood, replace=False)] = True
    ood_k = ood_k.reshape(n_e, k)
    tail = np.full((n_e, n_r), -1, dtype=np.int64)
    ood = np.zeros((n_e, n_r), dtype=bool)
    rows = np.arange(n_e)[:, None]
    tail[rows, rels] = tails
    ood[rows, rels] = ood_k
    return rels, tails, ood_k, CompositionKB(tail=tail, ood=ood)


def generate_composition(cfg: CompositionConfig) -> TaskDataset:
    """Generate the composition task from its frozen config (see :func:`composition`)."""
    return generate_chains(cfg, 2, "composition")


def chain_names(k: int) -> tuple[list[str], list[str]]:
    """Relation roles r1..rk and bridge names (``bridge`` for 2 hops, else b1..b(k-1))."""
    return [f"r{i}" for i in range(1, k + 1)], (["bridge"] if k == 2 else [f"b{i}" for i in range(1, k)])


def generate_chains(cfg: Any, hops: int, task: str) -> TaskDataset:
    """Chains of ``hops`` atomic facts on the composition knowledge base (composition: 2;
    k-hop: k), generated from a frozen config (same config, same bytes).

    Every chain ``(h, k1, ..., k_hops)`` (the slot of each hop) in C order; all hops ID:
    test ID with probability ``test_fraction``, else a training candidate; all OOD: test
    OOD; mixed: dropped; ``round(phi * #ID atomic)`` candidates sampled for training.
    """
    rng = np.random.default_rng([cfg.seed, 0xC0])  # the composition task's stream
    n_e, k = cfg.n_entities, cfg.out_degree
    rels, tails, ood_k, kb = atomic_facts(cfg, rng)
    n_atomic, n_ood = n_e * k, int(ood_k.sum())

    # Every chain (h, k1, ..., k_hops) in C order: h, then the slot of each hop.
    grids = np.meshgrid(np.arange(n_e), *([np.arange(k)] * hops), indexing="ij")
    h = grids[0].reshape(-1)
    slots = [g.reshape(-1) for g in grids[1:]]
    cur = h
    rel_idx, nodes, oods = [], [], []
    for s in slots:
        rel_idx.append(rels[cur, s])
        oods.append(ood_k[cur, s])
        cur = tails[cur, s]
        nodes.append(cur)
    t = cur
    all_id = ~np.logical_or.reduce(oods)
    all_ood = np.logical_and.reduce(oods)
    held_out = all_id & (rng.random(h.shape[0]) < cfg.test_fraction)
    candidates = np.flatnonzero(all_id & ~held_out)
    test_iid = np.flatnonzero(held_out)
    test_ood = np.flatnonzero(all_ood)

    n_id_atomic = n_atomic - n_ood
    n_train_inf = int(round(cfg.phi * n_id_atomic))
    if n_train_inf > len(candidates):
        raise ValueError(
            f"phi={cfg.phi} asks for {n_train_inf} training inferred facts but only {len(candidates)} "
            f"all-ID chains exist; the maximum phi for this knowledge base is {len(candidates) / n_id_atomic:.4f}"
        )
    train_inf = np.sort(rng.choice(candidates, size=n_train_inf, replace=False))

    vocab = Vocab.composition(n_e, cfg.n_relations)
    ent, rel = vocab.entity_ids, vocab.relation_ids
    rel_roles, bridges = chain_names(hops)
    roles = {"h": 0, **{r: i + 1 for i, r in enumerate(rel_roles)}}

    def inferred(name: str, idx: np.ndarray) -> Split:
        meta = {"h": ent[h[idx]], **{r: rel[ri[idx]] for r, ri in zip(rel_roles, rel_idx)},
                **{b: ent[nd[idx]] for b, nd in zip(bridges, nodes)}, "t": ent[t[idx]]}
        inputs = np.stack([ent[h[idx]], *(rel[ri[idx]] for ri in rel_idx)], axis=1)
        return make_split(name, inputs, ent[t[idx]], vocab, atomic=False, meta=meta, roles=roles)

    ah, ar, at, aood = kb.facts()

    def atomic(name: str, idx: np.ndarray) -> Split:
        none = np.full(len(idx), -1)
        meta = {"h": ent[ah[idx]], "r1": rel[ar[idx]], **{r: none for r in rel_roles[1:]},
                **{b: none for b in bridges}, "t": ent[at[idx]]}
        return make_split(name, np.stack([ent[ah[idx]], rel[ar[idx]]], axis=1), ent[at[idx]], vocab,
                          atomic=True, meta=meta, roles=ROLES_COMPOSITION_ATOMIC)

    def probe(idx: np.ndarray) -> np.ndarray:
        if len(idx) <= cfg.probe_size:
            return idx
        return np.sort(rng.choice(idx, size=cfg.probe_size, replace=False))

    all_atomic = np.arange(len(ah))
    train = concat_splits("train", [atomic("train", all_atomic), inferred("train", train_inf)], pad_id=vocab[END])
    splits = {
        "train": train,
        "id_atomic": atomic("id_atomic", probe(np.flatnonzero(~aood))),
        "ood_atomic": atomic("ood_atomic", probe(np.flatnonzero(aood))),
        "train_inferred": inferred("train_inferred", probe(train_inf)),
        "test_inferred_iid": inferred("test_inferred_iid", probe(test_iid)),
        "test_inferred_ood": inferred("test_inferred_ood", probe(test_ood)),
    }
    counts = {
        "n_atomic": n_atomic,
        "n_id_atomic": n_id_atomic,
        "n_ood_atomic": n_ood,
        "n_inferred_candidates": int(h.shape[0]),
        "n_id_id": int(all_id.sum()),
        "n_ood_ood": int(all_ood.sum()),
        "n_mixed_dropped": int((~all_id & ~all_ood).sum()),
        "n_test_inferred_iid": int(len(test_iid)),
        "n_test_inferred_ood": int(len(test_ood)),
        "n_train_candidates": int(len(candidates)),
        "n_train_inferred": n_train_inf,
        "n_train": len(train),
        "phi": n_train_inf / n_id_atomic,
        "max_phi": len(candidates) / n_id_atomic,
    }
    return TaskDataset(task=task, vocab=vocab, kb=kb, splits=splits, counts=counts, config=dataclasses.asdict(cfg))



# --------------------------------------------------------------------------- the registered task


class CompositionTask(Task):
    """Two-hop composition: ``<h><r1><r2>`` -> ``<t>`` through the bridge ``b``."""

    name = "composition"
    config_cls = CompositionConfig
    inferred_roles = ("h", "r1", "r2")
    perturbations = ("h", "r1", "r2")
    diagnoses = ("ood_lens",)
    cli_params = {
        "n_entities": "--entities", "n_relations": "--relations", "out_degree": "--out-degree",
        "ood_fraction": "--ood-fraction", "phi": "--phi",
    }
    hypothesis = CircuitHypothesis(
        kind="staged",
        inputs=("h", "r1", "r2"),
        stages=(
            Stage("bridge@r1", "r1", "bridge", sources=(("h", "h"), ("r1", "r1")), perturbation="h"),
            Stage("r2@r2", "r2", "r2", sources=(("r2", "r2"),), perturbation="r2",
                  at="bridge@r1", search_after="bridge@r1"),
        ),
        output_target="t@last", output_role="r2", output_content="t",
        share=(("h", "r1"),),
    )

    def generate(self, cfg: CompositionConfig) -> TaskDataset:
        return generate_composition(cfg)

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        from grokscope.tasks.paper_format import load_composition_items

        return load_composition_items(vocab, parsed, directory)

    def describe(self, dataset: TaskDataset) -> CompositionConfig:
        kb = dataset.kb
        n_e, n_r = kb.tail.shape
        degree = int((kb.tail >= 0).sum(1).max()) if kb.tail.size else 1
        return CompositionConfig(
            n_entities=max(2, n_e), n_relations=max(1, n_r), out_degree=min(max(1, degree), max(1, n_r)),
            ood_fraction=clip_fraction(kb.ood.sum() / max(1, kb.n_facts)), phi=float(dataset.counts.get("phi", 0.0)),
            probe_size=max([1, *(len(s) for name, s in dataset.splits.items() if name != "train")]),
        )

    def counterfactuals(
        self, dataset: TaskDataset, split: Split, rows: np.ndarray, perturbation: str,
        rng: np.random.Generator, *, id_only: bool = True,
    ) -> CounterfactualDraw:
        return chain_counterfactuals(dataset, split, rows, perturbation, rng, id_only=id_only)

    def lens_targets(self, split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
        return chain_lens_targets(split, vocab, within_class=within_class)


def _hops(roles: dict[str, int]) -> int:
    return sum(1 for r in roles if r.startswith("r") and r[1:].isdigit())


def chain_counterfactuals(
    dataset: TaskDataset, split: Split, rows: np.ndarray, perturbation: str,
    rng: np.random.Generator, *, id_only: bool = True,
) -> CounterfactualDraw:
    """Counterfactuals of a chain of hops ``<h><r1>...<rk>`` (composition and k-hop).

    ``h`` -> ``h'`` and ``r_i`` -> ``r_i'``: any replacement whose whole chain is defined
    (every hop an ID fact with ``id_only``) and ends at another tail than ``t``; drawn
    uniformly per example, vectorized over examples and candidates.
    """
    vocab, kb = dataset.vocab, dataset.kb
    size = len(vocab)
    e_of, r_of = inverse_index(vocab.entity_ids, size), inverse_index(vocab.relation_ids, size)
    k = _hops(split.roles)
    meta = {key: v[rows] for key, v in split.meta.items()}
    h = e_of[meta["h"]]
    rel = np.stack([r_of[meta[f"r{i}"]] for i in range(1, k + 1)], axis=1)  # [n, k]
    t = e_of[meta["t"]]
    tail, ood = kb.tail, kb.ood
    n, (n_e, n_r) = len(rows), tail.shape

    def walk(start: np.ndarray, hops: np.ndarray, changed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Follow ``hops`` ([n, m, j]) from ``start`` ([n, m]); ends, valid mask, nodes.

        Hops from ``changed`` on are new facts: with ``id_only`` they must be ID.
        """
        cur, ok, nodes = start, start >= 0, [start]
        for j in range(hops.shape[-1]):
            safe = np.maximum(cur, 0)
            nxt = np.where(ok, tail[safe, hops[..., j]], -1)
            if id_only and j >= changed:
                ok = ok & ~ood[safe, hops[..., j]]
            ok = ok & (nxt >= 0)
            cur = nxt
            nodes.append(cur)
        return cur, ok, nodes

    if perturbation == "h":
        cand = np.broadcast_to(np.arange(n_e)[None, :], (n, n_e))
        same = cand == h[:, None]
        end, ok, nodes = walk(cand, np.broadcast_to(rel[:, None, :], (n, n_e, k)), 0)
        new_ids = vocab.entity_ids
    elif perturbation.startswith("r") and perturbation[1:].isdigit() and 1 <= int(perturbation[1:]) <= k:
        i = int(perturbation[1:]) - 1
        hops = np.broadcast_to(rel[:, None, :], (n, n_r, k)).copy()
        hops[:, :, i] = np.arange(n_r)[None, :]
        same = hops[:, :, i] == rel[:, i : i + 1]
        end, ok, nodes = walk(np.broadcast_to(h[:, None], (n, n_r)), hops, i)
        new_ids = vocab.relation_ids
    else:
        raise ValueError(f"unknown perturbation {perturbation!r}; choose from h, r1..r{k}")
    valid = ok & (end != t[:, None]) & ~same
    j = pick_per_row(rng, valid)
    keep = j >= 0
    jj = np.maximum(j, 0)
    rr = np.arange(n)
    cf_t = end[rr, jj]
    cf_meta = {"cf_t": vocab.entity_ids[cf_t[keep]]}
    bridge_names = ["bridge"] if k == 2 else [f"b{i}" for i in range(1, k)]
    for name, node in zip(bridge_names, nodes[1:k]):
        cf_meta[f"cf_{name}"] = vocab.entity_ids[node[rr, jj][keep]]
    return CounterfactualDraw(
        new_token=np.where(keep, new_ids[jj], -1),
        answer=meta["t"],
        cf_answer=vocab.entity_ids[np.maximum(cf_t, 0)],
        cf_meta=cf_meta,
    )


def chain_lens_targets(split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
    """Lens targets of a chain split: each bridge at the relation that resolves it, the
    last relation at its own position (over the whole vocabulary, as the paper, and
    ``/rel`` among the relations), the answer at the last position; atomic splits: the
    answer at the last position."""
    roles, meta = split.roles, split.meta
    if not roles:
        raise ValueError(f"split {split.name!r} mixes layouts (no roles); pick a probe split such as 'train_inferred'")
    ent = vocab.class_ids("entity") if within_class else None
    rel = vocab.class_ids("relation") if within_class else None
    if set(roles) == {"h", "r"}:
        return [LensTarget("t@last", split.target_pos, meta["t"], ent)]
    k = _hops(roles)
    if k < 2 or set(roles) != {"h", *(f"r{i}" for i in range(1, k + 1))}:
        raise ValueError(f"split {split.name!r}: no lens targets known for roles {sorted(roles)}")
    bridges = ["bridge"] if k == 2 else [f"b{i}" for i in range(1, k)]
    rel_all = vocab.class_ids("relation")
    out = [LensTarget(f"{b}@r{i}", roles[f"r{i}"], meta[b], ent) for i, b in enumerate(bridges, start=1)]
    out.append(LensTarget(f"r{k}@r{k}", roles[f"r{k}"], meta[f"r{k}"], rel, never_answer=True))
    out.append(LensTarget("t@last", split.target_pos, meta["t"], ent))
    if not within_class:  # the last relation also ranked among relations (within_class already is)
        out.append(LensTarget(f"r{k}@r{k}/rel", roles[f"r{k}"], meta[f"r{k}"], rel_all, never_answer=True))
    return out


register_task(CompositionTask())
