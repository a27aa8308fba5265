"""The text-composition sweeps of issue #24: phi and template diversity at a fixed budget.

Trains (``train``) the preset ``text-composition-small`` at phi 3.6, 7.2, 12.6, 18 (3
templates per relation) and at 1 and 6 templates (phi 18, where 3 templates generalise
within the budget), each run bounded by the
preset's ``max_time_s``, two at a time on one thread each; then (``table``) reads each run's
``metrics.jsonl`` and prints the table of docs/REPRODUCTION.md ("Text"): the first step with
train >= 0.99, the first step with test ID >= 0.95 (or never), the gap, and the last
evaluation's test ID, new-template and OOD accuracies.

    OMP_NUM_THREADS=1 python benchmarks/text_sweep.py train --out runs/text-sweep
    python benchmarks/text_sweep.py table --out runs/text-sweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SWEEP: dict[str, list[str]] = {
    "phi3.6-t3": ["task.phi=3.6"],
    "phi7.2-t3": ["task.phi=7.2"],
    "phi12.6-t3": ["task.phi=12.6"],
    "phi18-t3": ["task.phi=18"],
    "phi18-t1": ["task.phi=18", "task.n_templates=1"],
    "phi18-t6": ["task.phi=18", "task.n_templates=6"],
}
"""Run name -> overrides of the preset ``text-composition-small``."""


def train(out: Path, names: list[str], parallel: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    todo = [n for n in names if not (out / n / "metrics.jsonl").is_file()]
    running: list[subprocess.Popen] = []
    while todo or running:
        running = [p for p in running if p.poll() is None]
        while todo and len(running) < parallel:
            name = todo.pop(0)
            cmd = [sys.executable, "-m", "grokscope.cli", "train", "--preset", "text-composition-small",
                   "--out", str(out / name), "--threads", "1", "--quiet", *SWEEP[name], f"name={name}"]
            print(" ".join(cmd), flush=True)
            log = open(out / f"{name}.log", "w")
            running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(5)


def first_step(records: list[dict], split: str, threshold: float) -> int | None:
    for r in records:
        if r.get("acc", {}).get(split, 0.0) >= threshold:
            return int(r["step"])
    return None


def table(out: Path, names: list[str]) -> str:
    """The sweep table; "at step S": train / test ID / new-template accuracy at the last
    evaluation every run reached (runs share a wall-clock budget, not a step count)."""
    records = {n: [json.loads(x) for x in (out / n / "metrics.jsonl").read_text().splitlines() if x.strip()]
               for n in names if (out / n / "metrics.jsonl").is_file()}
    common = min((max(r["step"] for r in recs if r["step"] % 250 == 0) for recs in records.values()), default=0)
    rows = [f"| run | phi | templates | steps | train >= 0.99 | test ID >= 0.95 | gap | train >= 0.9 | test ID >= 0.5 "
            f"| test ID | new template | OOD | train | train / test ID / new template at step {common:,} |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        if name not in records:
            rows.append(f"| {name} | (no run) |")
            continue
        recs = records[name]
        cfg = json.loads((out / name / "config.json").read_text())["run"]["task"]
        tr, te = first_step(recs, "train_inferred", 0.99), first_step(recs, "test_inferred_iid", 0.95)
        gap = (te - tr) if tr is not None and te is not None else None
        last = recs[-1]["acc"]
        at = next(r["acc"] for r in recs if r["step"] == common)

        def fmt(x: int | None) -> str:
            return "never" if x is None else f"{x:,}"

        rows.append(f"| {name} | {cfg['phi']} | {cfg['n_templates']} | {recs[-1]['step']:,} | {fmt(tr)} | {fmt(te)} | "
                    f"{'-' if gap is None else f'{gap:,}'} | {fmt(first_step(recs, 'train_inferred', 0.9))} | "
                    f"{fmt(first_step(recs, 'test_inferred_iid', 0.5))} | {last['test_inferred_iid']:.3f} | "
                    f"{last.get('test_new_template', float('nan')):.3f} | {last['test_inferred_ood']:.3f} | "
                    f"{last['train_inferred']:.3f} | " + " / ".join(f"{at[k]:.3f}" for k in ("train_inferred", "test_inferred_iid", "test_new_template")) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "table"])
    ap.add_argument("--out", type=Path, default=Path("runs/text-sweep"))
    ap.add_argument("--runs", nargs="*", default=list(SWEEP), help=f"a subset of {', '.join(SWEEP)}")
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()
    if a.mode == "train":
        train(a.out, a.runs, a.parallel)
    print(table(a.out, a.runs))


if __name__ == "__main__":
    main()
