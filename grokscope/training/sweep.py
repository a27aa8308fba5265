"""Grid sweeps over run settings (the grokking summary lives in :mod:`grokscope.runs.grokking`).

A sweep trains one run per point of a grid (``key=v1,v2`` per axis, the override keys
of :meth:`grokscope.runs.config.RunConfig.override`), one after the other within a time
budget (or ``jobs`` at a time on a machine with cores to spare), and writes one table:
per run, when train accuracy saturated, the test accuracy at that moment, when test ID
reached 0.95, the final accuracies and the wall time.

Example:
    >>> summarize_metrics([{"step": 0, "acc": {"train_inferred": 0.1, "test_inferred_iid": 0.0}},
    ...                    {"step": 100, "acc": {"train_inferred": 0.995, "test_inferred_iid": 0.4}},
    ...                    {"step": 200, "acc": {"train_inferred": 1.0, "test_inferred_iid": 0.96}}])["grokking_gap"]
    100
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grokscope.runs.grokking import TEST_GENERALIZED, TRAIN_SATURATED, summarize_metrics  # noqa: F401  (re-exported)


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


def run_sweep(
    preset_name: str,
    axes: dict[str, list[str]],
    out: str | os.PathLike[str],
    *,
    budget_s: float | None = None,
    jobs: int = 1,
    base_overrides: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Train every grid point of ``preset_name`` under ``out/`` and write ``out/sweep.csv``
    and ``out/sweep.md``.

    Each run is a ``grokscope train`` subprocess (so a crash or a kill loses one run
    only); finished runs are not trained again when the sweep is re-run. Points not
    started before ``budget_s`` elapses are listed as ``skipped``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    points = grid_points(axes)
    pending = list(points)
    running: list[tuple[dict[str, str], subprocess.Popen[bytes], Path]] = []
    status: dict[str, str] = {}
    while pending or running:
        while pending and len(running) < jobs:
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                for p in pending:
                    status[point_name(p)] = "skipped (budget)"
                pending = []
                break
            p = pending.pop(0)
            name = point_name(p)
            run_dir = out / name
            if (run_dir / "config.json").exists():
                cmd = [sys.executable, "-m", "grokscope.cli", "train", "--resume", str(run_dir), "--quiet"]
            else:
                ov = {**(base_overrides or {}), **p}
                cmd = [sys.executable, "-m", "grokscope.cli", "train", "--preset", preset_name,
                       "--out", str(run_dir), "--quiet", *[f"{k}={v}" for k, v in ov.items()]]
            log = open(out / f"{name}.log", "ab")
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            running.append((p, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), run_dir))
        still = []
        for p, proc, run_dir in running:
            if proc.poll() is None:
                still.append((p, proc, run_dir))
            else:
                status[point_name(p)] = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        running = still
        if running:
            time.sleep(1.0)
    rows = []
    for p in points:
        name = point_name(p)
        metrics = _read_metrics(out / name / "metrics.jsonl")
        row = {"run": name, **p, **summarize_metrics(metrics), "status": status.get(name, "ok")}
        rows.append(row)
    write_table(rows, out, list(axes))
    return rows


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
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
    flat = [_flatten(c) for c in configs]
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
