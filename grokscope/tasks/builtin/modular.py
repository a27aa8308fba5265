"""Modular addition ``(a, b) -> (a + b) mod p`` (Nanda et al., ICLR 2023): one file, one registration.

Input ``<a><b><=>``, target ``<c></a>`` with ``c = (a + b) mod p``; one token per residue
(``<0>`` .. ``<p-1>``, the vocabulary's value tokens) and one for ``=`` (``<=>``); the
answer is predicted at ``=``, the last input position. All ``p * p`` ordered pairs are
split once, by a seeded permutation: ``round(train_fraction * p^2)`` pairs are trained on,
every other pair is held out.

Splits (the names the trainer, the series and :mod:`grokscope.runs.grokking` read):
``train`` (every training pair), ``train_inferred`` (the training pairs, or a seeded
probe of ``train_probe`` of them) and ``test_inferred_iid`` (every held-out pair). There
is no OOD split: ``valid.json`` is an empty list. ``meta`` holds the token ids ``a``,
``b`` and ``c`` (the answer) per example; ``roles`` are ``{"a": 0, "b": 1, "eq": 2}``.

Counterfactuals: ``a -> a'`` or ``b -> b'`` with ``a' != a``; the answer always changes
(``(a' + b) mod p != (a + b) mod p``). With ``id_only`` the corrupted pair is itself a
training pair (seen in training, so a memorising model knows its answer too).

Example:
    >>> from grokscope.tasks.builtin.modular import ModularConfig, generate_modular
    >>> ds = generate_modular(ModularConfig(p=7, train_fraction=0.5))
    >>> len(ds.splits["train"]), len(ds.splits["test_inferred_iid"])
    (24, 25)
    >>> ds.vocab.decode(ds.splits["train"].tokens[0])
    '<0><0><=><0></a>'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from grokscope.tasks.base import (
    CircuitHypothesis,
    CounterfactualDraw,
    LensTarget,
    Task,
    check,
    clip_fraction,
    inverse_index,
    pick_per_row,
    register_task,
)
from grokscope.tasks.dataset import Split, TaskDataset, make_split
from grokscope.tasks.vocab import END, EQUALS, Vocab

ROLES_MODULAR: dict[str, int] = {"a": 0, "b": 1, "eq": 2}
MAX_P = 2000
"""Refuse moduli above this (p^2 pairs are held in memory)."""



@dataclass(frozen=True)
class ModularConfig:
    """Modular addition. Defaults are Nanda et al.'s (p = 113, 30% of pairs trained).

    Attributes:
        p: the modulus (>= 2); residues ``0 .. p-1``.
        train_fraction: share of the ``p^2`` ordered pairs trained on (the rest is test).
        train_probe: cap on the ``train_inferred`` probe (None: every training pair).
        seed: data seed (the permutation that splits the pairs).
    """

    p: int = 113
    train_fraction: float = 0.3
    train_probe: int | None = None
    seed: int = 0
    task: Literal["modular"] = "modular"

    def __post_init__(self) -> None:
        check(self.task == "modular", f"task must be 'modular', got {self.task!r}")
        check(2 <= self.p <= MAX_P, f"p must be in [2, {MAX_P}], got {self.p}")
        check(0 < self.train_fraction < 1, f"train_fraction must be in (0, 1), got {self.train_fraction!r}")
        n = self.n_train
        check(1 <= n < self.p * self.p,
               f"train_fraction {self.train_fraction} of {self.p}^2 pairs gives {n} training pairs; "
               "it must leave at least one pair on each side")
        check(self.train_probe is None or self.train_probe >= 1, f"train_probe must be >= 1 or None, got {self.train_probe}")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @property
    def n_train(self) -> int:
        """Training pairs: ``round(train_fraction * p^2)``."""
        return int(round(self.train_fraction * self.p * self.p))


def modular_vocab(p: int) -> Vocab:
    """Residues ``<0>`` .. ``<p-1>`` (ids 0..p-1), then ``<=>`` and ``</a>``."""
    return Vocab(tuple(f"<{i}>" for i in range(p)) + (EQUALS, END))


def _split(name: str, pairs: np.ndarray, p: int, vocab: Vocab) -> Split:
    """The split of pair indices ``pairs`` (``a * p + b``), in the given order."""
    a, b = np.divmod(np.asarray(pairs, dtype=np.int64), p)
    res = vocab.value_ids
    c = (a + b) % p
    inputs = np.stack([res[a], res[b], np.full(len(a), vocab[EQUALS])], axis=1)
    meta = {"a": res[a], "b": res[b], "c": res[c]}
    return make_split(name, inputs, res[c], vocab, atomic=False, meta=meta, roles=ROLES_MODULAR)


def _counts(p: int, n_train: int) -> dict[str, Any]:
    return {"p": p, "n_pairs": p * p, "n_train": n_train, "n_test": p * p - n_train,
            "train_fraction": n_train / (p * p)}


def generate_modular(cfg: ModularConfig) -> TaskDataset:
    """Generate modular addition from its frozen config (same config, same bytes)."""
    p = cfg.p
    rng = np.random.default_rng([cfg.seed, 0x113])
    perm = rng.permutation(p * p)
    train = np.sort(perm[: cfg.n_train])
    test = np.sort(perm[cfg.n_train :])
    probe = train
    if cfg.train_probe is not None and cfg.train_probe < len(train):
        probe = np.sort(rng.choice(train, size=cfg.train_probe, replace=False))
    vocab = modular_vocab(p)
    splits = {
        "train": _split("train", train, p, vocab),
        "train_inferred": _split("train_inferred", probe, p, vocab),
        "test_inferred_iid": _split("test_inferred_iid", test, p, vocab),
    }
    return TaskDataset(task="modular", vocab=vocab, kb=None, splits=splits,  # type: ignore[arg-type]
                       counts=_counts(p, len(train)), config=dataclasses.asdict(cfg))


def modulus(dataset: TaskDataset) -> int:
    """p of a modular dataset (the number of residue tokens)."""
    return len(dataset.vocab.value_ids)


def pair_index(split: Split, vocab: Vocab) -> np.ndarray:
    """``a * p + b`` of every example of a modular split."""
    p = len(vocab.value_ids)
    res_of = inverse_index(vocab.value_ids, len(vocab))
    return res_of[split.meta["a"]] * p + res_of[split.meta["b"]]


def train_mask(dataset: TaskDataset) -> np.ndarray:
    """``[p, p]`` bool: True where ``(a, b)`` is a training pair."""
    p = modulus(dataset)
    mask = np.zeros(p * p, dtype=bool)
    mask[pair_index(dataset.splits["train"], dataset.vocab)] = True
    return mask.reshape(p, p)


class ModularTask(Task):
    """Modular addition ``<a><b><=>`` -> ``<(a + b) mod p>``.

    Probe splits are ``train_inferred`` (training pairs) and ``test_inferred_iid``
    (held-out pairs): the names training, the series and the grokking summary use.
    """

    name = "modular"
    config_cls = ModularConfig
    probe_splits = ("train_inferred", "test_inferred_iid")
    inferred_roles = ("a", "b", "eq")
    perturbations = ("a", "b")
    hypothesis = CircuitHypothesis(
        kind="parallel", inputs=("a", "b"), stages=(), output_target="c@eq", output_role="eq", output_content="c",
    )
    """The answer at ``=`` read from ``a`` and ``b``; the algorithm (Fourier features
    multiplied in the MLP) lives inside the block, with no intermediate residual state
    for the lens: :mod:`grokscope.progress.fourier` measures it."""
    diagnoses = ("fourier",)
    cli_params = {"p": "--p", "train_fraction": "--train-fraction", "train_probe": "--train-probe"}

    def generate(self, cfg: ModularConfig) -> TaskDataset:
        return generate_modular(cfg)

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        p = len(vocab.value_ids)
        if p < 2 or EQUALS not in vocab or vocab.tokens[:p] != modular_vocab(p).tokens[:p]:
            raise ValueError(f"{directory / 'vocab.json'}: not a modular-addition vocabulary (<0>..<p-1>, {EQUALS})")
        res_of = inverse_index(vocab.value_ids, len(vocab))
        splits, seen = {}, {}
        for name, (inputs, answers) in parsed.items():
            bad = [i for i, x in enumerate(inputs) if len(x) != 3]
            if bad:
                raise ValueError(f"{directory}: {name} example {bad[0]} has {len(inputs[bad[0]])} input tokens; modular uses 3")
            x = np.asarray(inputs, dtype=np.int64).reshape(-1, 3)
            y = np.asarray(answers, dtype=np.int64)
            a, b, c = res_of[x[:, 0]], res_of[x[:, 1]], res_of[y]
            wrong = (a < 0) | (b < 0) | (c < 0) | (x[:, 2] != vocab[EQUALS]) | ((a + b) % p != c)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise ValueError(f"{directory}: {name} item {vocab.decode(x[i])} -> {vocab.tokens[y[i]]} is not "
                                 f"<a><b>{EQUALS} -> <(a + b) mod {p}>")
            seen[name] = a * p + b
            splits[name] = _split(name, seen[name], p, vocab)
        overlap = np.intersect1d(seen["train"], seen["test_inferred_iid"])
        if len(overlap):
            a0, b0 = divmod(int(overlap[0]), p)
            raise ValueError(f"{directory}: pair ({a0}, {b0}) is both trained and held out")
        if not np.isin(seen["train_inferred"], seen["train"]).all():
            raise ValueError(f"{directory}: train_inferred holds a pair that train.json does not")
        return TaskDataset(task=self.name, vocab=vocab, kb=None, splits=splits,  # type: ignore[arg-type]
                           counts=_counts(p, len(seen["train"])), config=None)

    def describe(self, dataset: TaskDataset) -> ModularConfig:
        p = modulus(dataset)
        n_train, n_probe = len(dataset.splits["train"]), len(dataset.splits["train_inferred"])
        return ModularConfig(p=p, train_fraction=clip_fraction(n_train / (p * p)),
                             train_probe=None if n_probe == n_train else n_probe)

    def counterfactuals(
        self, dataset: TaskDataset, split: Split, rows: np.ndarray, perturbation: str,
        rng: np.random.Generator, *, id_only: bool = True,
    ) -> CounterfactualDraw:
        """``a -> a'`` (or ``b -> b'``), ``a' != a``, uniformly; with ``id_only`` the new pair is a training pair."""
        if perturbation not in self.perturbations:
            raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(self.perturbations)}")
        self.check_inferred(split)
        vocab, p = dataset.vocab, modulus(dataset)
        res, res_of = vocab.value_ids, inverse_index(vocab.value_ids, len(vocab))
        a, b = res_of[split.meta["a"][rows]], res_of[split.meta["b"][rows]]
        mine, other = (a, b) if perturbation == "a" else (b, a)
        cand = np.broadcast_to(np.arange(p)[None, :], (len(rows), p))
        valid = cand != mine[:, None]
        if id_only:
            trained = train_mask(dataset)
            valid &= trained[cand, other[:, None]] if perturbation == "a" else trained[other[:, None], cand]
        j = pick_per_row(rng, valid)
        keep = j >= 0
        cf_c = (np.maximum(j, 0) + other) % p
        return CounterfactualDraw(
            new_token=np.where(keep, res[np.maximum(j, 0)], -1),
            answer=split.meta["c"][rows],
            cf_answer=res[cf_c],
            cf_meta={"cf_c": res[cf_c[keep]]},
        )

    def lens_targets(self, split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
        """The answer ``c`` at ``=`` (within the residues with ``within_class``)."""
        self.check_inferred(split)
        allowed = vocab.value_ids if within_class else None
        return [LensTarget("c@eq", split.roles["eq"], split.meta["c"], allowed)]


register_task(ModularTask())
