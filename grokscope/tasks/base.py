"""The task protocol and its registry: a task owns its meaning, analysis asks it.

A task is one file that subclasses :class:`Task` and calls :func:`register_task` once
(as SAELens registers its SAE variants). Everything above ``grokscope/tasks/`` gets the
task-specific parts from the registered task and never tests a task's name:

- ``name`` and ``config_cls`` (a frozen dataclass with a ``task`` field and a ``seed``);
- :meth:`Task.generate` (config -> :class:`TaskDataset`) and :meth:`Task.load`
  (the paper's file format, already parsed, -> dataset);
- ``probe_splits`` (the splits evaluated while training, ``type`` in test.json) and
  ``inferred_roles`` (the input layout of the splits analysis works on);
- ``perturbations`` and :meth:`Task.counterfactuals` (vectorized over examples);
- :meth:`Task.lens_targets` (which token to decode at which position);
- :meth:`Task.attention_probes` (where to read attention, for the ``attention_probes``
  diagnosis);
- ``hypothesis``: the paper's circuit as data (:class:`CircuitHypothesis`), evaluated by
  :mod:`grokscope.patching.hypothesis` and read by the series' measures;
- ``diagnoses``: names of the diagnoses that apply (implemented in
  :mod:`grokscope.progress.diagnoses`, keyed by name);
- ``cli_params``: config field -> ``grokscope data`` flag.

Example:
    >>> from grokscope.tasks import get_task
    >>> get_task("composition").perturbations
    ('h', 'r1', 'r2')
    >>> from grokscope.tasks import task_names
    >>> {"composition", "comparison", "complex", "khop"} <= set(task_names())
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from grokscope.tasks.dataset import TASK_PROBE_SPLITS

if TYPE_CHECKING:
    from grokscope.tasks.dataset import Split, TaskDataset
    from grokscope.tasks.vocab import Vocab

PAPER_PROBE_SPLITS: tuple[str, ...] = (
    "id_atomic",
    "ood_atomic",
    "train_inferred",
    "test_inferred_iid",
    "test_inferred_ood",
)
"""The paper's probe splits (the ``type`` field of its test.json)."""


# --------------------------------------------------------------------------- config checks shared by tasks


def check(cond: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``cond`` (a task config's ``__post_init__`` check)."""
    if not cond:
        raise ValueError(msg)


def check_fraction(name: str, value: float, *, open_low: bool = True) -> None:
    """``value`` must lie in ``(0, 1)`` (``[0, 1)`` with ``open_low=False``)."""
    low_ok = value > 0 if open_low else value >= 0
    check(low_ok and value < 1, f"{name} must be in ({'0' if open_low else '[0'}, 1), got {value!r}")


def check_seed_probe(cfg: Any) -> None:
    """``probe_size >= 1`` and ``seed >= 0``, the checks every paper-style task shares."""
    check(cfg.probe_size >= 1, f"probe_size must be >= 1, got {cfg.probe_size}")
    check(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")


# --------------------------------------------------------------------------- data a task hands to analysis


@dataclass(frozen=True)
class LensTarget:
    """One token to decode at one input position, per example.

    Attributes:
        name: e.g. ``bridge@r1`` (``<content>@<role>``).
        position: input position (int, or an ``[example]`` array of positions).
        token_ids: ``[example]`` the token id to rank.
        allowed: None (rank among the whole vocabulary), an array of token ids (rank
            within that class), or an ``[example, d_vocab]`` bool mask.
        never_answer: the target's tokens are never an answer in training (composition's
            relations). An untied unembedding then never learns to rank them up (their rows
            only ever get the softmax's push-down), so the lens cannot decode them there;
            :func:`grokscope.lens.logit.logit_lens` still ranks them but lists them in
            ``LensResult.undecodable`` with the reason, and plots leave them out.
    """

    name: str
    position: Any
    token_ids: Any
    allowed: Any = None
    never_answer: bool = False


@dataclass(frozen=True)
class AttentionProbe:
    """Where to read attention: from one query position onto named groups of key positions.

    The ``attention_probes`` diagnosis averages, per layer and head, the attention weight
    from ``query_pos`` onto each group (its members' weights summed) over the probe's rows.

    Attributes:
        name: e.g. ``path->edge by height``.
        rows: ``[row]`` the split rows the probe reads (a row may repeat, one per query).
        query_pos: ``[row]`` the query position.
        key_pos: ``[row, group, member]`` key positions (-1: missing; a group with no
            member present is left out of that row's mean).
        groups: the name of each group.
    """

    name: str
    rows: Any
    query_pos: Any
    key_pos: Any
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    """One intermediate state of a circuit hypothesis: ``content`` resolved at ``role``.

    Attributes:
        target: the lens target (or derived target) whose first decodable layer places
            the stage, e.g. ``bridge@r1``.
        role: the input role (position) of the state.
        content: what the state holds (``bridge``, ``v1``...).
        sources: ``(input role, perturbation)`` edges into the state.
        perturbation: the perturbation whose causal strength weights the edge from the
            state to the output.
        at: place the stage at the layer of another stage's target (the paper's
            composition carries ``r2`` at the bridge's layer) instead of its own.
        search_after: record the first layer of ``target`` at or above this other
            target's layer (informational, as ``layers[target]``).
        held_fallback: when the lens cannot decode the content, place the stage where
            tracing still holds the role's effect at its own position (comparison).
    """

    target: str
    role: str
    content: str
    sources: tuple[tuple[str, str], ...]
    perturbation: str
    at: str | None = None
    search_after: str | None = None
    held_fallback: bool = False


@dataclass(frozen=True)
class CircuitHypothesis:
    """The paper's drawing of a task's circuit, as data.

    Attributes:
        kind: ``staged`` (every stage or none: when the first stage is not found, the
            inputs link straight to the output) or ``parallel`` (each stage alone).
        inputs: the input roles drawn as nodes at layer 0.
        stages: the intermediate states.
        output_target, output_role, output_content: the answer at the last layer.
        derived: derived lens targets, the mean MRR of several targets (e.g.
            ``labels@attr`` over the three label targets).
        share: ``(perturbation, role)`` pairs whose strength at ``S[L-1, role]`` is the
            circuit's share of the prediction.
    """

    kind: str
    inputs: tuple[str, ...]
    stages: tuple[Stage, ...]
    output_target: str
    output_role: str
    output_content: str
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict)
    share: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("staged", "parallel"):
            raise ValueError(f"hypothesis kind must be 'staged' or 'parallel', got {self.kind!r}")

    @property
    def lens_names(self) -> set[str]:
        """Every lens target the hypothesis reads (derived ones resolved)."""
        names = {self.output_target}
        for st in self.stages:
            names |= set(self.derived.get(st.target, (st.target,)))
        return names


@dataclass
class CounterfactualDraw:
    """A task's counterfactuals for sampled rows of a split (numpy, one per example).

    Attributes:
        new_token: ``[example]`` the replacing token id (-1: no valid counterfactual).
        answer: ``[example]`` the clean answer token id.
        cf_answer: ``[example]`` the counterfactual's answer token id (any value where
            ``new_token`` is -1).
        cf_meta: ``cf_*`` fields for the valid rows only (e.g. ``cf_bridge``).
        score_pos: None (the answer is read at the last input position, ``target_pos``),
            or ``[example]`` the position whose prediction tells the answer from the
            counterfactual's (any value where ``new_token`` is -1). Past ``target_pos`` the
            inputs are the teacher-forced answer (``split.tokens``): a task whose answers
            are several tokens scores where the clean and counterfactual answers part.
        position: None (the token replaced is at the perturbation's role), or
            ``[example]`` the replaced input position per row (a perturbation with no
            fixed role, e.g. one edge of a tree).
    """

    new_token: np.ndarray
    answer: np.ndarray
    cf_answer: np.ndarray
    cf_meta: dict[str, np.ndarray] = field(default_factory=dict)
    score_pos: np.ndarray | None = None
    position: np.ndarray | None = None


def pick_per_row(rng: np.random.Generator, valid: np.ndarray) -> np.ndarray:
    """One uniformly random True column per row of ``valid`` (-1 for a row with none).

    Vectorized: a random key per cell, the arg-max over the valid cells of each row.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> pick_per_row(rng, np.array([[False, True], [False, False]])).tolist()
        [1, -1]
    """
    valid = np.asarray(valid, dtype=bool)
    keys = np.where(valid, rng.random(valid.shape), -1.0)
    col = keys.argmax(axis=1)
    return np.where(valid.any(axis=1), col, -1)


def clip_fraction(x: float) -> float:
    """A share clipped into (0, 1), for configs that describe loaded data."""
    return min(max(float(x), 1e-6), 1 - 1e-6)


def inverse_index(ids: np.ndarray, size: int) -> np.ndarray:
    """Token id -> index in ``ids`` (-1 for tokens not in ``ids``)."""
    out = np.full(size, -1, dtype=np.int64)
    out[np.asarray(ids)] = np.arange(len(ids))
    return out


# --------------------------------------------------------------------------- the protocol


class Task:
    """Base class of a task; subclass it in one file and :func:`register_task` it."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    probe_splits: ClassVar[tuple[str, ...]] = PAPER_PROBE_SPLITS
    inferred_roles: ClassVar[tuple[str, ...]] = ()
    perturbations: ClassVar[tuple[str, ...]] = ()
    hypothesis: ClassVar[CircuitHypothesis | None] = None
    diagnoses: ClassVar[tuple[str, ...]] = ()
    cli_params: ClassVar[dict[str, str]] = {}
    default_split: ClassVar[str] = "train_inferred"
    """The split analysis samples by default (a homogeneous one with ``inferred_roles``)."""
    text_files: ClassVar[bool] = False
    """The split files hold plain text, not ``<...>`` tokens: :meth:`text_items` writes them,
    :meth:`save_files` adds the task's own files (a tokenizer), :meth:`load_text` reads them."""

    def text_items(self, dataset: TaskDataset, split: Split) -> list[tuple[str, str]]:
        """The ``(input_text, target_text)`` pairs a split's file holds (default: ``<...>`` tokens)."""
        return split.texts(dataset.vocab)

    def save_files(self, dataset: TaskDataset, directory: Path) -> None:
        """Write the task's own files next to the split files (default: none)."""

    def load_text(self, vocab: Vocab, items: dict[str, list[dict[str, Any]]], directory: Path) -> TaskDataset:
        """Build the dataset from split files of plain text (``items``: split -> file items)."""
        raise NotImplementedError(f"task {self.name!r} has no text-file loader")

    def generate(self, cfg: Any) -> TaskDataset:
        """Generate the dataset of a config (same config, same bytes)."""
        raise NotImplementedError(f"task {self.name!r} does not generate data")

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        """Build the dataset from parsed paper-format files.

        ``parsed`` has ``train`` and one entry per probe split: ``(inputs, answers)``
        lists of token ids, as :mod:`grokscope.tasks.paper_format` read them.
        """
        raise NotImplementedError(f"task {self.name!r} has no paper-format loader")

    def describe(self, dataset: TaskDataset) -> Any:
        """A config describing a loaded dataset's sizes (descriptive: files are never regenerated)."""
        raise NotImplementedError(f"task {self.name!r} cannot describe a loaded dataset")

    def counterfactuals(
        self,
        dataset: TaskDataset,
        split: Split,
        rows: np.ndarray,
        perturbation: str,
        rng: np.random.Generator,
        *,
        id_only: bool = True,
    ) -> CounterfactualDraw:
        """Counterfactuals replacing one token (at role ``perturbation``, or per row at
        ``CounterfactualDraw.position``) for ``rows`` of ``split``."""
        raise NotImplementedError(f"task {self.name!r} has no counterfactuals")

    def lens_targets(self, split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
        """The lens targets of a homogeneous split, from its metadata."""
        raise NotImplementedError(f"task {self.name!r} has no lens targets")

    def attention_probes(self, split: Split, vocab: Vocab, rows: np.ndarray) -> list[AttentionProbe]:
        """Where the ``attention_probes`` diagnosis reads attention on ``rows`` of ``split``
        (a task that declares that diagnosis overrides this); default none."""
        return []

    def specialise(self, dataset: TaskDataset) -> Task:
        """This task as it applies to one dataset (k-hop reads k from it); default: itself."""
        return self.for_roles(tuple(dataset.splits[self.default_split].roles))

    def for_roles(self, roles: tuple[str, ...] | list[str]) -> Task:
        """This task for an inferred layout with these roles (k-hop: k); default: itself."""
        return self

    def check_inferred(self, split: Split) -> None:
        """Raise a clear error unless ``split`` has the layout analysis needs."""
        if set(split.roles) != set(self.inferred_roles):
            raise ValueError(
                f"split {split.name!r} has roles {sorted(split.roles)}; {self.name} analysis needs a split "
                f"with roles {sorted(self.inferred_roles)} (e.g. {self.default_split!r})"
            )

    def __repr__(self) -> str:
        return f"<task {self.name}>"


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register a task instance under ``task.name`` (and its config class); returns it.

    Raises:
        ValueError: an empty name, or a name registered by another class.
    """
    if not task.name:
        raise ValueError("a task needs a name")
    old = _REGISTRY.get(task.name)
    if old is not None and type(old).__qualname__ != type(task).__qualname__:
        raise ValueError(f"task {task.name!r} is already registered by {type(old).__name__}")
    _REGISTRY[task.name] = task
    TASK_PROBE_SPLITS[task.name] = tuple(task.probe_splits)
    return task


def get_task(task: str | Any) -> Task:
    """The registered task of a name, a task config, or a dataset (anything with ``.task``).

    Raises:
        ValueError: no task of that name is registered (the message lists them).
    """
    name = task if isinstance(task, str) else getattr(task, "task", None)
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(_REGISTRY))}")


def task_of(dataset: Any) -> Task:
    """The registered task of a dataset, specialised to it (:meth:`Task.specialise`)."""
    return get_task(dataset.task).specialise(dataset)


def task_names() -> tuple[str, ...]:
    """Names of every registered task, in registration order."""
    return tuple(_REGISTRY)


DEFAULT_TASK = "composition"
"""The task of a :class:`grokscope.RunConfig` built without one."""


def task_config_class(name: str) -> type:
    """The frozen config class a registered task declares (``Task.config_cls``).

    Raises:
        ValueError: no task of that name (the message lists the registered ones).
    """
    return get_task(name).config_cls


def task_config_classes() -> tuple[type, ...]:
    """Every registered task's config class (what a run config's ``task`` may be)."""
    return tuple(t.config_cls for t in _REGISTRY.values())


def default_task_config() -> Any:
    """The default config of :data:`DEFAULT_TASK`."""
    return task_config_class(DEFAULT_TASK)()


def registered_tasks() -> tuple[Task, ...]:
    """Every registered task instance, in registration order."""
    return tuple(_REGISTRY.values())
