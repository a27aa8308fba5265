"""The shared look of every grokscope figure: colour scales, split colours and labels,
axis helpers. Every plot module takes these public names from here and nothing private
from another plot module.

Colour scales are fixed across figures: :data:`SEQUENTIAL` on ``[0, 1]`` for MRR and
causal strength, :data:`DIVERGING` on ``[-1, 1]`` for differences, one colour per split
(:data:`SPLIT_COLORS`). Places are named by their hook names on every axis and hover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SEQUENTIAL = "Viridis"
"""Colour scale of every ``[0, 1]`` quantity (MRR, causal strength)."""
DIVERGING = "RdBu_r"
"""Colour scale of every difference (``[-1, 1]``, white at 0)."""

SPLIT_COLORS: dict[str, str] = {
    "train_inferred": "#1f77b4",
    "test_inferred_iid": "#ff7f0e",
    "test_inferred_ood": "#d62728",
    "id_atomic": "#2ca02c",
    "ood_atomic": "#9467bd",
    "train": "#7f7f7f",
}
MEASURE_COLORS: tuple[str, ...] = (
    "#17becf", "#e377c2", "#8c564b", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173",
    "#8c6d31", "#5254a3",
)
"""One colour per circuit measure, none shared with a split (:data:`SPLIT_COLORS`) or the
weight norm, so every line of the measures figure's legend has its own colour."""
NOTE_WIDTH = 110
"""Characters per line of a figure's explanatory note (fits a 1,400-px window)."""
PHASE_COLORS: dict[str, str] = {
    "comprehension": "#1a9850",
    "grokking": "#fdae61",
    "memorizing": "#d73027",
    "confusion": "#969696",
}
"""One colour per phase of a run (:mod:`grokscope.training.phase`), in every phase diagram."""
SPLIT_LABELS: dict[str, str] = {
    "train_inferred": "train (inferred)",
    "test_inferred_iid": "test ID (inferred)",
    "test_inferred_ood": "test OOD (inferred)",
    "id_atomic": "ID atomic",
    "ood_atomic": "OOD atomic",
}
SPLIT_ORDER = ("train_inferred", "test_inferred_iid", "test_inferred_ood", "id_atomic", "ood_atomic")
_FALLBACK = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")


def split_color(split: str) -> str:
    """The fixed colour of a split (unknown splits get a stable fallback)."""
    if split in SPLIT_COLORS:
        return SPLIT_COLORS[split]
    return _FALLBACK[sum(map(ord, split)) % len(_FALLBACK)]


def ordered_splits(keys: Sequence[str]) -> list[str]:
    known = [k for k in SPLIT_ORDER if k in keys]
    return known + sorted(k for k in keys if k not in SPLIT_ORDER)


def dashed(split: str) -> str:
    return "dot" if split.endswith("atomic") else "solid"


def layer_ticks(hook_names: Sequence[str]) -> tuple[list[int], list[str]]:
    return list(range(len(hook_names))), [f"S[{i}] {h}" for i, h in enumerate(hook_names)]


def log_steps(steps: Sequence[int], log_x: bool) -> np.ndarray:
    """Mask of the steps that can be drawn (a log axis cannot show step 0)."""
    s = np.asarray(steps, dtype=float)
    return s > 0 if log_x else np.ones(len(s), dtype=bool)


def step_axis_title(log_x: bool) -> str:
    return "training step (log scale; step 0 not shown)" if log_x else "training step"


def is_series(obj: Any) -> bool:
    return hasattr(obj, "checkpoints") and hasattr(obj, "steps")
