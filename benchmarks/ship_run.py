"""Copy a trained run into a shippable one: the chosen checkpoints only, no optimizer or
resume state, and optionally the weights in float16 (half the bytes).

Usage: python benchmarks/ship_run.py RUN OUT --steps 1000,2500,... [--half] [--compress]

A float16 checkpoint loads as before: TransformerLens's ``load_state_dict`` (and
grokscope's ``load_tensors``) copy it into the float32 parameters. Check what it moves
with ``python benchmarks/compare_summaries.py A/summary.json B/summary.json``.
``--compress`` stores the split files as ``train.json.gz`` (and valid, test): the same JSON,
gzip level 9, which grokscope reads as it reads the plain files.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import safetensors.torch

from grokscope.runs.run import DATA_DIR, MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, Run
from grokscope.tasks.paper_format import compress_split_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--steps", required=True, help="comma-separated checkpoint steps to keep")
    ap.add_argument("--half", action="store_true", help="store the weights as float16")
    ap.add_argument("--compress", action="store_true", help="gzip train/valid/test.json")
    args = ap.parse_args()
    run, out = Run.open(args.run), Path(args.out)
    steps = [int(s) for s in args.steps.split(",")]
    missing = [s for s in steps if s not in run.steps()]
    if missing:
        raise SystemExit(f"not checkpoints of {run.path}: {missing}; available: {run.steps()}")
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    shutil.copytree(run.path, out, ignore=shutil.ignore_patterns("checkpoints", ".grokscope-cache"))
    for s in steps:
        src = run.checkpoint_path(s)
        dst = out / src.relative_to(run.path)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(OPTIMIZER_FILE, TRAINER_STATE_FILE))
        if args.half:
            tensors = safetensors.torch.load_file(dst / MODEL_FILE)
            half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            safetensors.torch.save_file(half, dst / MODEL_FILE)
    if args.compress:
        for name, (before, after) in compress_split_files(out / DATA_DIR).items():
            print(f"{name}: {before / 1e6:.2f} MB -> {name}.gz {after / 1e6:.2f} MB")
        Run.open(out).dataset()  # the compressed files read back to the recorded content hash
    print(f"{out}: {len(steps)} checkpoints, {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
