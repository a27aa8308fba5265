"""The records of a checkpoint series: one :class:`CheckpointRecord` per analysed step,
one :class:`SeriesResult` per run. Plain data with ``to_dict`` / ``from_dict``, a short
``__repr__`` and a small HTML table in Jupyter.

The measures over steps (``SeriesResult.measures()``) are computed by whichever module
registered itself with :func:`register_series_measure` (``grokscope.progress.measures``):
the records never import the analyses above them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from grokscope import __version__
from grokscope.display import Summarized

_SERIES_MEASURE: list[Callable[[Any], dict[str, Any]]] = []
SERIES_MEASURE_MODULE = "grokscope.progress.measures"
"""The module that registers the built-in series measure (loaded on first use)."""


def register_series_measure(fn: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """Make ``fn(series) -> dict`` what :meth:`SeriesResult.measures` returns (the last one wins)."""
    _SERIES_MEASURE[:] = [fn]
    return fn


def series_measure() -> Callable[[Any], dict[str, Any]]:
    """The registered series measure (the built-in one is loaded on first use)."""
    if not _SERIES_MEASURE:
        importlib.import_module(SERIES_MEASURE_MODULE)
    return _SERIES_MEASURE[0]


@dataclass(repr=False)
class CheckpointRecord(Summarized):
    """Every measure of one analysed checkpoint (JSON-ready values).

    Attributes:
        step: the checkpoint step.
        acc, loss: split -> value, from metrics.jsonl.
        train_loss: the training loss logged at that step.
        weight_norm: ``sqrt(sum of squared parameters)``.
        lens: lens target -> MRR per layer; lens_recall1: recall@1 per layer.
        top_tokens: ``tokens`` and ``share`` per ``[layer][pos]``.
        strength, logit_diff: perturbation -> ``[layer][pos]`` resid tracing.
        n_examples, clean_accuracy: per perturbation.
        circuit: :meth:`LocatedCircuit.to_dict` without its evidence copies.
        diagnoses: diagnosis name -> its result (the task's declared diagnoses).
        extra: results other analyses attach to the step (e.g. discovery).
    """

    step: int
    acc: dict[str, Any]
    loss: dict[str, Any]
    train_loss: float | None
    weight_norm: float
    lens: dict[str, list[float]] = field(default_factory=dict)
    lens_recall1: dict[str, list[float]] = field(default_factory=dict)
    top_tokens: dict[str, Any] = field(default_factory=dict)
    strength: dict[str, Any] = field(default_factory=dict)
    logit_diff: dict[str, Any] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)
    clean_accuracy: dict[str, float] = field(default_factory=dict)
    circuit: dict[str, Any] = field(default_factory=dict)
    diagnoses: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


    def summary(self) -> dict[str, Any]:
        """Step, accuracies, weight norm, lens targets."""
        return {"step": self.step, "acc": {k: round(v, 3) for k, v in self.acc.items() if v is not None},
                "weight_norm": round(self.weight_norm, 2), "lens_targets": list(self.lens)}

    @property
    def ood(self) -> dict[str, Any] | None:
        """The first declared diagnosis (the OOD diagnosis of the paper's tasks), or None."""
        return next(iter(self.diagnoses.values()), None)

    def __getitem__(self, key: str) -> Any:
        """Dict-style reads (``record["lens"]``) for code written against the old dicts."""
        if key == "ood":
            return self.ood
        if key in self.extra:
            return self.extra[key]
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["ood"] = self.ood
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointRecord:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "diagnoses" not in d and d.get("ood") is not None:
            kw["diagnoses"] = {"ood": d["ood"]}
        return cls(**kw)


@dataclass(repr=False)
class SeriesResult(Summarized):
    """Every measure at every analysed checkpoint of a run (plain data).

    Attributes:
        run: the run directory.
        run_name: the run config's name.
        task: the task's name.
        args: the analysis arguments (split, n, seed, threshold, within_class).
        steps: analysed checkpoint steps, ascending.
        hook_names: hook of every residual state ``S[l]``, ``l = 0..L``.
        position_roles: role name of every input position.
        perturbations: the tracing perturbations (axis 0 of every tracing table).
        lens_targets: lens target name -> the position it is read at.
        lens_undecodable: lens target name -> why this model cannot decode it
            (:attr:`grokscope.lens.logit.LensResult.undecodable`); plots leave it out.
        checkpoints: one :class:`CheckpointRecord` per step.
        metrics: every record of metrics.jsonl (for the training curves).
        grokking: :func:`grokscope.runs.grokking.summarize_metrics` of the metrics.
        grokscope_version: the version that computed it.
        cache_hits, cache_misses: cache lookups of this pass (not part of to_dict).

    Example:
        >>> s = analyse_series("runs/tiny", n=100, progress=False)    # doctest: +SKIP
        >>> s.steps, s.lens_mrr("bridge@r1")[-1]                      # doctest: +SKIP
    """

    run: str
    run_name: str
    task: str
    args: dict[str, Any]
    steps: list[int]
    hook_names: list[str]
    position_roles: list[str]
    perturbations: list[str]
    lens_targets: dict[str, int]
    checkpoints: list[CheckpointRecord]
    metrics: list[dict[str, Any]]
    grokking: dict[str, Any]
    grokscope_version: str = __version__
    lens_undecodable: dict[str, str] = field(default_factory=dict)
    cache_hits: int = field(default=0, compare=False)
    cache_misses: int = field(default=0, compare=False)


    def summary(self) -> dict[str, Any]:
        """Run, task, steps, examples, and when train saturated and test rose."""
        g = self.grokking or {}
        return {"run": self.run_name, "task": self.task, "steps": len(self.steps),
                "first_last": [self.steps[0], self.steps[-1]] if self.steps else [], "examples": self.args.get("n"),
                "train_saturated": g.get("train_saturated_step"), "test_generalized": g.get("iid_generalized_step"), "groks": g.get("groks")}

    @property
    def n_layers(self) -> int:
        """``L``: the number of blocks (``len(hook_names) - 1``)."""
        return len(self.hook_names) - 1

    def checkpoint(self, step: int) -> CheckpointRecord:
        """The record of ``step``."""
        for c in self.checkpoints:
            if c["step"] == step:
                return c
        raise KeyError(f"step {step} was not analysed; steps: {self.steps}")

    def lens_mrr(self, target: str) -> np.ndarray:
        """``[step, layer]`` MRR of one lens target."""
        if target not in self.lens_targets:
            raise KeyError(f"no lens target {target!r}; targets: {', '.join(self.lens_targets)}")
        return np.array([c["lens"][target] for c in self.checkpoints], dtype=float)

    def strength(self, perturbation: str) -> np.ndarray:
        """``[step, layer, pos]`` resid causal strength under one perturbation."""
        if perturbation not in self.perturbations:
            raise KeyError(f"no perturbation {perturbation!r}; perturbations: {', '.join(self.perturbations)}")
        return np.array([c["strength"][perturbation] for c in self.checkpoints], dtype=float)

    def acc(self, split: str) -> list[float | None]:
        """Accuracy of ``split`` at every analysed step (None where not evaluated)."""
        return [c["acc"].get(split) for c in self.checkpoints]

    def measures(self) -> dict[str, Any]:
        """Time series of the circuit's measures (the registered series measure:
        :func:`grokscope.progress.measures.circuit_measures`)."""
        return series_measure()(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the cache counters are left out)."""
        return {
            "run": self.run,
            "run_name": self.run_name,
            "task": self.task,
            "args": dict(self.args),
            "steps": list(self.steps),
            "hook_names": list(self.hook_names),
            "position_roles": list(self.position_roles),
            "perturbations": list(self.perturbations),
            "lens_targets": dict(self.lens_targets),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "metrics": self.metrics,
            "grokking": self.grokking,
            "grokscope_version": self.grokscope_version,
            "lens_undecodable": dict(self.lens_undecodable),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeriesResult:
        keys = ("run", "run_name", "task", "args", "steps", "hook_names", "position_roles", "perturbations",
                "lens_targets", "checkpoints", "metrics", "grokking", "grokscope_version", "lens_undecodable")
        kw = {k: d[k] for k in keys if k in d}
        kw["checkpoints"] = [CheckpointRecord.from_dict(c) for c in kw.get("checkpoints", [])]
        return cls(**kw)
