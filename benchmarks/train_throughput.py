"""Training-step throughput: grokscope's model vs an HF GPT2LMHeadModel of the same shape.

Same batch, sequence length, loss (on the answer and </a> tokens) and optimizer; the
two are timed alternately in one process, so the ratio is meaningful on a noisy
machine. Usage:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_throughput.py [--shape small|paper] [--batch N] [--steps N]

Prints steps/s of each and the ratio grokscope / HF (> 1 means grokscope is faster).
"""

from __future__ import annotations

import argparse
import time

import torch

from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model, decay_param_groups
from grokscope.runs.presets import preset
from grokscope.training.loop import target_loss

SHAPES = {
    "small": preset("composition-small").model,
    "paper": ModelConfig(),
}


def hf_model(cfg: ModelConfig, d_vocab: int, n_ctx: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=d_vocab, n_positions=n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=cfg.act_fn,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
    )
    return GPT2LMHeadModel(hf_cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=list(SHAPES), default="small")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = SHAPES[args.shape]
    d_vocab, n_ctx, seq = 76, 5, 5  # composition-small: 50 entities + 20 relations + 6 specials
    ours = build_model(cfg, d_vocab, n_ctx, seed=0)
    theirs = hf_model(cfg, d_vocab, n_ctx)
    tokens = torch.randint(0, d_vocab, (args.batch, seq))
    pos = torch.full((args.batch,), seq - 3)

    def stepper(model: torch.nn.Module, logits_of):
        opt = torch.optim.AdamW(decay_param_groups(model, 0.1) if model is ours else model.parameters(), lr=1e-4)

        def step() -> None:
            loss, _ = target_loss(logits_of(tokens), tokens, pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        return step

    runs = {"grokscope": stepper(ours, lambda t: ours(t)), "hf": stepper(theirs, lambda t: theirs(t).logits)}
    for step in runs.values():  # warm up
        for _ in range(3):
            step()
    times = {k: 0.0 for k in runs}
    for _ in range(args.rounds):
        for name, step in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name] += time.perf_counter() - t0
    n = args.steps * args.rounds
    rate = {k: n / v for k, v in times.items()}
    print(f"shape={args.shape} batch={args.batch} threads={torch.get_num_threads()}")
    for k, v in rate.items():
        print(f"  {k:<10} {v:8.2f} steps/s")
    print(f"  ratio grokscope/hf = {rate['grokscope'] / rate['hf']:.3f}")


if __name__ == "__main__":
    main()
