"""Training steps/s with 1 vs 2 torch threads, alternating in one process.

Usage: .venv/bin/python benchmarks/threads.py [--batch 256] [--steps 40]
Run it on an idle machine (and once with another process busy) to choose
grokscope.training.loop.DEFAULT_THREADS.
"""

from __future__ import annotations

import argparse
import time

import torch

from grokscope.runs.model import build_model
from grokscope.runs.presets import preset
from grokscope.training.loop import target_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = preset("composition-small").model
    model = build_model(cfg, 76, 5, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 76, (args.batch, 5))
    pos = torch.full((args.batch,), 2)

    def step() -> None:
        loss, _ = target_loss(model(tokens), tokens, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    totals = {1: 0.0, 2: 0.0}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):
            step()
    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            totals[threads] += time.perf_counter() - t0
    n = args.steps * args.rounds
    for threads, t in totals.items():
        print(f"threads={threads}: {n / t:.2f} steps/s")
    print(f"ratio 2 threads / 1 thread = {totals[1] / totals[2]:.3f}")


if __name__ == "__main__":
    main()
