"""The dataset contract every task produces and every later layer reads.

A :class:`TaskDataset` holds the knowledge base (atomic facts), the vocabulary, and
named :class:`Split` objects: ``train`` (everything trained on) and the paper's probe
splits (:data:`PROBE_SPLITS`). Each split stores token sequences ready for training
plus per-example metadata (token ids of the bridge entity, the attribute values, ...)
and, for homogeneous splits, the position of each role in the input, so analysis can
ask task-specific questions without knowing how the data was made.

Sequence layout (as the paper): ``input tokens, answer, </a>``; the model predicts the
answer at ``target_pos`` (the last input token) and ``</a>`` one position later.
Sequences of one split are right-padded with ``</a>`` (never attended by earlier
positions under the causal mask, never in the loss).

Example:
    >>> from grokscope.tasks import composition
    >>> ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0, seed=0)
    >>> split = ds.splits["train_inferred"]
    >>> ds.vocab.decode(split.tokens[0][: split.target_pos[0] + 1])[:5]
    '<e_0>'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from grokscope.display import Summarized
from grokscope.tasks.vocab import END, Vocab

PROBE_SPLITS: tuple[str, ...] = (
    "id_atomic",
    "ood_atomic",
    "train_inferred",
    "test_inferred_iid",
    "test_inferred_ood",
)
"""The paper's probe splits (the ``type`` field of its test.json)."""

SPLITS: tuple[str, ...] = ("train", *PROBE_SPLITS)

ROLES_COMPOSITION_INFERRED: dict[str, int] = {"h": 0, "r1": 1, "r2": 2}
ROLES_COMPOSITION_ATOMIC: dict[str, int] = {"h": 0, "r": 1}
ROLES_COMPARISON_INFERRED: dict[str, int] = {"attr": 0, "q": 1, "e1": 2, "mask": 3, "e2": 4}
ROLES_COMPARISON_ATOMIC: dict[str, int] = {"e": 0, "attr": 1}


TASK_PROBE_SPLITS: dict[str, tuple[str, ...]] = {}
"""Task name -> its probe splits; filled by :func:`grokscope.tasks.base.register_task`."""

@dataclass(frozen=True)
class Split:
    """One named set of examples.

    Attributes:
        name: split name (``train`` or a probe name).
        tokens: (n, T) int64 token ids: input, answer, ``</a>``, right padding.
        target_pos: (n,) index of the last input token (where the answer is predicted).
        atomic: (n,) bool, True for atomic facts, False for inferred facts.
        meta: per-example int64 arrays of token ids (-1 where not applicable).
            Composition: ``h``, ``r1``, ``r2``, ``bridge``, ``t`` (atomic facts use
            ``h``, ``r1`` and ``t``). Comparison: ``attr``, ``e1``, ``e2``, ``v1``,
            ``v2``, ``label`` (atomic facts use ``e1``, ``attr`` and ``v1``).
        roles: role name -> input position, for a split whose examples share one
            layout (empty for the mixed ``train`` split).
    """

    name: str
    tokens: np.ndarray
    target_pos: np.ndarray
    atomic: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.tokens.ndim != 2:
            raise ValueError(f"split {self.name!r}: tokens must be 2-D, got shape {self.tokens.shape}")
        for key, arr in [("target_pos", self.target_pos), ("atomic", self.atomic), *self.meta.items()]:
            if len(arr) != n:
                raise ValueError(f"split {self.name!r}: {key} has {len(arr)} rows, tokens has {n}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def answer_end(self) -> np.ndarray:
        """(n,) the position of the ``</a>`` that closes each answer (``target_pos + 2`` for a
        one-token answer; later for a task whose answers are several tokens, e.g. tree paths)."""
        return answer_end(self.tokens, self.target_pos)

    @property
    def targets(self) -> np.ndarray:
        """(n,) the answer token id of every example."""
        return self.tokens[np.arange(len(self)), self.target_pos + 1]

    @property
    def input_ids(self) -> np.ndarray:
        """(n, P) the input tokens, for a split whose inputs share one length."""
        lengths = np.unique(self.target_pos)
        if len(lengths) != 1:
            raise ValueError(f"split {self.name!r} mixes input lengths {lengths.tolist()}; index it per example")
        return self.tokens[:, : int(lengths[0]) + 1]

    def subset(self, index: np.ndarray, name: str | None = None) -> Split:
        """A new split holding the rows ``index`` (trimmed of all-padding columns)."""
        index = np.asarray(index)
        pos = self.target_pos[index]
        width = int(self.answer_end[index].max()) + 1 if len(pos) else self.tokens.shape[1]
        return Split(
            name=name or self.name,
            tokens=self.tokens[index, :width],
            target_pos=pos,
            atomic=self.atomic[index],
            meta={k: v[index] for k, v in self.meta.items()},
            roles=dict(self.roles),
        )

    def texts(self, vocab: Vocab) -> list[tuple[str, str]]:
        """(input_text, target_text) pairs in the paper's format."""
        out = []
        for row, p, end in zip(self.tokens, self.target_pos, self.answer_end):
            inp = vocab.decode(row[: p + 1])
            out.append((inp, inp + vocab.decode(row[p + 1 : end + 1])))
        return out


def answer_end(tokens: np.ndarray, target_pos: np.ndarray) -> np.ndarray:
    """(n,) the first position after ``target_pos + 1`` holding ``</a>``, per row.

    ``</a>`` is recognised as the token in the last column (every row of a split ends in its
    own ``</a>`` or in ``</a>`` padding); an answer token is never ``</a>``.

    Example:
        >>> answer_end(np.array([[5, 6, 7, 9, 9], [5, 6, 7, 8, 9]]), np.array([1, 1])).tolist()
        [3, 4]
    """
    tokens = np.asarray(tokens)
    n, width = tokens.shape
    if not n:
        return np.zeros(0, dtype=np.int64)
    cols = np.arange(width)[None, :]
    is_end = (tokens == tokens[:, -1:]) & (cols >= np.asarray(target_pos)[:, None] + 2)
    return is_end.argmax(axis=1).astype(np.int64)


def make_split(
    name: str,
    inputs: np.ndarray,
    answers: np.ndarray,
    vocab: Vocab,
    *,
    atomic: bool,
    meta: dict[str, np.ndarray],
    roles: dict[str, int],
) -> Split:
    """Build a homogeneous split from (n, P) input ids and (n,) answer ids."""
    inputs = np.asarray(inputs, dtype=np.int64)
    if inputs.ndim != 2 or len(inputs) != len(answers):
        raise ValueError(f"split {name!r}: inputs must be (n, P) with n = {len(answers)}, got {inputs.shape}")
    n, p = inputs.shape
    tokens = np.empty((n, p + 2), dtype=np.int64)
    tokens[:, :p] = inputs
    tokens[:, p] = answers
    tokens[:, p + 1] = vocab[END]
    return Split(
        name=name,
        tokens=tokens,
        target_pos=np.full(n, p - 1, dtype=np.int64),
        atomic=np.full(n, atomic, dtype=bool),
        meta={k: np.asarray(v, dtype=np.int64) for k, v in meta.items()},
        roles=dict(roles),
    )


def concat_splits(name: str, parts: list[Split], pad_id: int) -> Split:
    """Concatenate splits of possibly different lengths (right-padded with ``pad_id``).

    The width is that of the widest non-empty part, so an empty part adds no padding
    columns (the result is what reading the split back from its files gives).
    """
    width = max(s.tokens.shape[1] for s in ([s for s in parts if len(s)] or parts))
    tokens = np.full((sum(len(s) for s in parts), width), pad_id, dtype=np.int64)
    row = 0
    for s in parts:
        if len(s):
            tokens[row : row + len(s), : s.tokens.shape[1]] = s.tokens
        row += len(s)
    keys = sorted(set().union(*(s.meta for s in parts)))
    meta = {
        k: np.concatenate([s.meta.get(k, np.full(len(s), -1, dtype=np.int64)) for s in parts]) for k in keys
    }
    same_roles = all(s.roles == parts[0].roles for s in parts)
    return Split(
        name=name,
        tokens=tokens,
        target_pos=np.concatenate([s.target_pos for s in parts]),
        atomic=np.concatenate([s.atomic for s in parts]),
        meta=meta,
        roles=dict(parts[0].roles) if same_roles else {},
    )


@dataclass(frozen=True)
class CompositionKB:
    """Atomic facts (h, r) -> t of the composition task.

    Attributes:
        tail: (n_entities, n_relations) tail entity index, -1 where (h, r) has no fact.
        ood: (n_entities, n_relations) True for OOD atomic facts.
    """

    tail: np.ndarray
    ood: np.ndarray

    @property
    def n_entities(self) -> int:
        return self.tail.shape[0]

    @property
    def n_relations(self) -> int:
        return self.tail.shape[1]

    @property
    def n_facts(self) -> int:
        return int((self.tail >= 0).sum())

    def facts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(h, r, t, ood) arrays of every atomic fact, in (h, r) order."""
        h, r = np.nonzero(self.tail >= 0)
        return h, r, self.tail[h, r], self.ood[h, r]


@dataclass(frozen=True)
class ComparisonKB:
    """Atomic facts (e, attr) -> value of the comparison task.

    Attributes:
        values: (n_entities, n_attributes) value index, -1 where unknown.
        ood: (n_entities, n_attributes) True where the (entity, attribute) fact is OOD.
        n_values: number of ordinal values.
    """

    values: np.ndarray
    ood: np.ndarray
    n_values: int

    @property
    def n_entities(self) -> int:
        return self.values.shape[0]

    @property
    def n_attributes(self) -> int:
        return self.values.shape[1]

    @property
    def n_facts(self) -> int:
        return int((self.values >= 0).sum())


KB = Union[CompositionKB, ComparisonKB]


def comparison_label(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """0 if v1 < v2, 1 if equal, 2 if v1 > v2 (the label index of ``<attr_k_L>``)."""
    return (np.sign(np.asarray(v1) - np.asarray(v2)) + 1).astype(np.int64)


@dataclass(frozen=True, repr=False)
class TaskDataset(Summarized):
    """A generated (or loaded) task: vocabulary, knowledge base, splits, statistics.

    Attributes:
        task: ``composition``, ``comparison`` or ``complex``.
        vocab: the vocabulary.
        kb: the knowledge base (:class:`CompositionKB` or :class:`ComparisonKB`).
        splits: ``train`` plus the probe splits.
        counts: sizes of every population (candidates, held-out sets, dropped facts).
        config: the generator arguments (a dict), or None when loaded from files
            that do not carry them.
    """

    task: str
    vocab: Vocab
    kb: KB
    splits: dict[str, Split]
    counts: dict[str, Any]
    config: dict[str, Any] | None = None


    def summary(self) -> dict[str, Any]:
        """Task, vocabulary size, examples per split, the content hash."""
        return {"task": self.task, "vocab": len(self.vocab.tokens),
                "splits": {k: len(v) for k, v in self.splits.items()}, "hash": self.content_hash()[:12]}

    def __post_init__(self) -> None:
        missing = [s for s in self.split_names if s not in self.splits]
        if missing:
            raise ValueError(f"dataset is missing splits: {missing}")

    @property
    def probe_splits(self) -> tuple[str, ...]:
        """The probe splits of this dataset's task (the paper's five unless it declares others)."""
        return TASK_PROBE_SPLITS.get(self.task, PROBE_SPLITS)

    @property
    def split_names(self) -> tuple[str, ...]:
        """``train`` and the probe splits."""
        return ("train", *self.probe_splits)

    @property
    def n_ctx(self) -> int:
        """Longest sequence (input + answer + ``</a>``) of any split."""
        return max(s.tokens.shape[1] for s in self.splits.values())

    def content_hash(self) -> str:
        """sha256 over the vocabulary and every split's tokens (hex)."""
        h = hashlib.sha256()
        h.update("\n".join(self.vocab.tokens).encode())
        for name in self.split_names:
            s = self.splits[name]
            h.update(name.encode())
            cols = np.arange(s.tokens.shape[1])
            canonical = np.where(cols[None, :] <= s.answer_end[:, None], s.tokens, -1)
            h.update(np.ascontiguousarray(canonical, dtype="<i8").tobytes())
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        """Counts of every split and population, phi achieved, config and content hash."""
        out: dict[str, Any] = {"task": self.task}
        out["splits"] = {name: len(s) for name, s in self.splits.items()}
        out["counts"] = dict(self.counts)
        out["vocab_size"] = len(self.vocab)
        out["config"] = self.config
        out["content_hash"] = self.content_hash()
        return out
