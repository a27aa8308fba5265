"""The grokking forecast over runs: which cheap measure moves before test accuracy.

Usage (from the repository root; analyses are cached inside each run):

    python docs/forecast.py [RUN ...] [--json docs/forecast.json] [--examples 300]

Without RUN it takes the shipped runs (checkpoints/*). For each run: the evaluation
records, the weight norm and the task's circuit measures at every checkpoint (and for
modular addition the progress measures), onsets by :func:`grokscope.progress.fourier.onset`
and the lead of each measure over test accuracy. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from grokscope.progress.forecasting import report_data
    from grokscope.runs.run import Run
    from grokscope.series.engine import analyse_series

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--examples", type=int, default=300)
    args = ap.parse_args()
    runs = args.runs or sorted(p for p in (REPO / "checkpoints").iterdir() if (p / "config.json").is_file())
    out = {}
    print("| run | reference step (train >= 0.99) | test onset (evals) | measure | onset | test onset (its grid) "
          "| lead (steps) | grid | moved into the reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in runs:
        run = Run.open(path)
        series = analyse_series(run, n=args.examples, progress=False)
        d = report_data(series)
        fc = d["forecast"]
        out[str(path)] = d
        for name, m in fc["measures"].items():
            print(f"| {path.name} | {fc['reference_step']} | {fc['test_onset']} | {name} | {m['onset']} | "
                  f"{m['test_onset']} | {m['lead']} | {m['resolution']} | {'yes' if m['moving_at_reference'] else ''} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
