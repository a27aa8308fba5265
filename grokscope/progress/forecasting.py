"""When grokking starts: onsets, the three phases, and a forecast of test accuracy.

One onset rule for every series and for test accuracy (:func:`onset`); the phases of
modular addition (memorisation, circuit formation, cleanup) located from the progress
measures (:func:`locate_phases`); and :func:`forecast`: which cheap measure starts to
move before test accuracy does, and by how many steps, for any run grokscope has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from grokscope.progress.fourier import ProgressSeries, progress_series

__all__ = ["MIN_MOVE", "ONSET_FRACTION", "onset", "Phases", "locate_phases", "forecast", "cheap_measures", "series_forecast", "report_data"]

ONSET_FRACTION = 0.1
"""A series has its onset where it first covers this share of its move from the reference
step to its final value (the same rule for every measure and for test accuracy)."""

MIN_MOVE = {"acc": 0.05}
"""Smallest total move (absolute) for a series to count as moving; others: 5% relative."""


def onset(
    steps: Sequence[int], values: Sequence[float | None], ref_step: int, *,
    fraction: float = ONSET_FRACTION, min_move: float | None = None,
) -> int | None:
    """First step ``>= ref_step`` where the series has covered ``fraction`` of its move
    from its value at ``ref_step`` to its final value (either direction).

    None when the series does not move: ``|final - ref| < min_move`` (default: 5% of
    ``max(|ref|, |final|)``).

    Example:
        >>> onset([0, 10, 20, 30, 40], [1.0, 1.0, 0.8, 0.5, 0.0], 0)
        20
        >>> onset([0, 10, 20], [0.2, 0.2, 0.2], 0) is None
        True
    """
    pts = [(s, float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v)) and s >= ref_step]
    if len(pts) < 2:
        return None
    ref, final = pts[0][1], pts[-1][1]
    move = final - ref
    floor = min_move if min_move is not None else 0.05 * max(abs(ref), abs(final))
    if abs(move) < max(floor, 1e-12):
        return None
    for s, v in pts[1:]:
        if (v - ref) / move >= fraction:
            return s
    return None


def _acc_series(metrics: list[dict[str, Any]], split: str) -> tuple[list[int], list[float | None]]:
    rows = [(m["step"], m.get("acc", {}).get(split)) for m in metrics]
    return [s for s, _ in rows], [v for _, v in rows]


def _value_at(steps: Sequence[int], values: Sequence[float | None], step: int) -> float | None:
    """The value at the last sampled step <= ``step``."""
    best = None
    for s, v in zip(steps, values):
        if s <= step and v is not None:
            best = v
    return best


@dataclass(frozen=True)
class Phases:
    """Memorisation, circuit formation and cleanup of a grokking run (steps).

    Attributes:
        memorised: end of memorisation: train accuracy first >= 0.99.
        cleanup: start of cleanup: the onset of test accuracy (:func:`onset` from ``memorised``).
        grokked: end of cleanup: test accuracy first >= 0.99 (None: never).
        restricted_onset: onset of the restricted loss's fall (None: no progress series).
    """

    memorised: int | None
    cleanup: int | None
    grokked: int | None
    restricted_onset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def locate_phases(
    metrics: list[dict[str, Any]], progress: ProgressSeries | None = None, *,
    train_split: str = "train_inferred", test_split: str = "test_inferred_iid",
) -> Phases:
    """Locate the three phases from the evaluation records (and the progress measures).

    Memorisation ends when train accuracy first reaches 0.99; cleanup starts at the
    onset of test accuracy measured from there (the rule of :func:`onset`, the same as
    the forecast's); it ends when test accuracy first reaches 0.99. Circuit formation is
    between the first two. With ``progress`` the restricted loss's onset (same rule, same
    reference) is recorded: Nanda et al.'s claim is that it falls during circuit formation.

    Example:
        >>> ms = [{"step": s, "acc": {"train_inferred": tr, "test_inferred_iid": te}}
        ...       for s, tr, te in [(0, .1, 0), (100, 1, .01), (200, 1, .02), (300, 1, .5), (400, 1, 1)]]
        >>> locate_phases(ms)
        Phases(memorised=100, cleanup=300, grokked=400, restricted_onset=None)
    """
    steps, train = _acc_series(metrics, train_split)
    _, test = _acc_series(metrics, test_split)
    mem = next((s for s, v in zip(steps, train) if v is not None and v >= 0.99), None)
    if mem is None:
        return Phases(None, None, None)
    clean = onset(steps, test, mem, min_move=MIN_MOVE["acc"])
    done = next((s for s, v in zip(steps, test) if v is not None and v >= 0.99 and s >= mem), None)
    r_on = None
    if progress is not None:
        ref = max([s for s in progress.steps if s <= mem], default=progress.steps[0])
        r_on = onset(progress.steps, progress.measure("restricted_loss"), ref)
    return Phases(mem, clean, done, r_on)


def forecast(
    metrics: list[dict[str, Any]],
    measures: dict[str, tuple[Sequence[int], Sequence[float | None]]],
    *,
    train_split: str = "train_inferred",
    test_split: str = "test_inferred_iid",
) -> dict[str, Any]:
    """Which cheap measure starts to move before test accuracy, and by how many steps.

    Reference: the step where train accuracy first reaches 0.99 (memorisation done; for a
    measure's own grid its last step at or before it, else its first step after it). Every series, test
    accuracy included, gets its onset by :func:`onset` from that reference. Test accuracy
    is read on each measure's own steps (its value at the last evaluation at or before
    each step), so a measure and test accuracy are compared at the same resolution.

    Args:
        metrics: the run's evaluation records (``metrics.jsonl``).
        measures: name -> ``(steps, values)`` of each cheap measure (no held-out data).

    Returns:
        ``{"reference_step", "test_onset" (on the evaluation grid), "measures": {name:
        {"onset", "test_onset", "lead", "resolution", "moving_at_reference"}}, "leading":
        [...]}``; ``lead = test_onset - onset`` (positive: the measure moved first); None
        where a series does not move. ``moving_at_reference``: over its last grid interval
        before the reference the series already changed by the onset fraction of its later
        move, so it never paused after memorisation (the training loss still falling, say)
        and its lead says nothing; ``leading`` lists the measures with a positive lead that
        were not.
    """
    steps, train = _acc_series(metrics, train_split)
    _, test = _acc_series(metrics, test_split)
    ref = next((s for s, v in zip(steps, train) if v is not None and v >= 0.99), None)
    out: dict[str, Any] = {"reference_step": ref, "test_onset": None, "measures": {}, "leading": []}
    if ref is None:
        out["note"] = "train accuracy never reached 0.99: no reference step"
        return out
    out["test_onset"] = onset(steps, test, ref, min_move=MIN_MOVE["acc"])
    for name, (m_steps, m_values) in measures.items():
        m_steps = list(m_steps)
        # the measure's last step at or before the reference (else its first after it)
        grid_ref = max([s for s in m_steps if s <= ref], default=min([s for s in m_steps if s > ref], default=None))
        if grid_ref is None:
            out["measures"][name] = {"onset": None, "test_onset": None, "lead": None, "resolution": None}
            continue
        on = onset(m_steps, m_values, grid_ref)
        test_on = onset(m_steps, [_value_at(steps, test, s) for s in m_steps], grid_ref, min_move=MIN_MOVE["acc"])
        after = [s for s in m_steps if s >= grid_ref]
        res = int(np.median(np.diff(after))) if len(after) > 1 else None
        lead = (test_on - on) if on is not None and test_on is not None else None
        # a series that moved into the reference step (its last grid interval before it
        # covered the onset fraction of its later move, e.g. train loss still falling from
        # memorisation) never paused: its early onset is no sign of what comes
        moving = on is not None and _moving_into(m_steps, m_values, grid_ref)
        out["measures"][name] = {"onset": on, "test_onset": test_on, "lead": lead, "resolution": res,
                                 "moving_at_reference": moving}
        if lead is not None and lead > 0 and not moving:
            out["leading"].append(name)
    return out


def _moving_into(steps: Sequence[int], values: Sequence[float | None], ref: int, fraction: float = ONSET_FRACTION) -> bool:
    """Whether the series' change over its last grid interval before ``ref`` is at least
    ``fraction`` of its move from ``ref`` to the end (False where nothing precedes ``ref``)."""
    pts = [(s, float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v))]
    before = [v for s, v in pts if s < ref]
    at = [v for s, v in pts if s == ref]
    if not before or not at:
        return False
    move = pts[-1][1] - at[0]
    return move != 0 and abs(at[0] - before[-1]) >= fraction * abs(move)


def cheap_measures(
    metrics: list[dict[str, Any]], *, weight_norms: tuple[Sequence[int], Sequence[float]] | None = None,
    progress: ProgressSeries | None = None, extra: dict[str, tuple[Sequence[int], Sequence[float | None]]] | None = None,
    train_split: str = "train_inferred",
) -> dict[str, tuple[list[int], list[float | None]]]:
    """The cheap measures of a run: the training loss (every evaluation), the train probe's
    loss, the weight norm (checkpoints), and for modular addition restricted and excluded
    loss and the Gini coefficients (checkpoints); ``extra`` adds others (circuit measures)."""
    steps = [m["step"] for m in metrics]
    out: dict[str, tuple[list[int], list[float | None]]] = {
        "train loss (batches)": (steps[1:], [m.get("train_loss") for m in metrics[1:]]),
        "train loss (probe)": (steps, [m.get("loss", {}).get(train_split) for m in metrics]),
    }
    if weight_norms is not None:
        out["weight norm"] = (list(weight_norms[0]), list(weight_norms[1]))
    if progress is not None:
        for key, label in (("restricted_loss", "restricted loss"), ("excluded_loss", "excluded loss"),
                           ("gini_embed", "Gini (embedding)"), ("gini_logits", "Gini (logits)")):
            out[label] = (list(progress.steps), progress.measure(key))
    for k, v in (extra or {}).items():
        out[k] = (list(v[0]), list(v[1]))
    return out


def series_forecast(series: Any, progress: ProgressSeries | None = None) -> dict[str, Any]:
    """:func:`forecast` of an analysed series: the evaluation-record losses, the weight
    norm and the task's circuit measures (all on training data) at its checkpoints, plus
    the modular progress measures when given."""
    from grokscope.progress.measures import circuit_measures

    extra = {k: (series.steps, v) for k, v in circuit_measures(series)["measures"].items()}
    cheap = cheap_measures(series.metrics, weight_norms=(series.steps, [c.weight_norm for c in series.checkpoints]),
                           progress=progress, extra=extra)
    return forecast(series.metrics, cheap)


def report_data(series: Any, *, cache: Any = True) -> dict[str, Any]:
    """What the report's progress sections show: the forecast for every run; for a task
    that declares the ``fourier`` diagnosis, the progress series and its phases too."""
    from grokscope.tasks.base import get_task

    out: dict[str, Any] = {}
    prog = None
    if "fourier" in get_task(series.task).diagnoses:
        prog = progress_series(series.run, series.steps, cache=cache)
        out["progress"] = prog.to_dict()
        out["phases"] = locate_phases(series.metrics, prog).to_dict()
    out["forecast"] = series_forecast(series, prog)
    return out


