"""The tree sweep's table (issue #23): for each run directory, from its metrics.jsonl, the
first step where train path accuracy reaches 0.99, the first step where unseen-tree
(test ID) accuracy reaches 0.9, the gap, and the final accuracies. Reads JSON only.

Usage::

    python benchmarks/tree_sweep.py runs/tree-n1k runs/tree-n3k runs/tree-n10k [--markdown] [--until 4500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def first_step(recs: list[dict], split: str, threshold: float) -> int | None:
    return next((r["step"] for r in recs if r["acc"].get(split, 0.0) >= threshold), None)


def row(run: Path, until: int | None = None) -> dict:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if until is None or r["step"] <= until]
    task = json.loads((run / "config.json").read_text())["run"]["task"]
    train99 = first_step(recs, "train_inferred", 0.99)
    test90 = first_step(recs, "test_inferred_iid", 0.9)
    last = recs[-1]
    best_iid = max(r["acc"]["test_inferred_iid"] for r in recs)
    return {
        "run": run.name, "n_train": task["n_train"], "steps": last["step"], "wall_s": round(last["wall_time"]),
        "train>=0.99": train99, "test_id>=0.9": test90,
        "gap": (test90 - train99) if train99 is not None and test90 is not None else None,
        "train_at_end": last["acc"]["train_inferred"], "test_id_at_end": last["acc"]["test_inferred_iid"],
        "test_id_best": best_iid, "ood_at_end": last["acc"].get("test_inferred_ood"),
        "test_id_at_train99": next((r["acc"]["test_inferred_iid"] for r in recs if r["step"] == train99), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--until", type=int, default=None, help="only evaluations up to this step (a budget)")
    args = ap.parse_args()
    rows = [row(r, args.until) for r in args.runs]
    keys = list(rows[0])
    if args.markdown:
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join("never" if r[k] is None and k in ("train>=0.99", "test_id>=0.9") else str(r[k]) for k in keys) + " |")
    else:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
