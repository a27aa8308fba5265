"""Which checkpoints a run keeps: its latest resumable step, and thinning it to a checkpoint budget across its transition."""

from __future__ import annotations

import math
import shutil

from grokscope.runs.run import OPTIMIZER_FILE, TRAINER_STATE_FILE, Run


def latest_resume_step(run: Run) -> int | None:
    """The newest checkpoint step that carries resume state, or None."""
    for step in reversed(run.steps()):
        d = run.checkpoint_path(step)
        if (d / TRAINER_STATE_FILE).is_file() and (d / OPTIMIZER_FILE).is_file():
            return step
    return None


def select_steps(steps: list[int], iid: dict[int, float], keep: int) -> list[int]:
    """Pick ``keep`` checkpoint steps that span a grokking run: the first and last,
    log-spaced steps, and steps nearest to evenly spaced levels of test ID accuracy
    (so the transition is sampled densely however fast it happens).

    Example:
        >>> select_steps([0, 10, 20, 30, 40, 50], {0: 0, 10: 0, 20: .1, 30: .9, 40: 1, 50: 1}, 5)
        [0, 10, 20, 30, 50]
    """
    steps = sorted(steps)
    if keep >= len(steps):
        return steps
    if keep < 2:
        raise ValueError(f"keep must be >= 2, got {keep}")
    chosen = {steps[0], steps[-1]}
    accs = [iid.get(s) for s in steps]
    known = [(s, a) for s, a in zip(steps, accs) if a is not None]
    candidates: list[int] = []
    if known:
        lo, hi = min(a for _, a in known), max(a for _, a in known)
        n_levels = max(1, (keep - 1) // 2)
        for i in range(1, n_levels + 1):
            level = lo + (hi - lo) * i / (n_levels + 1)
            candidates.append(min(known, key=lambda sa, lv=level: (abs(sa[1] - lv), sa[0]))[0])
    positive = [s for s in steps if s > 0]
    if positive:
        lo_s, hi_s = positive[0], positive[-1]
        n_log = keep
        for i in range(n_log):
            target = lo_s * (hi_s / lo_s) ** (i / max(1, n_log - 1))
            candidates.append(min(positive, key=lambda s, t=target: abs(math.log(s) - math.log(t))))
    for s in candidates:
        if len(chosen) >= keep:
            break
        chosen.add(s)
    for s in steps:  # fill up evenly if duplicates left room
        if len(chosen) >= keep:
            break
        chosen.add(s)
    return sorted(chosen)


def thin_run(run: Run, keep: int) -> list[int]:
    """Delete all but ``keep`` checkpoints (chosen by :func:`select_steps`) and every
    optimizer/resume state: makes a run small enough to ship. Returns the kept steps."""
    iid = {}
    for m in run.metrics():
        v = m.get("acc", {}).get("test_inferred_iid")
        if v is not None:
            iid[m["step"]] = v
    kept = select_steps(run.steps(), iid, keep)
    for step in run.steps():
        d = run.checkpoint_path(step)
        if step not in kept:
            shutil.rmtree(d)
        else:
            for name in (OPTIMIZER_FILE, TRAINER_STATE_FILE):
                (d / name).unlink(missing_ok=True)
    return kept
