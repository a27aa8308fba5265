"""Grid sweeps over run settings (the grokking summary lives in :mod:`grokscope.runs.grokking`).

A sweep trains one run per point of a grid (``key=v1,v2`` per axis, the override keys
of :meth:`grokscope.runs.config.RunConfig.override`) and writes one table: per run, when
train accuracy saturated, the test accuracy at that moment, when test ID reached 0.95,
the final accuracies and the wall time.

Every point is one :class:`PointJob`, and :func:`train_point` runs it: a ``grokscope
train`` subprocess (so a crash or a kill loses one run only), started fresh, or with
``--resume`` when the run directory already exists. The *backend* decides only where
``train_point`` executes: ``local`` runs ``jobs`` of them at a time on this machine,
``ray`` runs each as a Ray task (:mod:`grokscope.training.ray_backend`). The run
directories and the table are the same either way.

Resuming: a re-run sweep skips points whose run finished (its last checkpoint says
``done``) and resumes the others from their last checkpoint. A train process killed by
a signal is restarted from its last checkpoint (``PointJob.restarts`` times), so it
loses at most the steps since that checkpoint.

Example:
    >>> summarize_metrics([{"step": 0, "acc": {"train_inferred": 0.1, "test_inferred_iid": 0.0}},
    ...                    {"step": 100, "acc": {"train_inferred": 0.995, "test_inferred_iid": 0.4}},
    ...                    {"step": 200, "acc": {"train_inferred": 1.0, "test_inferred_iid": 0.96}}])["grokking_gap"]
    100
    >>> PointJob("wd=0.1", "sweeps/wd/wd=0.1", "modular-small", {"train.weight_decay": "0.1"}).command("python")[3:6]
    ['train', '--preset', 'modular-small']
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope.runs.grokking import TEST_GENERALIZED, TRAIN_SATURATED, summarize_metrics  # noqa: F401  (re-exported)
from grokscope.training.ray_backend import RayOptions, run_jobs_ray

BACKENDS = ("local", "ray")


def grid_points(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the axes' values, in order."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def point_name(point: dict[str, str]) -> str:
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "base"


COLUMNS = (
    "run", "groks", "train_saturated_step", "iid_at_saturation", "iid_generalized_step",
    "grokking_gap", "final_step", "final_train_inferred", "final_test_inferred_iid",
    "final_test_inferred_ood", "max_ood", "collapses", "wall_time", "status",
)


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class PointJob:
    """One grid point to train: plain data, so it travels to a Ray worker as it is.

    Attributes:
        name: the point's name (its run directory's name, :func:`point_name`).
        run_dir: the run directory (on a cluster: a path every node sees).
        preset: the preset the run starts from.
        overrides: ``key=value`` settings of this point (the base overrides included).
        threads: CPU threads of the train process (``OMP_NUM_THREADS``).
        restarts: how often a train process killed by a signal is restarted from its
            last checkpoint before the point counts as failed.
        deadline: ``time.time()`` after which a point not yet started is skipped.
    """

    name: str
    run_dir: str
    preset: str
    overrides: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    restarts: int = 2
    deadline: float | None = None

    def command(self, python: str) -> list[str]:
        """The ``grokscope train`` command line: ``--resume`` once the run directory exists."""
        run_dir = Path(self.run_dir)
        if (run_dir / "config.json").exists():
            return [python, "-m", "grokscope.cli", "train", "--resume", str(run_dir), "--quiet"]
        return [python, "-m", "grokscope.cli", "train", "--preset", self.preset, "--out", str(run_dir),
                "--quiet", *[f"{k}={v}" for k, v in self.overrides.items()]]


def run_state(run_dir: str | os.PathLike[str]) -> tuple[str, int | None, str | None]:
    """Where a point's run stands: ``(state, step, stop_reason)``.

    ``state`` is ``new`` (no run yet), ``started`` (a run without a resumable
    checkpoint), ``resumable`` (its last resumable checkpoint is at ``step``) or
    ``done`` (that checkpoint says training stopped, for ``stop_reason``).
    """
    from grokscope.runs.run import (
        CONFIG_FILE,
        TRAINER_STATE_FILE,
        Run,
        RunError,
    )
    from grokscope.runs.thinning import latest_resume_step

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return "new", None, None
    try:
        run = Run.open(run_dir)
    except RunError:
        return "started", None, None
    step = latest_resume_step(run)
    if step is None:
        return "started", None, None
    try:
        trainer = json.loads((run.checkpoint_path(step) / TRAINER_STATE_FILE).read_text())["trainer"]
    except (OSError, ValueError, KeyError):
        return "started", None, None
    if trainer.get("done"):
        return "done", step, trainer.get("stop_reason")
    return "resumable", step, None


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child before exec)
    """Linux: the train process gets SIGKILL when the process that started it dies, so a
    killed worker leaves no orphan that a retried task would race on the same run."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def train_point(job: PointJob) -> dict[str, Any]:
    """Train one grid point to its end in a ``grokscope train`` subprocess (its output
    appended to ``RUN_DIR.log``), restarting it from its last checkpoint when a signal
    kills it. Runs on whichever machine the backend chose (``sys.executable`` there).

    Returns:
        ``{"name", "status", "attempts", "resumed_from"}``; ``status`` is ``ok``,
        ``ok (finished before)``, ``failed (exit N)``, ``failed (killed by signal N)``
        or ``skipped (budget)``.
    """
    out: dict[str, Any] = {"name": job.name, "attempts": 0, "resumed_from": None}
    if job.deadline is not None and time.time() > job.deadline:
        return {**out, "status": "skipped (budget)"}
    state, step, _ = run_state(job.run_dir)
    if state == "done":
        return {**out, "status": "ok (finished before)"}
    out["resumed_from"] = step
    Path(job.run_dir).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
    while True:
        out["attempts"] += 1
        with open(f"{job.run_dir}.log", "ab") as log:
            log.write(f"[grokscope sweep] attempt {out['attempts']} on {os.uname().nodename} pid {os.getpid()}\n".encode())
            log.flush()
            rc = subprocess.run(job.command(sys.executable), stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None).returncode
        if rc == 0:
            return {**out, "status": "ok"}
        if rc < 0 and out["attempts"] <= job.restarts:
            continue  # killed by a signal: resume from the last checkpoint
        return {**out, "status": f"failed (killed by signal {-rc})" if rc < 0 else f"failed (exit {rc})"}


# --------------------------------------------------------------------------- the grid


def run_sweep(
    preset_name: str,
    axes: dict[str, list[str]],
    out: str | os.PathLike[str],
    *,
    budget_s: float | None = None,
    jobs: int = 1,
    base_overrides: dict[str, str] | None = None,
    backend: str = "local",
    ray: RayOptions | None = None,
    progress: bool = False,
    threads: int | None = None,
    restarts: int = 2,
) -> list[dict[str, Any]]:
    """Train every grid point of ``preset_name`` under ``out/`` and write ``out/sweep.csv``
    and ``out/sweep.md``.

    Args:
        preset_name: the preset every run starts from.
        axes: ``{override key: [values]}``; one run per combination.
        out: the sweep directory (one run directory per point, named by :func:`point_name`).
        budget_s: points not started within this many seconds are listed as ``skipped``.
        jobs: runs at a time with the ``local`` backend.
        base_overrides: settings of every run.
        backend: ``local`` (a pool of ``jobs`` on this machine) or ``ray`` (a Ray task
            per point, resources from ``ray``).
        ray: the Ray cluster and per-run resources (default :class:`RayOptions()`).
        progress: a bar over the grid and one line per finished point (stderr).
        threads: CPU threads per run (default: ``OMP_NUM_THREADS``, else 1; with Ray,
            the CPUs per run).
        restarts: restarts of a train process killed by a signal.

    Finished runs are not trained again when the sweep is re-run; unfinished ones resume
    from their last checkpoint.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    points = grid_points(axes)
    deadline = time.time() + budget_s if budget_s is not None else None
    ray = ray or RayOptions()
    if threads is None:
        threads = int(ray.cpus_per_run) if backend == "ray" else int(os.environ.get("OMP_NUM_THREADS", "1"))
    all_jobs = [PointJob(point_name(p), str(out / point_name(p)), preset_name, {**(base_overrides or {}), **p},
                         threads=max(1, threads), restarts=restarts, deadline=deadline) for p in points]
    status: dict[str, str] = {}
    todo = []
    for job in all_jobs:
        if run_state(job.run_dir)[0] == "done":
            status[job.name] = "ok (finished before)"
        else:
            todo.append(job)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(all_jobs), initial=len(all_jobs) - len(todo), desc="sweep", unit="run",
               disable=not progress, dynamic_ncols=True)

    def finished(result: dict[str, Any]) -> None:
        status[result["name"]] = result["status"]
        bar.update(1)
        if progress:
            bar.write(f"[{bar.n}/{bar.total}] " + progress_line(result, out / result["name"]), file=sys.stderr)

    try:
        if backend == "ray":
            run_jobs_ray(train_point, todo, ray, finished)
        else:
            run_jobs_local(todo, jobs, finished)
    finally:
        bar.close()
    rows = []
    for p in points:
        name = point_name(p)
        metrics = read_metrics(out / name / "metrics.jsonl")
        rows.append({"run": name, **p, **summarize_metrics(metrics), "status": status.get(name, "ok")})
    write_table(rows, out, list(axes))
    return rows


def run_jobs_local(jobs: list[PointJob], workers: int, on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run :func:`train_point` for every job, ``workers`` at a time on this machine, in
    grid order; ``on_done`` gets each result as it finishes."""
    results = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = {pool.submit(train_point, j): j for j in jobs}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as e:  # an OSError starting the process: this point fails, the sweep goes on
                res = {"name": futures[fut].name, "status": f"failed ({type(e).__name__}: {e})"}
            results.append(res)
            on_done(res)
    finally:  # on Ctrl-C start no more points (the running ones save a checkpoint and stop)
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def progress_line(result: dict[str, Any], run_dir: Path) -> str:
    """One line for a finished point: its status, last step, accuracies and grokking times."""
    s = summarize_metrics(read_metrics(run_dir / "metrics.jsonl"))
    acc = " ".join(f"{k[len('final_'):].replace('_inferred', '')} {v:.3f}" for k, v in s.items()
                   if k.startswith("final_") and k != "final_step" and isinstance(v, float))
    extra = f", resumed from step {result['resumed_from']}" if result.get("resumed_from") else ""
    extra += f", {result['attempts']} attempts" if result.get("attempts", 0) > 1 else ""
    def at(v: Any) -> str:
        return "never" if v is None else f"step {v}"

    return (f"{result['name']}: {result['status']}{extra}; step {s.get('final_step')}; {acc}; "
            f"train >= 0.99 {at(s['train_saturated_step'])}, test ID >= 0.95 {at(s['iid_generalized_step'])}")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none if it is missing; unreadable lines skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"task.p": 113, "train.lr": 0.003, ...}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


# Settings that differ between runs without changing what is learned.
_NOT_SETTINGS = ("name", "train.max_time_s", "train.device", "train.threads", "train.autocast")


def summarize_runs(configs: list[dict[str, Any]], metrics: list[list[dict[str, Any]]],
                   names: list[str], statuses: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Grokking summaries of finished runs, with the settings in which their configs differ.

    Args:
        configs: each run's config as a dict (``RunConfig.to_dict()``).
        metrics: each run's evaluation records.
        names: each run's label in the table.
        statuses: each run's ``status`` cell (default ``ok``).

    Returns:
        ``(rows, axis_keys)``: one :func:`summarize_metrics` row per run holding also the
        value of every dotted config key (``task.phi``) that is not the same in all runs,
        and those keys, for :func:`markdown_table`.

    Example:
        >>> rows, keys = summarize_runs([{"task": {"phi": 9.0}}, {"task": {"phi": 18.0}}], [[], []], ["a", "b"])
        >>> keys, rows[1]["task.phi"]
        (['task.phi'], 18.0)
    """
    flat = [flatten_config(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    axis_keys = [k for k in keys if k not in _NOT_SETTINGS and len({json.dumps(f.get(k)) for f in flat}) > 1]
    statuses = statuses if statuses is not None else ["ok"] * len(names)
    rows = [{"run": n, **{k: f.get(k) for k in axis_keys}, **summarize_metrics(m), "status": st}
            for n, f, m, st in zip(names, flat, metrics, statuses)]
    return rows, axis_keys


def markdown_table(rows: list[dict[str, Any]], axis_keys: list[str], columns: tuple[str, ...] = COLUMNS) -> str:
    """One markdown table: the run, its axis values, then ``columns``."""
    cols = ["run", *axis_keys, *[c for c in columns if c != "run"]]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], out: Path, axis_keys: list[str]) -> None:
    cols = ["run", *axis_keys, *[c for c in COLUMNS if c != "run"]]
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "sweep.md").write_text(markdown_table(rows, axis_keys))
