"""What every ``grokscope`` command shares: the user error, tables, run and step arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _print_table(rows: list[tuple[str, Any]], title: str | None = None) -> None:
    if title:
        typer.echo(title)
    width = max(len(str(k)) for k, _ in rows) if rows else 0
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.4g}"
        typer.echo(f"  {str(k).ljust(width)}  {v}")


def _analysis_run(run_dir: Path):
    from grokscope.runs.run import Run

    return Run.open(run_dir)


def _analysis_steps(run, step: int | None, all_steps: bool) -> list[int]:
    """``--step N`` / ``--all`` / the latest checkpoint, as a list of steps."""
    if step is not None and all_steps:
        raise UserError("give either --step N or --all, not both")
    if all_steps:
        steps = run.steps()
        if not steps:
            raise UserError(f"{run.path}: holds no checkpoint yet")
        return steps
    if step is not None and step not in run.steps():
        avail = ", ".join(map(str, run.steps())) or "none"
        raise UserError(f"--step {step} is not a checkpoint of {run.path}; allowed values: {avail}")
    return [run.resolve_step(step)]


def _check_examples(examples: int) -> None:
    if examples < 1:
        raise UserError(f"--examples must be a positive number of examples (e.g. 300), got {examples}")


def _split_or_default(run, split: str | None) -> str:
    """``split``, or (None) the task's analysis split (``train_inferred`` for the paper's tasks)."""
    if split is not None:
        return split
    from grokscope.tasks import get_task

    return get_task(run.config.task.task).default_split


def _check_split_arg(run, split: str):
    """``split`` must be a probe split (or the task's default analysis split) with the
    layout of the run's task's analysis; returns the run's dataset (read once)."""
    from grokscope.tasks import task_of

    ds = run.dataset()
    task = task_of(ds)
    names = [*ds.probe_splits, *([task.default_split] if task.default_split not in ds.probe_splits else [])]
    allowed = [n for n in names if n in ds.splits and set(ds.splits[n].roles) == set(task.inferred_roles)]
    if split not in allowed:
        raise UserError(f"--split {split!r} is not an inferred probe split of this {ds.task} run; "
                        f"allowed values: {', '.join(allowed)}")
    return ds


def _grid(title: str, row_labels: list[str], col_labels: list[str], values: list[list[Any]]) -> None:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in row] for row in values]
    typer.echo(title)
    w0 = max([len(r) for r in row_labels] + [5])
    widths = [max([len(c)] + [len(row[j]) for row in cells if j < len(row)]) for j, c in enumerate(col_labels)]
    typer.echo("  " + " " * w0 + "  " + "  ".join(c.rjust(w) for c, w in zip(col_labels, widths)))
    for label, row in zip(row_labels, cells):
        typer.echo(f"  {label.ljust(w0)}  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))


def _write_json(path: Path, doc: Any) -> None:
    from grokscope.runs.run import atomic_write_bytes

    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
    typer.echo(f"JSON written to {path}")
