"""Complex reasoning over the comparison knowledge base (PAPER.md, Task 3): one file, one registration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from grokscope.tasks.base import (
    check,
    check_fraction,
    register_task,
)
from grokscope.tasks.builtin.comparison import (
    ComparisonConfig,
    ComparisonTask,
    SplitBuilder,
    atomic_index,
    check_comparison_kb,
    comparison_kb,
    describe_comparison,
    probe_rows,
)
from grokscope.tasks.dataset import (
    ComparisonKB,
    TaskDataset,
    concat_splits,
)
from grokscope.tasks.vocab import END, Vocab


@dataclass(frozen=True)
class ComplexConfig:
    """Complex reasoning over the comparison KB (PAPER.md, Task 3).

    OOD atomic facts are not trained; a fraction of ID-ID and ID-OOD comparisons is.
    The test set holds OOD-OOD pairs whose order follows only by chaining through
    the graph of trained facts, ``n_test_per_label`` per label.
    """

    n_entities: int = 1000
    n_attributes: int = 20
    n_values: int = 20
    ood_fraction: float = 0.1
    id_id_fraction: float = 0.03
    id_ood_fraction: float = 0.03
    n_test_per_label: int = 50
    probe_size: int = 3000
    seed: int = 0
    task: Literal["complex"] = "complex"

    def __post_init__(self) -> None:
        check(self.task == "complex", f"task must be 'complex', got {self.task!r}")
        check_comparison_kb(self)
        check_fraction("id_id_fraction", self.id_id_fraction)
        check_fraction("id_ood_fraction", self.id_ood_fraction)
        check(self.n_test_per_label >= 1, "n_test_per_label must be >= 1")

    n_ood_per_attribute = ComparisonConfig.n_ood_per_attribute



def complex_reasoning(
    n_entities: int = 1000,
    n_attributes: int = 20,
    n_values: int = 20,
    ood_fraction: float = 0.1,
    seed: int = 0,
    *,
    id_id_fraction: float = 0.03,
    id_ood_fraction: float = 0.03,
    n_test_per_label: int = 50,
    probe_size: int = 3000,
) -> TaskDataset:
    """Generate the complex-reasoning task (comparison KB, chained OOD-OOD test)."""
    return generate_complex(
        ComplexConfig(
            n_entities=n_entities, n_attributes=n_attributes, n_values=n_values,
            ood_fraction=ood_fraction, id_id_fraction=id_id_fraction,
            id_ood_fraction=id_ood_fraction, n_test_per_label=n_test_per_label,
            probe_size=probe_size, seed=seed,
        )
    )


# --------------------------------------------------------------------------- shared


def derivable_order(
    kb: ComparisonKB,
    attribute: int,
    known_pairs: tuple[np.ndarray, np.ndarray],
    known_values: np.ndarray,
) -> np.ndarray:
    """Which order relations between entities follow by chaining known facts.

    Known facts for one attribute: the values of the entities in ``known_values``
    (bool, per entity) and comparisons ``known_pairs`` = (e1, e2) whose label is
    known. An entity of unknown value gets an upper bound from every known entity it
    is below or equal to, and a lower bound likewise; ``o1 < o2`` follows iff
    ``upper(o1)`` is below ``lower(o2)`` with at least one strict step, and
    ``o1 = o2`` iff both are known equal to entities of the same value.

    Returns:
        (n_entities, n_entities) int8 matrix: 0 (row < col derivable),
        1 (row = col derivable), 2 (row > col derivable), -1 (not derivable).
        Rows/columns of known-value entities are derived from their values.
    """
    n = kb.n_entities
    vals = kb.values[:, attribute].astype(np.float64)
    # Bound keys on a half-integer grid: a strict bound v moves by 0.5 inwards.
    upper = np.where(known_values, vals, np.inf)
    lower = np.where(known_values, vals, -np.inf)
    exact = np.where(known_values, vals, np.nan)
    e1, e2 = known_pairs
    if len(e1):
        # Only pairs with exactly one unknown side add information.
        for u, k in ((e1, e2), (e2, e1)):
            sel = ~known_values[u] & known_values[k]
            u, k = u[sel], k[sel]
            vu, vk = vals[u], vals[k]
            below, equal, above = vu < vk, vu == vk, vu > vk
            np.minimum.at(upper, u[below], vk[below] - 0.5)
            np.minimum.at(upper, u[equal], vk[equal])
            np.maximum.at(lower, u[equal], vk[equal])
            np.maximum.at(lower, u[above], vk[above] + 0.5)
            exact[u[equal]] = vk[equal]
    less = upper[:, None] < lower[None, :]
    out = np.full((n, n), -1, dtype=np.int8)
    out[less] = 0
    out[less.T] = 2
    eq = (exact[:, None] == exact[None, :])
    out[eq] = 1
    np.fill_diagonal(out, -1)
    return out


def generate_complex(cfg: ComplexConfig) -> TaskDataset:
    """Generate the complex-reasoning task (see :func:`complex_reasoning`)."""
    rng = np.random.default_rng([cfg.seed, 0xC2])
    kb = comparison_kb(cfg, rng)
    n_ood = int(kb.ood.sum())
    if n_ood > cfg.probe_size:
        raise ValueError(
            f"probe_size={cfg.probe_size} is below the {n_ood} OOD atomic facts: complex reasoning keeps "
            "OOD facts out of training, so the ood_atomic probe split is their only record in the "
            f"paper's files and must hold them all; use probe_size >= {n_ood}"
        )
    vocab = Vocab.comparison(cfg.n_entities, cfg.n_attributes, cfg.n_values)
    build = SplitBuilder(kb, vocab)

    tr_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    iid_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    test_parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[], [], []]
    n_derivable = np.zeros(3, dtype=np.int64)
    n_id_id = n_id_ood = 0
    for a in range(cfg.n_attributes):
        ids, oods = np.flatnonzero(~kb.ood[:, a]), np.flatnonzero(kb.ood[:, a])
        # Ordered ID-ID and ID-OOD pairs (both orders).
        i, j = np.meshgrid(ids, ids, indexing="ij")
        keep = i != j
        ii, ij = i[keep], j[keep]
        x, o = np.meshgrid(ids, oods, indexing="ij")
        xo1 = np.concatenate([x.ravel(), o.ravel()])
        xo2 = np.concatenate([o.ravel(), x.ravel()])
        n_id_id += len(ii)
        n_id_ood += len(xo1)
        pick_ii = rng.random(len(ii)) < cfg.id_id_fraction
        pick_io = rng.random(len(xo1)) < cfg.id_ood_fraction
        tr1 = np.concatenate([ii[pick_ii], xo1[pick_io]])
        tr2 = np.concatenate([ij[pick_ii], xo2[pick_io]])
        tr_parts.append((np.full(len(tr1), a), tr1, tr2))
        iid_parts.append((np.full(int((~pick_ii).sum()), a), ii[~pick_ii], ij[~pick_ii]))
        order = derivable_order(kb, a, (tr1, tr2), ~kb.ood[:, a])
        o1, o2 = np.meshgrid(oods, oods, indexing="ij")
        keep = o1 != o2
        o1, o2 = o1[keep], o2[keep]
        lab = order[o1, o2]
        for label in range(3):
            sel = lab == label
            n_derivable[label] += int(sel.sum())
            test_parts[label].append((np.full(int(sel.sum()), a), o1[sel], o2[sel]))

    def cat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))

    tr_a, tr_e1, tr_e2 = cat(tr_parts)
    iid_a, iid_e1, iid_e2 = cat(iid_parts)
    test_sel = []
    for label in range(3):
        ta, t1, t2 = cat(test_parts[label])
        pick = probe_rows(rng, np.arange(len(ta)), cfg.n_test_per_label)
        test_sel.append((ta[pick], t1[pick], t2[pick]))
    te_a, te_e1, te_e2 = cat(test_sel)

    ae, aa = atomic_index(kb)
    a_ood = kb.ood[ae, aa]
    id_e, id_a = ae[~a_ood], aa[~a_ood]
    train = concat_splits(
        "train",
        [build.atomic("train", id_e, id_a), build.inferred("train", tr_a, tr_e1, tr_e2)],
        pad_id=vocab[END],
    )
    p_tr = probe_rows(rng, np.arange(len(tr_a)), cfg.probe_size)
    p_iid = probe_rows(rng, np.arange(len(iid_a)), cfg.probe_size)
    p_ia = probe_rows(rng, np.flatnonzero(~a_ood), cfg.probe_size)
    p_oa = probe_rows(rng, np.flatnonzero(a_ood), cfg.probe_size)
    splits = {
        "train": train,
        "id_atomic": build.atomic("id_atomic", ae[p_ia], aa[p_ia]),
        "ood_atomic": build.atomic("ood_atomic", ae[p_oa], aa[p_oa]),
        "train_inferred": build.inferred("train_inferred", tr_a[p_tr], tr_e1[p_tr], tr_e2[p_tr]),
        "test_inferred_iid": build.inferred("test_inferred_iid", iid_a[p_iid], iid_e1[p_iid], iid_e2[p_iid]),
        "test_inferred_ood": build.inferred("test_inferred_ood", te_a, te_e1, te_e2),
    }
    counts = {
        "n_atomic": kb.n_facts,
        "n_id_atomic": int((~kb.ood).sum()),
        "n_ood_atomic_untrained": int(kb.ood.sum()),
        "n_id_id_comparisons": n_id_id,
        "n_id_ood_comparisons": n_id_ood,
        "n_train_inferred": int(len(tr_a)),
        "n_train": len(train),
        "n_derivable_ood_ood": {"lt": int(n_derivable[0]), "eq": int(n_derivable[1]), "gt": int(n_derivable[2])},
        "n_test_per_label": [int(len(x[0])) for x in test_sel],
    }
    return TaskDataset(
        task="complex", vocab=vocab, kb=kb, splits=splits, counts=counts,
        config=dataclasses.asdict(cfg),
    )


# --------------------------------------------------------------------------- the registered tasks


class ComplexTask(ComparisonTask):
    """Complex reasoning: comparison whose OOD atomic facts are never trained (PAPER.md Task 3)."""

    name = "complex"
    config_cls = ComplexConfig
    cli_params = {
        "n_entities": "--entities", "n_attributes": "--attributes", "n_values": "--values",
        "ood_fraction": "--ood-fraction",
    }

    def generate(self, cfg: ComplexConfig) -> TaskDataset:
        return generate_complex(cfg)

    def describe(self, dataset: TaskDataset) -> ComplexConfig:  # type: ignore[override]
        n_e, n_a, ood, probe = describe_comparison(dataset)
        return ComplexConfig(n_entities=max(4, n_e), n_attributes=max(1, n_a), n_values=max(2, dataset.kb.n_values),
                             ood_fraction=ood, probe_size=probe)



register_task(ComplexTask())
