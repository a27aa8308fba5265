"""Causal tracing and the task's circuit hypothesis at one checkpoint of a run, cached,
and their share of the series engine.

:func:`checkpoint_trace` and :func:`checkpoint_circuit` read one step; importing this
module registers them with :mod:`grokscope.series.engine` as the ``trace`` and
``circuit`` step analyses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from grokscope.lens.checkpoint import lens_objects
from grokscope.patching.hypothesis import build_circuit
from grokscope.patching.tracing import SITE_KINDS, TraceResult, make_counterfactuals, trace
from grokscope.runs.run import Run
from grokscope.series.cache import AnalysisCache, Checkpoint, cached, context
from grokscope.series.engine import (
    DEFAULT_EXAMPLES,
    DEFAULT_SPLIT,
    DEFAULT_THRESHOLD,
    SeriesRequest,
    StepOutput,
    check_split,
    register_step_analysis,
)
from grokscope.tasks.base import task_of


def _trace_object(ck: Checkpoint, split: str, n: int | None, seed: int, site: str, perturbations: Sequence[str]) -> TraceResult:
    key = f"trace:{split}:{n}:{seed}:{site}:{','.join(perturbations)}"
    if key not in ck.memo:
        cfs = make_counterfactuals(ck.dataset, split, n=n, seed=seed, perturbations=perturbations)
        ck.memo[key] = trace(ck.model, cfs, site=site)
    return ck.memo[key]


def checkpoint_trace(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    site: str = "resid",
    perturbations: Sequence[str] | None = None,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: Checkpoint | None = None,
) -> dict[str, Any]:
    """Causal tracing of one checkpoint at one site kind (cached).

    Args:
        site: ``resid``, ``attn``, ``mlp`` or ``head``.
        perturbations: a subset of the task's (default all, e.g. ``h, r1, r2``).

    Returns:
        :meth:`TraceResult.to_dict` with per-example values (the examples' clean and
        counterfactual token ids, answers, per-site changed flags and logit differences).

    Example:
        >>> d = checkpoint_trace("runs/tiny", 1500, perturbations=["h"])   # doctest: +SKIP
        >>> d["strength"][0]       # [layer][pos] under h'                    # doctest: +SKIP
    """
    run, cache_ = context(run, cache)
    if site not in SITE_KINDS:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITE_KINDS)}")
    # the dataset names the perturbations; a miss reuses it (one read of RUN/data)
    _ck = _ck or Checkpoint(run, step, run.dataset(), device)
    allowed = task_of(_ck.dataset).perturbations
    perts = list(perturbations) if perturbations is not None else list(allowed)
    bad = [p for p in perts if p not in allowed]
    if bad or not perts:
        raise ValueError(f"unknown perturbation(s) {bad or perts}; choose from {', '.join(allowed)}")
    args = {"split": split, "n": n, "seed": seed, "site": site, "perturbations": perts}
    def compute(ck: Checkpoint) -> dict[str, Any]:
        check_split(ck.dataset, split)
        return _trace_object(ck, split, n, seed, site, perts).to_dict(per_example=True)

    return cached(run, cache_, step, "trace", args, device, _ck, compute)


def checkpoint_circuit(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    within_class: bool = False,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: Checkpoint | None = None,
) -> dict[str, Any]:
    """The task's circuit hypothesis checked on one checkpoint (:func:`build_circuit`, cached).

    Returns:
        :meth:`LocatedCircuit.to_dict`: resolve layers, nodes (hook names, causal strengths,
        MRR), weighted edges, and the lens/tracing evidence; plus ``examples`` (the
        split, the sampled rows and their input token ids).
    """
    run, cache_ = context(run, cache)
    args = {"split": split, "n": n, "seed": seed, "threshold": threshold, "within_class": within_class}
    def compute(ck: Checkpoint) -> dict[str, Any]:
        check_split(ck.dataset, split)
        lens, rows = lens_objects(ck, split, n, seed, within_class)
        task = task_of(ck.dataset)
        tracing = _trace_object(ck, split, n, seed, "resid", task.perturbations)
        circuit = build_circuit(task, lens, tracing, threshold=threshold, step=step)
        examples = {"split": split, "example_index": rows.tolist(),
                    "inputs": ck.dataset.splits[split].input_ids[rows].tolist()}
        return {**circuit.to_dict(), "examples": examples}

    return cached(run, cache_, step, "circuit", args, device, _ck, compute)


@register_step_analysis("trace", order=20)
def _trace_step(run: Run, step: int, ck: Checkpoint, req: SeriesRequest) -> StepOutput:
    perts = list(task_of(ck.dataset).perturbations)
    tr = checkpoint_trace(run, step, split=req.split, n=req.n, seed=req.seed, site="resid", perturbations=perts,
                          cache=req.cache, _ck=ck)
    return StepOutput(
        record={
            "strength": dict(zip(tr["perturbations"], tr["strength"])),
            "logit_diff": dict(zip(tr["perturbations"], tr["logit_diff"])),
            "n_examples": tr["n_examples"],
            "clean_accuracy": tr["clean_accuracy"],
        },
        series={"position_roles": list(tr["position_roles"]), "perturbations": list(tr["perturbations"])},
    )


@register_step_analysis("circuit", order=30)
def _circuit_step(run: Run, step: int, ck: Checkpoint, req: SeriesRequest) -> StepOutput:
    circ = checkpoint_circuit(run, step, split=req.split, n=req.n, seed=req.seed, threshold=req.threshold,
                              within_class=req.within_class, cache=req.cache, _ck=ck)
    return StepOutput(record={"circuit": {k: v for k, v in circ.items() if k not in ("mrr", "strength", "examples")}})
