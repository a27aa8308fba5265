"""Attribute comparison (PAPER.md, Task 2) and complex reasoning (Task 3).

Comparison: every (entity, attribute) has a random value; per attribute a fresh random
split puts ``ood_fraction`` of the entities OOD. Inferred facts compare two entities on
one attribute, ``<attr_k><q><e_i><mask><e_j>`` -> ``<attr_k_L>`` with L = 0 (v_i < v_j),
1 (equal), 2 (v_i > v_j). ID-ID unordered pairs are held out as test ID with
probability ``test_fraction`` (both orders go together), the rest are training
candidates in both orders; OOD-OOD pairs are test OOD; mixed pairs are dropped.

Complex reasoning: the same knowledge base, but OOD atomic facts are NOT trained, and
``id_id_fraction`` / ``id_ood_fraction`` of the ID-ID / ID-OOD comparisons are. The test
set is OOD-OOD pairs whose order follows only by chaining trained facts
(o1 ? x <= y ? o2 through ID entities x, y), ``n_test_per_label`` per label.

Example:
    >>> ds = comparison(n_entities=40, n_attributes=2, n_values=5, phi=3.6, seed=0)
    >>> sorted(set(ds.splits["train_inferred"].meta["label"].tolist())) == [0, 1, 2]
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
    ROLES_COMPARISON_ATOMIC,
    ROLES_COMPARISON_INFERRED,
    ComparisonKB,
    Split,
    TaskDataset,
    comparison_label,
    concat_splits,
    make_split,
)
from grokscope.tasks.vocab import END, Vocab


def check_comparison_kb(cfg: Any) -> None:
    """The checks shared by the comparison and complex-reasoning knowledge bases."""
    check(cfg.n_entities >= 4, f"n_entities must be >= 4, got {cfg.n_entities}")
    check(cfg.n_attributes >= 1, f"n_attributes must be >= 1, got {cfg.n_attributes}")
    check(cfg.n_values >= 2, f"n_values must be >= 2, got {cfg.n_values}")
    check_fraction("ood_fraction", cfg.ood_fraction)
    check_seed_probe(cfg)


@dataclass(frozen=True)
class ComparisonConfig:
    """Attribute comparison (PAPER.md, Task 2). Defaults are the paper's values.

    Attributes:
        n_entities: entities ``<e_i>``.
        n_attributes: attributes ``<attr_k>``, each with labels ``<attr_k_0|1|2>``.
        n_values: ordinal values ``<0>`` .. ``<n_values-1>``.
        ood_fraction: per attribute, share of entities whose value is OOD.
        phi: round(phi * #ID atomic) training inferred facts.
        test_fraction: share of ID-ID unordered pairs held out (both orders) as test ID.
        probe_size: cap on each probe split.
        seed: data seed.
    """

    n_entities: int = 1000
    n_attributes: int = 20
    n_values: int = 20
    ood_fraction: float = 0.1
    phi: float = 7.2
    test_fraction: float = 0.1
    probe_size: int = 3000
    seed: int = 0
    task: Literal["comparison"] = "comparison"

    def __post_init__(self) -> None:
        check(self.task == "comparison", f"task must be 'comparison', got {self.task!r}")
        check_comparison_kb(self)
        check_fraction("test_fraction", self.test_fraction, open_low=False)
        check(self.phi >= 0 and math.isfinite(self.phi), f"phi must be >= 0, got {self.phi!r}")

    @property
    def n_ood_per_attribute(self) -> int:
        """OOD entities per attribute (at least 2, so OOD-OOD pairs exist)."""
        return min(self.n_entities - 2, max(2, round(self.ood_fraction * self.n_entities)))


def comparison(
    n_entities: int = 1000,
    n_attributes: int = 20,
    n_values: int = 20,
    ood_fraction: float = 0.1,
    phi: float = 7.2,
    seed: int = 0,
    *,
    test_fraction: float = 0.1,
    probe_size: int = 3000,
) -> TaskDataset:
    """Generate the comparison task. Defaults are the paper's values.

    Raises:
        ValueError: for invalid sizes or fractions, or a phi above the maximum (the
            message gives it).
    """
    return generate_comparison(
        ComparisonConfig(
            n_entities=n_entities, n_attributes=n_attributes, n_values=n_values,
            ood_fraction=ood_fraction, phi=phi, test_fraction=test_fraction,
            probe_size=probe_size, seed=seed,
        )
    )


def comparison_kb(cfg: Any, rng: np.random.Generator) -> ComparisonKB:
    n_e, n_a = cfg.n_entities, cfg.n_attributes
    values = rng.integers(0, cfg.n_values, size=(n_e, n_a))
    order = np.argsort(rng.random((n_a, n_e)), axis=1, kind="stable")[:, : cfg.n_ood_per_attribute]
    ood = np.zeros((n_e, n_a), dtype=bool)
    ood[order, np.arange(n_a)[:, None]] = True
    return ComparisonKB(values=values, ood=ood, n_values=cfg.n_values)


class SplitBuilder:
    """Turns (attribute, e1, e2) index arrays into splits for one vocabulary."""

    def __init__(self, kb: ComparisonKB, vocab: Vocab) -> None:
        self.kb, self.vocab = kb, vocab
        self.ent, self.att = vocab.entity_ids, vocab.attribute_ids
        self.val, self.lab = vocab.value_ids, vocab.label_ids

    def inferred(self, name: str, a: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> Split:
        v1, v2 = self.kb.values[e1, a], self.kb.values[e2, a]
        label = comparison_label(v1, v2)
        n = len(a)
        q = np.full(n, self.vocab["<q>"])
        mask = np.full(n, self.vocab["<mask>"])
        return make_split(
            name,
            np.stack([self.att[a], q, self.ent[e1], mask, self.ent[e2]], axis=1),
            self.lab[a, label],
            self.vocab,
            atomic=False,
            meta={
                "attr": self.att[a], "e1": self.ent[e1], "e2": self.ent[e2],
                "v1": self.val[v1], "v2": self.val[v2], "label": label,
            },
            roles=ROLES_COMPARISON_INFERRED,
        )

    def atomic(self, name: str, e: np.ndarray, a: np.ndarray) -> Split:
        none = np.full(len(e), -1)
        v = self.kb.values[e, a]
        return make_split(
            name,
            np.stack([self.ent[e], self.att[a]], axis=1),
            self.val[v],
            self.vocab,
            atomic=True,
            meta={"attr": self.att[a], "e1": self.ent[e], "e2": none, "v1": self.val[v], "v2": none, "label": none},
            roles=ROLES_COMPARISON_ATOMIC,
        )


def probe_rows(rng: np.random.Generator, idx: np.ndarray, size: int) -> np.ndarray:
    if len(idx) <= size:
        return idx
    return np.sort(rng.choice(idx, size=size, replace=False))


def unordered_pairs(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(len(members), k=1)
    return members[i], members[j]


def atomic_index(kb: ComparisonKB) -> tuple[np.ndarray, np.ndarray]:
    """(entity, attribute) of every atomic fact, attribute-major (the paper's order)."""
    a, e = np.nonzero(kb.values.T >= 0)
    return e, a


# --------------------------------------------------------------------------- comparison


def generate_comparison(cfg: ComparisonConfig) -> TaskDataset:
    """Generate the comparison task from its frozen config (see :func:`comparison`)."""
    rng = np.random.default_rng([cfg.seed, 0xC1])
    kb = comparison_kb(cfg, rng)
    vocab = Vocab.comparison(cfg.n_entities, cfg.n_attributes, cfg.n_values)
    build = SplitBuilder(kb, vocab)

    # Unordered ID-ID pairs per attribute; held out (both orders) with test_fraction.
    ida, idi, idj, ooda, oodi, oodj = [], [], [], [], [], []
    for a in range(cfg.n_attributes):
        i, j = unordered_pairs(np.flatnonzero(~kb.ood[:, a]))
        ida.append(np.full(len(i), a)), idi.append(i), idj.append(j)
        oi = np.flatnonzero(kb.ood[:, a])
        oi, oj = np.meshgrid(oi, oi, indexing="ij")
        keep = oi != oj
        ooda.append(np.full(int(keep.sum()), a)), oodi.append(oi[keep]), oodj.append(oj[keep])
    pa, pi, pj = (np.concatenate(x) for x in (ida, idi, idj))
    held = rng.random(len(pa)) < cfg.test_fraction
    train_pairs = np.flatnonzero(~held)
    test_pairs = np.flatnonzero(held)

    n_id_atomic = int((~kb.ood).sum())
    n_train_inf = int(round(cfg.phi * n_id_atomic))
    n_candidates = 2 * len(train_pairs)
    if n_train_inf > n_candidates:
        raise ValueError(
            f"phi={cfg.phi} asks for {n_train_inf} training inferred facts but only "
            f"{n_candidates} ID-ID candidates exist; the maximum phi for this knowledge "
            f"base is {n_candidates / n_id_atomic:.4f}"
        )
    # Candidate c is pair train_pairs[c // 2] in order c % 2 (0: (i, j), 1: (j, i)).
    chosen = np.sort(rng.choice(n_candidates, size=n_train_inf, replace=False))
    cp, flip = train_pairs[chosen // 2], (chosen % 2).astype(bool)
    tr_a, tr_e1, tr_e2 = pa[cp], np.where(flip, pj[cp], pi[cp]), np.where(flip, pi[cp], pj[cp])

    te_a = np.repeat(pa[test_pairs], 2)
    te_e1 = np.stack([pi[test_pairs], pj[test_pairs]], axis=1).reshape(-1)
    te_e2 = np.stack([pj[test_pairs], pi[test_pairs]], axis=1).reshape(-1)
    oa, oe1, oe2 = (np.concatenate(x) for x in (ooda, oodi, oodj))

    ae, aa = atomic_index(kb)
    a_ood = kb.ood[ae, aa]
    train = concat_splits(
        "train",
        [build.atomic("train", ae, aa), build.inferred("train", tr_a, tr_e1, tr_e2)],
        pad_id=vocab[END],
    )
    p_tr = probe_rows(rng, np.arange(n_train_inf), cfg.probe_size)
    p_te = probe_rows(rng, np.arange(len(te_a)), cfg.probe_size)
    p_oo = probe_rows(rng, np.arange(len(oa)), cfg.probe_size)
    p_ia = probe_rows(rng, np.flatnonzero(~a_ood), cfg.probe_size)
    p_oa = probe_rows(rng, np.flatnonzero(a_ood), cfg.probe_size)
    splits = {
        "train": train,
        "id_atomic": build.atomic("id_atomic", ae[p_ia], aa[p_ia]),
        "ood_atomic": build.atomic("ood_atomic", ae[p_oa], aa[p_oa]),
        "train_inferred": build.inferred("train_inferred", tr_a[p_tr], tr_e1[p_tr], tr_e2[p_tr]),
        "test_inferred_iid": build.inferred("test_inferred_iid", te_a[p_te], te_e1[p_te], te_e2[p_te]),
        "test_inferred_ood": build.inferred("test_inferred_ood", oa[p_oo], oe1[p_oo], oe2[p_oo]),
    }
    counts = {
        "n_atomic": kb.n_facts,
        "n_id_atomic": n_id_atomic,
        "n_ood_atomic": int(kb.ood.sum()),
        "n_id_id_pairs": int(len(pa)),
        "n_test_pairs_iid": int(len(test_pairs)),
        "n_test_inferred_iid": int(len(te_a)),
        "n_test_inferred_ood": int(len(oa)),
        "n_train_candidates": n_candidates,
        "n_train_inferred": n_train_inf,
        "n_train": len(train),
        "phi": n_train_inf / n_id_atomic,
        "max_phi": n_candidates / n_id_atomic,
    }
    return TaskDataset(
        task="comparison", vocab=vocab, kb=kb, splits=splits, counts=counts,
        config=dataclasses.asdict(cfg),
    )


# --------------------------------------------------------------------------- the registered task


class ComparisonTask(Task):
    """Attribute comparison: ``<attr><q><e1><mask><e2>`` -> ``<attr_k_L>``."""

    name = "comparison"
    config_cls = ComparisonConfig
    inferred_roles = ("attr", "q", "e1", "mask", "e2")
    perturbations = ("e1", "e2", "attr")
    diagnoses = ("value_gap",)
    cli_params = {
        "n_entities": "--entities", "n_attributes": "--attributes", "n_values": "--values",
        "ood_fraction": "--ood-fraction", "phi": "--phi",
    }
    hypothesis = CircuitHypothesis(
        kind="parallel",
        inputs=("attr", "e1", "e2"),
        stages=(
            Stage("v1@e1", "e1", "v1", sources=(("e1", "e1"),), perturbation="e1", held_fallback=True),
            Stage("v2@e2", "e2", "v2", sources=(("e2", "e2"),), perturbation="e2", held_fallback=True),
            Stage("labels@attr", "attr", "labels", sources=(("attr", "attr"),), perturbation="attr"),
        ),
        output_target="label@last", output_role="e2", output_content="label",
        derived={"labels@attr": ("label0@attr", "label1@attr", "label2@attr")},
        share=(("e1", "e1"), ("e2", "e2")),
    )

    def generate(self, cfg: ComparisonConfig) -> TaskDataset:
        return generate_comparison(cfg)

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        from grokscope.tasks.paper_format import load_comparison_items

        return dataclasses.replace(load_comparison_items(vocab, parsed, directory), task=self.name)

    def describe(self, dataset: TaskDataset) -> ComparisonConfig:
        n_e, n_a, ood, probe = describe_comparison(dataset)
        return ComparisonConfig(n_entities=max(4, n_e), n_attributes=max(1, n_a), n_values=max(2, dataset.kb.n_values),
                                ood_fraction=ood, phi=float(dataset.counts.get("phi", 0.0)), probe_size=probe)

    def counterfactuals(
        self, dataset: TaskDataset, split: Split, rows: np.ndarray, perturbation: str,
        rng: np.random.Generator, *, id_only: bool = True,
    ) -> CounterfactualDraw:
        """``e1`` -> ``e1'`` / ``e2`` -> ``e2'`` whose value changes the label; ``attr`` ->
        ``attr'`` with another label for the same two entities (uniform, vectorized)."""
        vocab, kb = dataset.vocab, dataset.kb
        size = len(vocab)
        ent, att = vocab.entity_ids, vocab.attribute_ids
        e_of, a_of = inverse_index(ent, size), inverse_index(att, size)
        meta = {k: v[rows] for k, v in split.meta.items()}
        values, ood = kb.values, kb.ood
        a, e1, e2 = a_of[meta["attr"]], e_of[meta["e1"]], e_of[meta["e2"]]
        v1, v2 = values[e1, a], values[e2, a]
        lab = comparison_label(v1, v2)
        labels = vocab.label_ids
        n_e, n_a = values.shape
        if perturbation in ("e1", "e2"):
            col = values[:, a].T  # [n, E] the attribute's value of every candidate
            new_lab = comparison_label(col, v2[:, None]) if perturbation == "e1" else comparison_label(v1[:, None], col)
            cand = np.arange(n_e)[None, :]
            ok = (col >= 0) & (new_lab != lab[:, None]) & (cand != e1[:, None]) & (cand != e2[:, None])
            if id_only:
                ok &= ~ood[:, a].T
            j = pick_per_row(rng, ok)
            jj, keep = np.maximum(j, 0), j >= 0
            rr = np.arange(len(rows))
            cf_lab = new_lab[rr, jj]
            w1, w2 = (col[rr, jj], v2) if perturbation == "e1" else (v1, col[rr, jj])
            new_tok, cf_ans = ent[jj], labels[a, cf_lab]
        elif perturbation == "attr":
            w1_all, w2_all = values[e1, :], values[e2, :]  # [n, A]
            new_lab = comparison_label(w1_all, w2_all)
            ok = (w1_all >= 0) & (w2_all >= 0) & (new_lab != lab[:, None]) & (np.arange(n_a)[None, :] != a[:, None])
            if id_only:
                ok &= ~ood[e1, :] & ~ood[e2, :]
            j = pick_per_row(rng, ok)
            jj, keep = np.maximum(j, 0), j >= 0
            rr = np.arange(len(rows))
            cf_lab = new_lab[rr, jj]
            w1, w2 = w1_all[rr, jj], w2_all[rr, jj]
            new_tok, cf_ans = att[jj], labels[jj, cf_lab]
        else:
            raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(self.perturbations)}")
        val = vocab.value_ids
        return CounterfactualDraw(
            new_token=np.where(keep, new_tok, -1),
            answer=labels[a, lab],
            cf_answer=cf_ans,
            cf_meta={"cf_v1": val[w1[keep]], "cf_v2": val[w2[keep]], "cf_label": cf_lab[keep]},
        )

    def lens_targets(self, split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
        """Inferred: ``v1@e1``, ``v2@e2``, ``label0|1|2@attr`` (the example's attribute's
        labels: v1 < v2, =, >) and ``label@last``; atomic: ``v@last``."""
        roles, meta, n = split.roles, split.meta, len(split)
        if not roles:
            raise ValueError(f"split {split.name!r} mixes layouts (no roles); pick a probe split such as 'train_inferred'")
        val = vocab.class_ids("value") if within_class else None
        if set(roles) == {"e", "attr"}:
            return [LensTarget("v@last", split.target_pos, meta["v1"], val)]
        if set(roles) != set(self.inferred_roles):
            raise ValueError(f"split {split.name!r}: no lens targets known for roles {sorted(roles)}")
        attr_idx = inverse_index(vocab.attribute_ids, len(vocab))[meta["attr"]]
        if (attr_idx < 0).any():
            raise ValueError(f"split {split.name!r}: meta['attr'] holds a token that is not an attribute")
        labels = vocab.label_ids[attr_idx]  # [n, 3] token ids of each example's labels
        label_space = None
        if within_class:
            label_space = np.zeros((n, len(vocab)), dtype=bool)
            label_space[np.arange(n)[:, None], labels] = True
        answer = labels[np.arange(n), meta["label"]]
        return [
            LensTarget("v1@e1", roles["e1"], meta["v1"], val),
            LensTarget("v2@e2", roles["e2"], meta["v2"], val),
            *(LensTarget(f"label{k}@attr", roles["attr"], labels[:, k], label_space) for k in range(3)),
            LensTarget("label@last", split.target_pos, answer, label_space),
        ]


def describe_comparison(dataset: TaskDataset) -> tuple[int, int, float, int]:
    """Entities, attributes, the OOD share per attribute and the largest probe split."""
    n_e, n_a = dataset.kb.values.shape
    ood = clip_fraction(dataset.kb.ood.sum(0).mean() / max(1, n_e)) if n_a else 0.1
    probe = max([1, *(len(s) for name, s in dataset.splits.items() if name != "train")])
    return n_e, n_a, ood, probe


register_task(ComparisonTask())
