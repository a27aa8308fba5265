"""Time to grok: steps and training wall time to test ID >= 0.95, plain vs filtered runs.

Usage:
    python benchmarks/grok_time.py PLAIN_RUN:FILTERED_RUN [PLAIN:FILTERED ...] [--train-threshold 0.99]
    python benchmarks/grok_time.py --step-cost [--preset composition-small] [--steps 200]

The first form reads each pair's metrics.jsonl (nothing is trained) and prints one
markdown row per run: the step where train accuracy (inferred facts) first reaches the
train threshold and test ID then, the step and the recorded training wall time (the
trainer's own clock, evaluations excluded) where test ID first reaches 0.95, whether
the grokking gap is kept (train saturated first, test ID <= 0.6 then, 0.95 later), then
the speed-up of the filtered run in steps and in wall time. A run that never reached
0.95 is shown with ">= its last step" and its ratio as a lower bound.

The second form measures what one training step costs with and without the filter
(and with dropout 0.1) on this machine: it times ``--steps`` steps of each, alternating
three times, on the preset's model and data, one thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grokscope.runs.run import Run  # noqa: E402
from grokscope.training.sweep import summarize_metrics  # noqa: E402

TEST_THRESHOLD = 0.95


def _wall_at(metrics: list[dict], step: int | None) -> float | None:
    for m in metrics:
        if m["step"] == step:
            return m.get("wall_time")
    return None


def grok_stats(path: str, train_threshold: float) -> dict:
    """Time-to-grok numbers of one run directory (see the module docstring)."""
    run = Run.open(path)
    metrics = run.metrics()
    s = summarize_metrics(metrics, train_threshold=train_threshold, test_threshold=TEST_THRESHOLD)
    reached = s["iid_generalized_step"] is not None
    step = s["iid_generalized_step"] if reached else metrics[-1]["step"]
    tc = run.config.train
    return {
        "run": Path(path).name,
        "filter": f"ema a={tc.grad_filter_alpha} l={tc.grad_filter_lambda}" if tc.grad_filter else "none",
        "dropout": run.config.model.dropout,
        "seed": run.config.seed,
        "sat_step": s["train_saturated_step"],
        "iid_at_sat": s["iid_at_saturation"],
        "reached": reached,
        "step": step,
        "wall": _wall_at(metrics, step) if reached else metrics[-1].get("wall_time"),
        "gap_kept": bool(s["groks"]),
        "final_iid": s.get("final_test_inferred_iid"),
        "max_ood": s.get("max_ood"),
    }


def _fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def report(pairs: list[tuple[str, str]], train_threshold: float) -> str:
    rows = [
        f"| run | filter | dropout | seed | train >= {train_threshold:.2f} at | test ID then | test ID >= 0.95 at | wall s | gap kept | final ID | max OOD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios, shown, bounded = [], set(), set()
    for plain, filtered in pairs:
        a, b = grok_stats(plain, train_threshold), grok_stats(filtered, train_threshold)
        for path, r in ((plain, a), (filtered, b)):
            if path in shown:
                continue
            shown.add(path)
            at = str(r["step"]) if r["reached"] else f">= {r['step']}"
            rows.append(
                f"| {r['run']} | {r['filter']} | {r['dropout']} | {r['seed']} | {r['sat_step'] if r['sat_step'] is not None else '-'} "
                f"| {_fmt(r['iid_at_sat'])} | {at} | {_fmt(r['wall'], 0)} | {'yes' if r['gap_kept'] else 'no'} "
                f"| {_fmt(r['final_iid'])} | {_fmt(r['max_ood'])} |"
            )
        gaps = f"gap kept: plain {'yes' if a['gap_kept'] else 'no'}, filtered {'yes' if b['gap_kept'] else 'no'}"
        name = f"{a['run']} vs {b['run']}"
        if b["reached"]:
            step_ratio = a["step"] / b["step"]
            wall_ratio = a["wall"] / b["wall"] if a["wall"] and b["wall"] else float("nan")
            bound = "" if a["reached"] else " (at least: the plain run had not reached 0.95 when it stopped)"
            ratios.append(f"{name}: speed-up {step_ratio:.2f}x in steps, {wall_ratio:.2f}x in wall time{bound}; {gaps}")
        elif a["reached"] and b["step"] >= a["step"]:
            ratios.append(f"{name}: speed-up < 1: the filtered run had not reached 0.95 by step {b['step']}, "
                          f"the plain run did at step {a['step']} (at most {a['step'] / b['step']:.2f}x); {gaps}")
        else:
            ratios.append(f"{name}: not measured: the filtered run stopped at step {b['step']} below 0.95, "
                          f"before the plain run's {'step ' + str(a['step']) if a['reached'] else 'end'}; {gaps}")
        if a["reached"] and a["gap_kept"] and a["sat_step"] and plain not in bounded:
            bounded.add(plain)
            ratios.append(f"  (a change that keeps the gap without memorising faster saves at most "
                          f"{a['step'] / a['sat_step']:.2f}x on {a['run']}: its 0.95 step over its saturation step)")
    return "\n".join(rows + [""] + ratios)


def step_cost(preset_name: str, steps: int) -> str:
    """Seconds per training step: plain, filtered, and with dropout 0.1 (alternating)."""
    import tempfile

    import torch

    from grokscope.runs.presets import preset
    from grokscope.runs.run import Run as _Run
    from grokscope.tasks import get_task
    from grokscope.training.loop import train

    torch.set_num_threads(1)
    base = preset(preset_name).override({
        "train.max_steps": str(steps), "train.eval_every": str(steps), "train.eval_size": "50",
        "train.max_time_s": "none", "train.threads": "1",
    })
    variants = {
        "plain": base,
        "grad_filter=ema": base.override({"train.grad_filter": "ema"}),
        "dropout=0.1": base.override({"model.dropout": "0.1"}),
    }
    data = get_task(base.task.task).generate(base.task)
    times: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(3):
            for name, cfg in variants.items():
                run = _Run.create(Path(tmp) / f"{name}-{rep}", cfg, data)
                state = train(run, quiet=True, dataset=data)  # wall_time: the trainer's clock, evaluations excluded
                times[name].append(state["wall_time"] / steps)
    out = [f"{preset_name}, {steps} steps per timing, 3 alternating repeats, 1 thread (median s/step):"]
    plain = sorted(times["plain"])[1]
    for name, ts in times.items():
        med = sorted(ts)[1]
        out.append(f"  {name:16s} {1000 * med:7.2f} ms/step  ({med / plain:.2f}x plain)")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="*", help="PLAIN_RUN:FILTERED_RUN")
    ap.add_argument("--train-threshold", type=float, default=0.99)
    ap.add_argument("--step-cost", action="store_true")
    ap.add_argument("--preset", default="composition-small")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    if args.step_cost:
        print(step_cost(args.preset, args.steps))
    if args.pairs:
        print(report([tuple(p.split(":", 1)) for p in args.pairs], args.train_threshold))
    if not args.pairs and not args.step_cost:
        ap.error("give PLAIN:FILTERED pairs or --step-cost")


if __name__ == "__main__":
    main()
