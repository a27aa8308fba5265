"""The checkpoint-series engine: every registered analysis at every checkpoint of a run,
cached on disk, collected into typed records.

:func:`analyse_series` walks a run's checkpoints (the same examples at every step:
:func:`grokscope.series.sampling.sample_rows`), reads each step's metrics and weight norm,
and calls every *step analysis* registered with :func:`register_step_analysis`. The engine
imports none of them: each analysis module registers itself (as tasks do), so the arrow
points down. The built-in ones, loaded on first use (:data:`BUILTIN_STEP_ANALYSES`):

* the logit lens (:func:`grokscope.lens.checkpoint.checkpoint_lens`);
* resid causal tracing and the task's circuit hypothesis
  (:mod:`grokscope.patching.checkpoint`);
* every diagnosis the task declares (:mod:`grokscope.progress.diagnoses`).

Results are cached per step and analysis (:mod:`grokscope.series.cache`); one step's
results travel as a :class:`~grokscope.series.records.CheckpointRecord`, the run's as a
:class:`~grokscope.series.records.SeriesResult`.

Example:
    >>> from grokscope.runs.run import Run                              # doctest: +SKIP
    >>> s = analyse_series(Run.open("checkpoints/composition-small"), n=300)  # doctest: +SKIP
    >>> s.lens_mrr("bridge@r1").shape        # [step, layer]      # doctest: +SKIP
    >>> s.strength("h")[-1]                  # [layer, pos] at the last step  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grokscope.runs.run import MODEL_FILE, Run, read_safetensors
from grokscope.series.cache import AnalysisCache, Checkpoint, context
from grokscope.series.records import CheckpointRecord, SeriesResult

if TYPE_CHECKING:
    from grokscope.tasks.dataset import TaskDataset

DEFAULT_SPLIT = "train_inferred"
DEFAULT_EXAMPLES = 300
"""Examples per analysis (the paper's 300 training inferred facts)."""
DEFAULT_THRESHOLD = 0.5
"""Lens MRR above which a target counts as decodable (the circuit finder's threshold)."""


def check_split(dataset: TaskDataset, split: str) -> None:
    """Raise a ValueError naming the dataset's splits if ``split`` is not one of them."""
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(dataset.splits)}")


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class SeriesRequest:
    """What :func:`analyse_series` asks of every step analysis (the same at every step)."""

    split: str
    n: int | None
    seed: int
    threshold: float
    within_class: bool
    diagnoses: bool
    cache: AnalysisCache


@dataclass
class StepOutput:
    """One step analysis's share of a step: ``record`` fields of the
    :class:`CheckpointRecord`, and ``series`` fields of the :class:`SeriesResult` (the
    first step's values are kept)."""

    record: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)


StepFn = Callable[[Run, int, Checkpoint, SeriesRequest], StepOutput]


@dataclass(frozen=True)
class StepAnalysis:
    """A registered step analysis: its name, its order among the others, its function."""

    name: str
    order: int
    fn: StepFn


_STEP_ANALYSES: dict[str, StepAnalysis] = {}
BUILTIN_STEP_ANALYSES = (
    "grokscope.lens.checkpoint",
    "grokscope.patching.checkpoint",
    "grokscope.progress.diagnoses",
)
"""Modules that register the built-in step analyses (imported on first use, by name)."""


def register_step_analysis(name: str, order: int) -> Callable[[StepFn], StepFn]:
    """Decorator: run ``fn(run, step, checkpoint, request) -> StepOutput`` at every step.

    Analyses run in ascending ``order``; a name registered again replaces the old one.

    Example:
        >>> @register_step_analysis("my_norm", order=90)            # doctest: +SKIP
        ... def my_norm(run, step, ck, request):
        ...     return StepOutput(record={"extra": {"my_norm": 1.0}})
    """
    def deco(fn: StepFn) -> StepFn:
        _STEP_ANALYSES[name] = StepAnalysis(name, order, fn)
        return fn

    return deco


def step_analyses() -> list[StepAnalysis]:
    """The registered step analyses in order (the built-in ones loaded first)."""
    for module in BUILTIN_STEP_ANALYSES:
        importlib.import_module(module)
    return sorted(_STEP_ANALYSES.values(), key=lambda a: a.order)


# --------------------------------------------------------------------------- one checkpoint


def weight_norm(run: Run | str | os.PathLike[str], step: int, *, cache: AnalysisCache | bool = True) -> float:
    """Total weight norm ``sqrt(sum of squared parameters)`` of a checkpoint (cached).

    Read straight from ``model.safetensors`` (no model is built).

    Example:
        >>> weight_norm("runs/tiny", 0) > 0                          # doctest: +SKIP
        True
    """
    run, cache_ = context(run, cache)
    got = cache_.get(step, "weight_norm", {})
    if got is not None:
        return float(got)
    tensors = read_safetensors(run.checkpoint_path(step) / MODEL_FILE)
    total = sum(float(t.double().pow(2).sum()) for t in tensors.values() if t.is_floating_point())
    return float(cache_.put(step, "weight_norm", {}, math.sqrt(total)))



def _metrics_at(run: Run, metrics: list[dict[str, Any]], step: int) -> dict[str, Any]:
    for m in reversed(metrics):
        if m.get("step") == step:
            return m
    return run.checkpoint_meta(step).get("metrics") or {}


def parse_steps(spec: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """Steps to analyse: None or ``"all"`` -> every checkpoint; ``"N,M"`` or a list -> those.

    Raises:
        ValueError: a step that is not a checkpoint (the message lists the available ones).

    Example:
        >>> parse_steps("0,100", [0, 100, 200])
        [0, 100]
    """
    avail = list(available)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return avail
    if isinstance(spec, str):
        try:
            wanted = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"steps {spec!r}: give 'all' or comma-separated checkpoint steps such as 0,1000") from None
    else:
        wanted = [int(s) for s in spec]
    missing = [s for s in wanted if s not in avail]
    if missing or not wanted:
        raise ValueError(
            f"steps {missing or spec!r} are not checkpoints of this run; available steps: "
            f"{', '.join(map(str, avail)) or 'none'}"
        )
    return sorted(set(wanted))


def analyse_series(
    run: Run | str | os.PathLike[str],
    steps: str | Sequence[int] | None = None,
    *,
    split: str | None = None,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    within_class: bool = False,
    ood: bool = True,
    progress: bool = True,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
) -> SeriesResult:
    """Analyse every (or the given) checkpoint of a run: lens, tracing, circuit, norms.

    Every step uses the same examples (``n`` rows of ``split`` drawn with ``seed``).
    Results are cached per step and analysis (see :class:`AnalysisCache`); a model is
    loaded only for a step with a cache miss.

    Args:
        run: a :class:`Run` or its directory.
        steps: None / ``"all"``, ``"N,M,..."`` or a list of checkpoint steps.
        split: an inferred split (None: the task's ``default_split``, ``train_inferred`` as the
            paper for the paper's tasks).
        n: examples (None: the whole split).
        seed: sampling seed, fixed across steps.
        threshold: lens MRR threshold of the circuit finder.
        within_class: rank lens targets within their token class.
        ood: also run every diagnosis the task declares, per step.
        progress: show a tqdm bar over checkpoints.
        cache: True (the run's cache), False (no cache) or an :class:`AnalysisCache`.
        device: where models are loaded (None: CPU).

    Returns:
        A :class:`SeriesResult`.

    Raises:
        RunError: unreadable run; ValueError: unknown steps or split.
    """
    from tqdm.auto import tqdm

    from grokscope.runs.grokking import summarize_metrics

    run, cache_ = context(run, cache)
    chosen = parse_steps(steps, run.steps())
    if not chosen:
        raise ValueError(f"{run.path}: holds no checkpoint to analyse")
    dataset = run.dataset()
    if split is None:
        from grokscope.tasks.base import task_of

        split = task_of(dataset).default_split
    check_split(dataset, split)
    metrics = run.metrics()
    args = {"split": split, "n": n, "seed": seed, "threshold": threshold, "within_class": within_class}
    request = SeriesRequest(split=split, n=n, seed=seed, threshold=threshold, within_class=within_class,
                            diagnoses=ood, cache=cache_)
    analyses = step_analyses()
    hits0, misses0 = cache_.hits, cache_.misses
    checkpoints: list[CheckpointRecord] = []
    series_fields: dict[str, Any] = {}
    for step in tqdm(chosen, desc=f"analyse {run.path.name}", unit="ckpt", disable=not progress, dynamic_ncols=True):
        ck = Checkpoint(run, step, dataset, device)
        rec = _metrics_at(run, metrics, step)
        fields_: dict[str, Any] = {
            "step": step,
            "acc": dict(rec.get("acc", {})),
            "loss": dict(rec.get("loss", {})),
            "train_loss": rec.get("train_loss"),
            "weight_norm": weight_norm(run, step, cache=cache_),
        }
        for analysis in analyses:
            out = analysis.fn(run, step, ck, request)
            fields_.update(out.record)
            for key, value in out.series.items():
                series_fields.setdefault(key, value)
        checkpoints.append(CheckpointRecord(**fields_))
    return SeriesResult(
        run=str(run.path),
        run_name=run.config.name,
        task=dataset.task,
        args=args,
        steps=chosen,
        hook_names=list(series_fields.get("hook_names", [])),
        position_roles=list(series_fields.get("position_roles", [])),
        perturbations=list(series_fields.get("perturbations", [])),
        lens_targets=dict(series_fields.get("lens_targets", {})),
        lens_undecodable=dict(series_fields.get("lens_undecodable", {})),
        checkpoints=checkpoints,
        metrics=metrics,
        grokking=summarize_metrics(metrics),
        cache_hits=cache_.hits - hits0,
        cache_misses=cache_.misses - misses0,
    )
