"""Pick the best run of a sweep directory, thin it to N checkpoints and print why.

Usage: python benchmarks/pick_best.py SWEEP_DIR KEEP [--ood]
Best: a run that groks (train saturates first, test ID <= 0.6 then, >= 0.95 later),
earliest generalisation first; else the highest final test ID (or OOD with --ood).
Prints the chosen run's directory as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grokscope.runs.run import Run
from grokscope.runs.thinning import thin_run
from grokscope.training.sweep import summarize_metrics


def main() -> None:
    sweep, keep = Path(sys.argv[1]), int(sys.argv[2])
    by_ood = "--ood" in sys.argv
    scored = []
    for cfg in sorted(sweep.glob("*/config.json")):
        run = Run.open(cfg.parent)
        s = summarize_metrics(run.metrics())
        if by_ood:
            key = (s.get("final_test_inferred_ood") or 0, s.get("final_test_inferred_iid") or 0)
        else:
            key = (1 if s["groks"] else 0, -(s["iid_generalized_step"] or 10**9) if s["groks"] else s.get("final_test_inferred_iid") or 0)
        scored.append((key, run, s))
    scored.sort(key=lambda x: x[0], reverse=True)
    for key, run, s in scored:
        print(run.path.name, key, {k: s.get(k) for k in ("groks", "train_saturated_step", "iid_at_saturation", "iid_generalized_step", "final_test_inferred_iid", "final_test_inferred_ood")})
    best = scored[0][1]
    print("kept steps:", thin_run(best, keep))
    print(best.path)


if __name__ == "__main__":
    main()
