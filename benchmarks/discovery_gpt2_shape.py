"""Benchmark: discovery on a random GPT-2-small-shaped bridge (12 layers, 12 heads, d_model 768,
vocabulary 50257), 32 prompts of 16-24 tokens (right-padded, each scored at its own last token):
seconds per method and the process's peak resident memory, on this machine's CPU (or CUDA
with ``--device cuda``, where the peak is ``torch.cuda.max_memory_allocated``).

Each configuration runs in a fresh interpreter (the resident-set peak cannot be reset):

    OMP_NUM_THREADS=1 python benchmarks/discovery_gpt2_shape.py [--device cpu] [--batch-size 8]

It prints one JSON line per configuration: the method, ``positions``, ``batch_size``,
the graph's edges, the scoring seconds, the seconds to measure one circuit (the top 1%
of edges, every other edge patched) and the peak memory in MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ONE = r"""
import json, sys, time, torch
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
import transformers as tf
from grokscope.discovery.faithfulness import recovered, select
from grokscope.discovery.inputs import encode
from grokscope.discovery.scores import prepare, score_edges
hf = tf.GPT2LMHeadModel(tf.GPT2Config(**cfg.get("shape", {})))  # GPT-2 small's shape, random init
hf.config._attn_implementation = "eager"
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
model = build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=hf.config).eval().to(cfg["device"])
g = torch.Generator().manual_seed(0)
lengths = torch.randint(16, 25, (32,), generator=g)
tokens = torch.randint(0, 50257, (32, 24), generator=g)
mask = (torch.arange(24)[None] < lengths[:, None]).long()
corrupt = tokens.clone()
corrupt[:, 3] = (tokens[:, 3] + 1) % 50257
answer, cf_answer = torch.randint(0, 50257, (2, 32), generator=g)
c = encode(model, tokens * mask, corrupt * mask, answer=answer, cf_answer=cf_answer, attention_mask=mask)
if cfg["device"] == "cuda":
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
acts = prepare(model, c, positions=cfg["positions"], batch_size=cfg["batch_size"])
sc = score_edges(model, c, cfg["method"], acts=acts)
t_score = time.perf_counter() - t
t = time.perf_counter()
rec = float(recovered(model, acts, select(sc, max(1, sc.graph.n_edges // 100)))[0][0])
t_circuit = time.perf_counter() - t
def peak_mb():  # this process's own high-water resident set (ru_maxrss starts at the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
peak = torch.cuda.max_memory_allocated() / 2**20 if cfg["device"] == "cuda" else peak_mb()
print(json.dumps({**cfg, "edges": sc.graph.n_edges, "score_s": round(t_score, 2), "circuit_s": round(t_circuit, 2),
                  "recovered_top1pct": round(rec, 3), "peak_mb": round(peak)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=["eap", "eap-ig"])
    args = ap.parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TQDM_DISABLE": "1"}
    for method in args.methods:
        for positions in ("sum", "last"):
            for bs in (args.batch_size, None):
                cfg = {"method": method, "positions": positions, "batch_size": bs, "device": args.device}
                res = subprocess.run([sys.executable, "-c", ONE, json.dumps(cfg)], capture_output=True, text=True, env=env)
                print(res.stdout.strip().splitlines()[-1] if res.returncode == 0 else json.dumps({**cfg, "error": res.stderr[-500:]}),
                      flush=True)


if __name__ == "__main__":
    main()
