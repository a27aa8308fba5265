"""Phases of a sweep's runs: which of memorizing, grokking, comprehension or confusion
each run was in, and the grid of them over two settings (a phase diagram).

The rule (:func:`classify_phase`), from a run's evaluation records, with
``t_train`` the first evaluated step where train accuracy (``train_inferred``) is
>= 0.99 and ``t_test`` the first where test ID accuracy (``test_inferred_iid``) is
>= 0.95 (the thresholds of :mod:`grokscope.runs.grokking`):

- **confusion**: train accuracy never reached 0.99 (``t_train`` is None);
- **memorizing**: train reached 0.99, test ID never reached 0.95;
- **grokking**: both, test ID came late, ``t_test > 1.5 * t_train``, and it was still
  low when train fitted: test ID at ``t_train`` <= 0.6 (so the cells that grok are the
  runs whose ``groks`` is true in the sweep table, :mod:`grokscope.runs.grokking`);
- **comprehension**: both, otherwise: test ID reached 0.95 by ``1.5 * t_train``, or it
  was already above 0.6 when train fitted (it generalised while it fitted).

These are the four phases of Liu et al. ("Towards Understanding Grokking: An Effective
Theory of Representation Learning", NeurIPS 2022), measured within the steps the run
trained: a run that stopped at its step or time limit while memorizing may still grok
later, and a ``confusion`` run may still fit.

Example:
    >>> recs = [{"step": 100, "acc": {"train_inferred": 1.0, "test_inferred_iid": 0.2}},
    ...         {"step": 1000, "acc": {"train_inferred": 1.0, "test_inferred_iid": 0.97}}]
    >>> classify_phase(recs)
    'grokking'
    >>> classify_phase(recs[:1])
    'memorizing'
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope.runs.grokking import (
    GROKS_IID_AT_SATURATION,
    TEST_GENERALIZED,
    TRAIN_SATURATED,
    summarize_metrics,
)
from grokscope.training.sweep import flatten_config, read_metrics

PHASES = ("comprehension", "grokking", "memorizing", "confusion")
"""The phase labels, from the best generalising to the worst fitting."""
GROK_RATIO = 1.5
"""A run groks when test ID reaches its threshold after this many times the step train
accuracy reached its own."""
COLOR_QUANTITIES: dict[str, str] = {
    "phase": "the phase (one colour per phase)",
    "time_to_grok": "first step with test ID >= 0.95",
    "gap": "steps from train >= 0.99 to test ID >= 0.95",
    "final_iid": "final test ID accuracy",
    "final_ood": "final test OOD accuracy",
}
"""What a phase diagram can colour its cells by."""


def classify_phase(
    metrics: list[dict[str, Any]],
    *,
    train_threshold: float = TRAIN_SATURATED,
    test_threshold: float = TEST_GENERALIZED,
    grok_ratio: float = GROK_RATIO,
    grok_iid_max: float = GROKS_IID_AT_SATURATION,
) -> str | None:
    """The phase of one run from its evaluation records (the rule in the module docstring).

    Args:
        metrics: ``metrics.jsonl`` records, in step order (``step``, ``acc``).
        train_threshold: train accuracy that counts as fitted (0.99).
        test_threshold: test ID accuracy that counts as generalised (0.95).
        grok_ratio: grokking needs ``t_test > grok_ratio * t_train`` (1.5).
        grok_iid_max: ... and test ID at ``t_train`` at most this (0.6).

    Returns:
        One of :data:`PHASES`, or None for a run with no records.

    Example:
        >>> classify_phase([{"step": 200, "acc": {"train_inferred": 0.995, "test_inferred_iid": 0.96}}])
        'comprehension'
        >>> classify_phase([{"step": 200, "acc": {"train_inferred": 0.5, "test_inferred_iid": 0.1}}])
        'confusion'
    """
    if not metrics:
        return None
    s = summarize_metrics(metrics, train_threshold, test_threshold)
    t_train, t_test = s["train_saturated_step"], s["iid_generalized_step"]
    if t_train is None:
        return "confusion"
    if t_test is None:
        return "memorizing"
    late = t_test > grok_ratio * t_train
    low_at_fit = s["iid_at_saturation"] is not None and s["iid_at_saturation"] <= grok_iid_max
    return "grokking" if late and low_at_fit else "comprehension"


def phase_cell(metrics: list[dict[str, Any]], **rule: float) -> dict[str, Any]:
    """A run's phase with the numbers a phase diagram shows: ``phase``,
    ``train_saturated_step``, ``time_to_grok`` (= ``iid_generalized_step``), ``gap``,
    ``final_step``, ``final_iid``, ``final_ood``."""
    s = summarize_metrics(metrics, rule.get("train_threshold", TRAIN_SATURATED),
                          rule.get("test_threshold", TEST_GENERALIZED))
    t_train, t_test = s["train_saturated_step"], s["iid_generalized_step"]
    return {
        "phase": classify_phase(metrics, **rule),
        "train_saturated_step": t_train,
        "iid_at_saturation": s["iid_at_saturation"],
        "time_to_grok": t_test,
        "gap": t_test - t_train if t_train is not None and t_test is not None else None,
        "final_step": s.get("final_step"),
        "final_iid": s.get("final_test_inferred_iid"),
        "final_ood": s.get("final_test_inferred_ood"),
    }


@dataclass
class PhaseGrid:
    """A sweep's runs on a grid of two settings, each with its phase.

    Attributes:
        x_key: the dotted config key along x (``task.train_fraction``).
        y_key: the dotted config key along y (``train.weight_decay``).
        color: what colours the cells (a key of :data:`COLOR_QUANTITIES`).
        cells: one dict per run: ``x``, ``y``, ``run`` and :func:`phase_cell`'s keys.
        grok_ratio: the rule's ratio (:data:`GROK_RATIO`).
        test_threshold: the test ID accuracy that counts as generalised (0.95; the tree task's
            issue asks 0.9).
    """

    x_key: str
    y_key: str
    color: str
    cells: list[dict[str, Any]] = field(default_factory=list)
    grok_ratio: float = GROK_RATIO
    test_threshold: float = TEST_GENERALIZED

    @property
    def x_values(self) -> list[Any]:
        return _sorted_unique(c["x"] for c in self.cells)

    @property
    def y_values(self) -> list[Any]:
        return _sorted_unique(c["y"] for c in self.cells)

    def cell(self, x: Any, y: Any) -> dict[str, Any] | None:
        for c in self.cells:
            if c["x"] == x and c["y"] == y:
                return c
        return None

    def matrix(self, key: str) -> list[list[Any]]:
        """``key`` of every cell as rows over y, columns over x (None where no run)."""
        return [[(c or {}).get(key) for x in self.x_values for c in [self.cell(x, y)]] for y in self.y_values]

    def counts(self) -> dict[str, int]:
        """How many runs fell in each phase."""
        return {p: sum(c["phase"] == p for c in self.cells) for p in PHASES}

    def markdown(self) -> str:
        """One markdown table: y down, x across, ``phase (value)`` in each cell."""
        head = f"| {self.y_key} \\ {self.x_key} | " + " | ".join(map(str, self.x_values)) + " |"
        lines = [head, "|" + "---|" * (len(self.x_values) + 1)]
        for y, row in zip(self.y_values, self.matrix("run")):
            texts = [self.cell_text(self.cell(x, y), sep=" ") if r else "" for x, r in zip(self.x_values, row)]
            lines.append(f"| {y} | " + " | ".join(texts) + " |")
        return "\n".join(lines) + "\n"

    def cell_text(self, c: dict[str, Any] | None, sep: str = "<br>") -> str:
        if c is None:
            return ""
        v = c.get(self.color) if self.color != "phase" else c.get("time_to_grok")
        return f"{c['phase'] or 'no data'}{sep}({_fmt(v)})"

    def to_dict(self) -> dict[str, Any]:
        return {"x_key": self.x_key, "y_key": self.y_key, "color": self.color, "cells": self.cells,
                "grok_ratio": self.grok_ratio, "test_threshold": self.test_threshold}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseGrid:
        return cls(d["x_key"], d["y_key"], d["color"], list(d["cells"]), d.get("grok_ratio", GROK_RATIO),
                   d.get("test_threshold", TEST_GENERALIZED))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        return (f"PhaseGrid({self.y_key} x {self.x_key}: {len(self.y_values)} x {len(self.x_values)}, "
                f"{len(self.cells)} runs; {counts or 'no runs'})")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th>{html.escape(str(y))}</th>"
            + "".join(f"<td>{self.cell_text(self.cell(x, y))}</td>" for x in self.x_values) + "</tr>"
            for y in self.y_values
        )
        head = "".join(f"<th>{html.escape(str(x))}</th>" for x in self.x_values)
        return (f"<p>{html.escape(repr(self))}</p><table><tr><th>{html.escape(self.y_key)} \\ "
                f"{html.escape(self.x_key)}</th>{head}</tr>{rows}</table>")


def phase_grid(sweep_dir: str | Path, x: str, y: str, color: str = "time_to_grok",
               grok_ratio: float = GROK_RATIO, test_threshold: float = TEST_GENERALIZED) -> PhaseGrid:
    """Classify every run under ``sweep_dir`` and lay them out over settings ``x`` and ``y``.

    Args:
        sweep_dir: a directory of run directories (a ``grokscope sweep --out``).
        x, y: config keys, dotted (``task.train_fraction``) or their last part
            (``train_fraction``) when that names one key.
        color: a key of :data:`COLOR_QUANTITIES`.
        grok_ratio: the rule's ratio.
        test_threshold: test ID accuracy that counts as generalised (``t_test``; 0.95).

    Raises:
        ValueError: no runs; a key no run has, or one that names several keys; an
            unknown colour; two runs on one cell.
    """
    sweep_dir = Path(sweep_dir)
    if color not in COLOR_QUANTITIES:
        raise ValueError(f"color must be one of {', '.join(COLOR_QUANTITIES)}, got {color!r}")
    if not 0.0 < test_threshold <= 1.0:
        raise ValueError(f"test_threshold must be in (0, 1], got {test_threshold}")
    if not sweep_dir.is_dir():
        raise ValueError(f"{sweep_dir}: no such directory")
    runs = sorted(p.parent for p in sweep_dir.glob("*/config.json"))
    if not runs:
        raise ValueError(f"{sweep_dir}: holds no run directories (*/config.json); run `grokscope sweep --out {sweep_dir}` first")
    flats = [flatten_config(json.loads((r / "config.json").read_text())["run"]) for r in runs]
    x_key, y_key = _resolve_key(x, flats, "--x"), _resolve_key(y, flats, "--y")
    if x_key == y_key:
        raise ValueError(f"--x and --y name the same setting {x_key}")
    grid = PhaseGrid(x_key, y_key, color, grok_ratio=grok_ratio, test_threshold=test_threshold)
    seen: dict[tuple[str, str], str] = {}
    for r, f in zip(runs, flats):
        where = (json.dumps(f.get(x_key)), json.dumps(f.get(y_key)))
        if where in seen:
            raise ValueError(f"runs {seen[where]} and {r.name} both have {x_key}={f.get(x_key)}, "
                             f"{y_key}={f.get(y_key)}; a phase diagram needs one run per cell")
        seen[where] = r.name
        cell = phase_cell(read_metrics(r / "metrics.jsonl"), grok_ratio=grok_ratio, test_threshold=test_threshold)
        grid.cells.append({"x": f.get(x_key), "y": f.get(y_key), "run": r.name, **cell})
    if color.startswith("final_") and all(c.get(color) is None for c in grid.cells):
        split = "test_inferred_ood" if color == "final_ood" else "test_inferred_iid"
        raise ValueError(f"no run has a value for --color {color}: their metrics have no {split} split "
                         f"(modular addition has no OOD split); try --color time_to_grok or gap")
    return grid


def _resolve_key(key: str, flats: list[dict[str, Any]], flag: str) -> str:
    keys = sorted({k for f in flats for k in f})
    if key in keys:
        return key
    hits = [k for k in keys if k.split(".")[-1] == key]
    if len(hits) == 1:
        return hits[0]
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1 and k != "name"]
    if hits:
        raise ValueError(f"{flag} {key!r} names several settings ({', '.join(hits)}); give the dotted key")
    raise ValueError(f"{flag} {key!r} is not a setting of these runs; settings that vary: "
                     f"{', '.join(varying) or 'none'}")


def _sorted_unique(values: Any) -> list[Any]:
    vals = list({json.dumps(v): v for v in values}.values())
    try:
        return sorted(vals, key=lambda v: float(v))
    except (TypeError, ValueError):
        return sorted(vals, key=str)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
