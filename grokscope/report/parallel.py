"""A cold report on several cores: every checkpoint's analyses run in worker processes first.

The report's phases (:func:`grokscope.series.engine.analyse_series`, then
:func:`grokscope.discovery.series.discovery_series`) read and write the run's analysis
cache one checkpoint after another. With ``workers > 1``, :func:`prefill` first runs the
same per-checkpoint calls, with the same arguments, in ``workers`` processes of one
thread each (spawned, so no thread pool is forked); each writes its results into the
cache, and the phases that follow find them there. The content is the cache's, so it
is the same whichever way it was filled.

Jobs are sent longest first: the final checkpoint's discovery (which also patches each
of the circuit's edges alone), then the other discoveries, then the analyses. A finished
job leaves a marker in the cache (``prefill-analyse`` / ``prefill-discover``, keyed like
any entry: step, arguments, checkpoint, versions) holding the warnings it raised; a job
whose marker is there is not run again, but its warnings are re-emitted. A warm report
therefore starts no process at all.

Example:
    >>> prefill(run, run.steps(), workers=2)                       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from grokscope.runs.run import Run


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _recording(fn: Any, *args: Any, **kwargs: Any) -> list[tuple[type[Warning], str]]:
    """Run ``fn`` and return its warnings (category, message), for the parent to re-emit."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        fn(*args, **kwargs)
    return [(w.category, str(w.message)) for w in caught]


def _analyse(path: str, step: int, kw: dict[str, Any]) -> tuple[str, list[tuple[type[Warning], str]]]:
    from grokscope.series.engine import analyse_series

    return f"analyse step {step}", _recording(analyse_series, path, [step], progress=False, cache=True, **kw)


def _discover(
    path: str, step: int, split: str, measure_edges: int, hypothesis: bool, kw: dict[str, Any]
) -> tuple[str, list[tuple[type[Warning], str]]]:
    from grokscope.discovery.series import checkpoint_discovery
    from grokscope.patching.checkpoint import checkpoint_circuit

    def both() -> None:
        doc = checkpoint_discovery(path, step, split=split, measure_edges=measure_edges, cache=True, **kw)
        if hypothesis and not doc.get("empty"):
            checkpoint_circuit(path, step, split=split, n=kw["n"], seed=kw["seed"], cache=True, device=kw["device"])

    return f"discover {split} step {step}", _recording(both)


def _category(name: str) -> type[Warning]:
    """The warning class named ``module:qualname`` (UserWarning if it cannot be found)."""
    module, _, qual = name.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return UserWarning
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else UserWarning


def _marker(job: tuple[Any, ...]) -> tuple[int, str, dict[str, Any]]:
    """(step, cache name, arguments) of a job's marker."""
    fn, _, step, *rest = job
    return step, f"prefill-{fn.__name__.lstrip('_')}", {"args": rest}


def prefill(
    run: Run,
    steps: Sequence[int],
    *,
    workers: int,
    analysis: dict[str, Any],
    discovery_splits: Sequence[str] = (),
    hypothesis: bool = True,
    n: int | None,
    seed: int,
    device: str | None = None,
    progress: bool = True,
) -> int:
    """Run every checkpoint's analyses (and discoveries) in ``workers`` processes.

    Args:
        run: the run (its cache is filled).
        steps: the checkpoints the report analyses.
        workers: processes (each one thread).
        analysis: :func:`analyse_series` keyword arguments besides the step (``split``,
            ``n``, ``seed``, ``threshold``, ``device``): the same as the report's.
        discovery_splits: splits :func:`discovery_series` will discover on (none: no
            discovery jobs); the hypothesis circuit is prefilled for those other than
            ``analysis["split"]`` (the analysis computes that one).
        hypothesis: whether discovery measures the hypothesis circuit's coverage (a task
            without a hypothesis has none).
        n, seed, device: discovery's examples and device.
        progress: a tqdm bar over the jobs, naming each finished one.

    Returns:
        The number of jobs run (those already done, by their markers, are not).
    """
    from tqdm.auto import tqdm

    from grokscope.discovery.series import TOP_EDGES
    from grokscope.series.cache import AnalysisCache

    steps = sorted(steps)
    if not steps:
        return 0  # nothing to run: the series says why (a run without checkpoints)
    kw = {"n": n, "seed": seed, "device": device}
    jobs: list[tuple[Any, ...]] = []
    for split in discovery_splits:
        hyp = hypothesis and split != analysis.get("split")
        jobs.append((_discover, str(run.path), steps[-1], split, 200, hyp, kw))
    for split in discovery_splits:
        hyp = hypothesis and split != analysis.get("split")
        jobs += [(_discover, str(run.path), s, split, TOP_EDGES, hyp, kw) for s in reversed(steps[:-1])]
    jobs += [(_analyse, str(run.path), s, analysis) for s in reversed(steps)]
    cache = AnalysisCache(run)
    todo = []
    for job in jobs:
        done_before = cache.get(*_marker(job))
        if done_before is None:
            todo.append(job)
            continue
        for category, message in done_before:
            warnings.warn(message, _category(category), stacklevel=2)
    jobs = todo
    if not jobs:
        return 0
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(jobs), desc=f"analyse + discover ({workers} processes)", unit="job",
               disable=not progress, dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending = {pool.submit(job[0], *job[1:]): job for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                name, caught = fut.result()
                for category, message in caught:
                    warnings.warn(message, category, stacklevel=2)
                cache.put(*_marker(job), [[f"{c.__module__}:{c.__qualname__}", m] for c, m in caught])
                bar.set_postfix_str(name, refresh=False)
                bar.update(1)
    bar.close()
    return len(jobs)
