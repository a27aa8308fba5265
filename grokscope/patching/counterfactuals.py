"""Counterfactual inputs for patching, built by the run's task, on one shared sample.

:func:`sample_rows` is the one example sampler of grokscope: lens, tracing, circuits,
the series and discovery all draw their rows of a split through it, so every analysis of
a checkpoint sees the same examples for the same ``(n, seed)``.

:func:`make_counterfactuals` asks the dataset's registered task
(:meth:`grokscope.tasks.Task.counterfactuals`) to replace the token at one role so that
the answer really changes according to the knowledge base; examples without a valid
counterfactual are dropped and counted.

Where the task scores the answer past the input (``CounterfactualDraw.score_pos``: a
path of several tokens, scored where the clean and counterfactual paths part), the
clean and corrupt rows are the teacher-forced sequences ``split.tokens[rows, :w]`` with
``w = max(score_pos) + 1`` over every such perturbation drawn together, and
:attr:`Counterfactuals.score_pos` says where each example is read.

Example:
    >>> from grokscope.tasks import composition
    >>> ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0, seed=0)
    >>> cfs = make_counterfactuals(ds, n=20, seed=0)
    >>> sorted(cfs), bool((cfs["h"].answer != cfs["h"].cf_answer).all())
    (['h', 'r1', 'r2'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int

from grokscope.series.sampling import _sample, sample_rows  # noqa: F401  (re-exported)
from grokscope.tasks.base import task_of

if TYPE_CHECKING:
    from grokscope.tasks.dataset import TaskDataset


# --------------------------------------------------------------------------- counterfactuals


@dataclass
class Counterfactuals:
    """Clean inputs paired with inputs that change one token and the answer.

    Attributes:
        perturbation: the replaced role (``h``, ``r1``, ``r2``, ``e1``, ``e2``, ``attr``), or
            a perturbation whose replaced position varies per example (``changed_pos``).
        position: input position of that role (-1 when it varies per example).
        clean: ``[example, pos]`` clean input ids (teacher-forced answer tokens up to the
            last ``score_pos`` when the task gives one).
        corrupt: ``[example, pos]`` the same with one token replaced.
        answer: ``[example]`` the clean answer token (from the knowledge base).
        cf_answer: ``[example]`` the counterfactual's answer token (from the KB).
        example_index: ``[example]`` rows of the source split.
        roles: role -> input position.
        meta: clean metadata of the kept examples (token ids; ``label`` is the label
            index) plus ``cf_*`` fields of the counterfactual (``cf_bridge``, ...).
        n_requested: examples sampled before dropping those without a counterfactual.
        split: name of the source split.
        score_pos: None (every example is read at the last position), or ``[example]``
            the position whose prediction is scored, per example.
        changed_pos: ``[example]`` the replaced input position (``position`` for a role).
    """

    perturbation: str
    position: int
    clean: Int[torch.Tensor, "example pos"]
    corrupt: Int[torch.Tensor, "example pos"]
    answer: Int[torch.Tensor, " example"]
    cf_answer: Int[torch.Tensor, " example"]
    example_index: Int[torch.Tensor, " example"]
    roles: dict[str, int]
    meta: dict[str, Int[torch.Tensor, " example"]] = field(default_factory=dict)
    n_requested: int = 0
    split: str = ""
    score_pos: Int[torch.Tensor, " example"] | None = None
    changed_pos: Int[torch.Tensor, " example"] | None = None

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def n_invalid(self) -> int:
        """Sampled examples that had no valid counterfactual (and were dropped)."""
        return self.n_requested - len(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "perturbation": self.perturbation,
            "position": self.position,
            "split": self.split,
            "roles": dict(self.roles),
            "n_requested": self.n_requested,
            "n_invalid": self.n_invalid,
            "example_index": self.example_index.tolist(),
            "clean": self.clean.tolist(),
            "corrupt": self.corrupt.tolist(),
            "answer": self.answer.tolist(),
            "cf_answer": self.cf_answer.tolist(),
            "meta": {k: v.tolist() for k, v in self.meta.items()},
            "score_pos": None if self.score_pos is None else self.score_pos.tolist(),
            "changed_pos": None if self.changed_pos is None else self.changed_pos.tolist(),
        }


def perturbations_of(dataset: TaskDataset) -> tuple[str, ...]:
    """The perturbations the dataset's task defines (``h``, ``r1``... / ``e1``, ``attr``...)."""
    return tuple(task_of(dataset).perturbations)


def make_counterfactuals(
    dataset: TaskDataset,
    split: str | None = None,
    *,
    n: int | None = 300,
    seed: int = 0,
    perturbations: Sequence[str] | None = None,
    id_only: bool = True,
) -> dict[str, Counterfactuals]:
    """Sample examples of a split (:func:`sample_rows`) and build the task's counterfactuals.

    Args:
        dataset: the task (KB, vocabulary, splits).
        split: a homogeneous inferred split (default: the task's ``default_split``).
        n: examples to sample (without replacement; None or more than the split: all).
        seed: seeds ``numpy.random.default_rng(seed)`` (sampling, then candidates).
        perturbations: a subset of the task's perturbations (default: all).
        id_only: use only in-distribution atomic facts for the counterfactual (facts
            the model was trained on as ID); the clean examples are not filtered.

    Returns:
        perturbation -> :class:`Counterfactuals` (each keeps only its valid examples).

    Raises:
        ValueError: an unknown perturbation, or a split without the task's roles.
    """
    task = task_of(dataset)
    split = split or task.default_split
    allowed = tuple(task.perturbations)
    perts = tuple(perturbations) if perturbations is not None else allowed
    bad = [p for p in perts if p not in allowed]
    if bad:
        raise ValueError(f"unknown perturbations {bad} for {dataset.task}; choose from {allowed}")
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(dataset.splits)}")
    sp = dataset.splits[split]
    task.check_inferred(sp)
    rows, rng = _sample(len(sp), n, seed)
    meta = {k: v[rows] for k, v in sp.meta.items()}
    draws = {pert: task.counterfactuals(dataset, sp, rows, pert, rng, id_only=id_only) for pert in perts}
    keeps = {pert: np.asarray(d.new_token) >= 0 for pert, d in draws.items()}
    # One width for every perturbation the task scores past the input: the last score_pos + 1.
    scored = [np.asarray(d.score_pos)[keeps[p]] for p, d in draws.items() if d.score_pos is not None]
    width = max((int(x.max()) + 1 for x in scored if len(x)), default=int(sp.target_pos.max()) + 1)
    if width > sp.tokens.shape[1]:
        raise ValueError(f"{dataset.task}: a score_pos ({width - 1}) lies past the split's rows ({sp.tokens.shape[1]} tokens)")
    out: dict[str, Counterfactuals] = {}
    for pert, draw in draws.items():
        keep = keeps[pert]
        inputs = sp.tokens[rows, :width] if draw.score_pos is not None else sp.input_ids[rows]
        if draw.position is None:
            pos = int(sp.roles[pert])
            changed = np.full(len(rows), pos, dtype=np.int64)
        else:
            pos, changed = -1, np.asarray(draw.position, dtype=np.int64)
        corrupt = inputs.copy()
        corrupt[np.arange(len(rows))[keep], changed[keep]] = np.asarray(draw.new_token)[keep]
        all_meta = {k: _t(v[keep]) for k, v in meta.items()}
        all_meta.update({k: _t(v) for k, v in draw.cf_meta.items()})
        out[pert] = Counterfactuals(
            perturbation=pert,
            position=pos,
            clean=_t(inputs[keep]),
            corrupt=_t(corrupt[keep]),
            answer=_t(np.asarray(draw.answer)[keep]),
            cf_answer=_t(np.asarray(draw.cf_answer)[keep]),
            example_index=_t(rows[keep]),
            roles=dict(sp.roles),
            meta=all_meta,
            n_requested=len(rows),
            split=split,
            score_pos=None if draw.score_pos is None else _t(np.asarray(draw.score_pos)[keep]),
            changed_pos=_t(changed[keep]),
        )
    return out


def _t(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.long)
