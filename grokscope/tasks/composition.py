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

import numpy as np

from grokscope.config import CompositionConfig
from grokscope.tasks.dataset import (
    ROLES_COMPOSITION_ATOMIC,
    ROLES_COMPOSITION_INFERRED,
    CompositionKB,
    Split,
    TaskDataset,
    concat_splits,
    make_split,
)
from grokscope.tasks.vocab import END, Vocab


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


def generate_composition(cfg: CompositionConfig) -> TaskDataset:
    """Generate the composition task from its frozen config (see :func:`composition`)."""
    rng = np.random.default_rng([cfg.seed, 0xC0])
    n_e, n_r, k = cfg.n_entities, cfg.n_relations, cfg.out_degree

    # Atomic facts: k distinct relations per head, each to a uniform random tail.
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
    kb = CompositionKB(tail=tail, ood=ood)

    # Inferred candidates (h, k1, k2): r1 = rels[h, k1], b = tails[h, k1],
    # r2 = rels[b, k2], t = tails[b, k2]. Shape (E, k, k), flattened.
    h = np.broadcast_to(np.arange(n_e)[:, None, None], (n_e, k, k)).reshape(-1)
    r1 = np.broadcast_to(rels[:, :, None], (n_e, k, k)).reshape(-1)
    b = np.broadcast_to(tails[:, :, None], (n_e, k, k)).reshape(-1)
    k2 = np.broadcast_to(np.arange(k)[None, None, :], (n_e, k, k)).reshape(-1)
    r2 = rels[b, k2]
    t = tails[b, k2]
    ood1 = np.broadcast_to(ood_k[:, :, None], (n_e, k, k)).reshape(-1)
    ood2 = ood_k[b, k2]

    id_id = ~ood1 & ~ood2
    ood_ood = ood1 & ood2
    held_out = id_id & (rng.random(id_id.shape[0]) < cfg.test_fraction)
    candidates = np.flatnonzero(id_id & ~held_out)
    test_iid = np.flatnonzero(held_out)
    test_ood = np.flatnonzero(ood_ood)

    n_id_atomic = n_atomic - n_ood
    n_train_inf = int(round(cfg.phi * n_id_atomic))
    if n_train_inf > len(candidates):
        raise ValueError(
            f"phi={cfg.phi} asks for {n_train_inf} training inferred facts but only "
            f"{len(candidates)} ID-ID candidates exist; the maximum phi for this "
            f"knowledge base is {len(candidates) / n_id_atomic:.4f}"
        )
    train_inf = np.sort(rng.choice(candidates, size=n_train_inf, replace=False))

    vocab = Vocab.composition(n_e, n_r)
    ent, rel = vocab.entity_ids, vocab.relation_ids

    def inferred(name: str, idx: np.ndarray) -> Split:
        return make_split(
            name,
            np.stack([ent[h[idx]], rel[r1[idx]], rel[r2[idx]]], axis=1),
            ent[t[idx]],
            vocab,
            atomic=False,
            meta={
                "h": ent[h[idx]], "r1": rel[r1[idx]], "r2": rel[r2[idx]],
                "bridge": ent[b[idx]], "t": ent[t[idx]],
            },
            roles=ROLES_COMPOSITION_INFERRED,
        )

    ah, ar, at, aood = kb.facts()

    def atomic(name: str, idx: np.ndarray) -> Split:
        none = np.full(len(idx), -1)
        return make_split(
            name,
            np.stack([ent[ah[idx]], rel[ar[idx]]], axis=1),
            ent[at[idx]],
            vocab,
            atomic=True,
            meta={"h": ent[ah[idx]], "r1": rel[ar[idx]], "r2": none, "bridge": none, "t": ent[at[idx]]},
            roles=ROLES_COMPOSITION_ATOMIC,
        )

    def probe(idx: np.ndarray) -> np.ndarray:
        if len(idx) <= cfg.probe_size:
            return idx
        return np.sort(rng.choice(idx, size=cfg.probe_size, replace=False))

    all_atomic = np.arange(len(ah))
    train = concat_splits(
        "train", [atomic("train", all_atomic), inferred("train", train_inf)], pad_id=vocab[END]
    )
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
        "n_id_id": int(id_id.sum()),
        "n_ood_ood": int(ood_ood.sum()),
        "n_mixed_dropped": int((~id_id & ~ood_ood).sum()),
        "n_test_inferred_iid": int(len(test_iid)),
        "n_test_inferred_ood": int(len(test_ood)),
        "n_train_candidates": int(len(candidates)),
        "n_train_inferred": n_train_inf,
        "n_train": len(train),
        "phi": n_train_inf / n_id_atomic,
        "max_phi": len(candidates) / n_id_atomic,
    }
    return TaskDataset(
        task="composition", vocab=vocab, kb=kb, splits=splits, counts=counts,
        config=dataclasses.asdict(cfg),
    )
