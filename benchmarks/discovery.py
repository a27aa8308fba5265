"""Benchmark: edge scores on a shipped run, EAP / EAP-IG against exact edge patching.

For every edge of the model's component graph, ``--n`` examples (default 300) of
``train_inferred`` and each of the task's counterfactual corruptions:

* exact patching of every edge, batched (edges x examples; the ground truth);
* EAP (one gradient) and EAP-IG with ``K`` path points for each ``--ig-steps``;
* the time ratio exact / EAP-IG, the rank agreement with exact (Spearman over all
  edges of the signed scores and of ``|score|``, the ranking circuits are selected
  by, ties averaged; overlap of the top 50 by ``|score|``), and the recovered
  fraction of the EAP-IG circuits (faithfulness curve area, CPR; smallest circuit
  that recovers 0.9);
* ``--paper-shape``: the time of EAP-IG on a random model of the paper's shape
  (8 layers x 768, 12 heads, d_mlp 3072) on this machine's CPU (and on CUDA when
  available).

Usage::

    OMP_NUM_THREADS=1 TQDM_DISABLE=1 python benchmarks/discovery.py checkpoints/composition-small \
        [--step S] [--n 300] [--ig-steps 1 2 3 5 10] [--paper-shape]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from grokscope.discovery.faithfulness import faithfulness_curve, smallest_circuit  # noqa: E402
from grokscope.discovery.scores import (  # noqa: E402
    DEFAULT_IG_STEPS,
    Corruption,
    prepare,
    score_edges,
    spearman,
    top_overlap,
)
from grokscope.patching.tracing import make_counterfactuals  # noqa: E402
from grokscope.runs.run import Run  # noqa: E402


def shipped(args: argparse.Namespace) -> dict:
    run = Run.open(args.run)
    step = run.resolve_step(args.step)
    model = run.load_model(step)
    model.eval()
    cfs = make_counterfactuals(run.dataset(), args.split, n=args.n, seed=0)
    out: dict = {"run": str(args.run), "step": step, "split": args.split, "corruptions": {}}
    totals = {"exact": 0.0, "eap": 0.0, **{f"eap-ig{k}": 0.0 for k in args.ig_steps}}
    for pert, cf in cfs.items():
        corruption = Corruption.from_counterfactuals(cf)
        t0 = time.perf_counter()
        acts = prepare(model, corruption)
        t_prep = time.perf_counter() - t0
        exact = score_edges(model, corruption, "exact", acts=acts)
        row = {"examples": len(cf), "edges": acts.graph.n_edges, "prepare_s": t_prep, "exact_s": exact.seconds, "methods": {}}
        totals["exact"] += exact.seconds + t_prep
        for name, method, k in [("eap", "eap", 1)] + [(f"eap-ig{k}", "eap-ig", k) for k in args.ig_steps]:
            sc = score_edges(model, corruption, method, ig_steps=k, acts=acts)
            totals[name] += sc.seconds + t_prep
            row["methods"][name] = {
                "seconds": sc.seconds,
                "ratio": (exact.seconds + t_prep) / (sc.seconds + t_prep),
                "spearman": spearman(exact.scores, sc.scores),
                "spearman_abs": spearman(exact.scores.abs(), sc.scores.abs()),
                "top50": top_overlap(exact, sc, 50),
            }
            if args.all_curves or name == f"eap-ig{DEFAULT_IG_STEPS}" or name == "eap":
                curve = faithfulness_curve(model, acts, sc)
                best = smallest_circuit(model, acts, sc, 0.9, curve=curve)
                row["methods"][name].update(cpr=curve.cpr, cmd=curve.cmd, circuit_0_9=best.size, recovered=best.recovered)
        curve = faithfulness_curve(model, acts, exact)
        row["exact_cpr"] = curve.cpr
        out["corruptions"][pert] = row
        print(f"{pert}: {len(cf)} examples, {acts.graph.n_edges} edges, exact {exact.seconds:.1f} s (CPR {curve.cpr:.3f})")
        for name, r in row["methods"].items():
            extra = f"  CPR {r['cpr']:.3f} CMD {r['cmd']:.3f} 0.9-circuit {r['circuit_0_9']} edges" if "cpr" in r else ""
            print(f"  {name:9s} {r['seconds']:6.2f} s  x{r['ratio']:6.1f}  spearman {r['spearman']:.3f} "
                  f"(|score| {r['spearman_abs']:.3f})  top50 {r['top50']:.2f}{extra}")
    out["totals_s"] = totals
    print("total over the corruptions (s, preparation included):", {k: round(v, 2) for k, v in totals.items()})
    k = f"eap-ig{DEFAULT_IG_STEPS}"
    if k in totals:
        print(f"exact / {k} time ratio: {totals['exact'] / totals[k]:.1f}x")
    return out


def paper_shape(args: argparse.Namespace) -> dict:
    from grokscope.runs.config import ModelConfig
    from grokscope.runs.model import build_model

    cfg = ModelConfig(n_layers=8, d_model=768, n_heads=12, d_mlp=3072)
    res = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        model = build_model(cfg, d_vocab=2206, n_ctx=4, seed=0, device=dev)
        model.eval()
        g = torch.Generator().manual_seed(0)
        clean = torch.randint(0, 2206, (args.paper_n, 3), generator=g)
        corrupt = clean.clone()
        corrupt[:, 0] = torch.randint(0, 2206, (args.paper_n,), generator=g)
        ans, cf = torch.randint(0, 2206, (2, args.paper_n), generator=g)
        corruption = Corruption(clean, corrupt, ans, cf)
        t0 = time.perf_counter()
        sc = score_edges(model, corruption, "eap-ig", ig_steps=DEFAULT_IG_STEPS)
        total = time.perf_counter() - t0
        res[dev] = {"examples": args.paper_n, "edges": sc.graph.n_edges, "eap_ig_s": total}
        print(f"paper shape (8 x 768, 12 heads) on {dev}: {sc.graph.n_edges} edges, {args.paper_n} examples, "
              f"EAP-IG ({DEFAULT_IG_STEPS} steps) {total:.1f} s")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--split", default="train_inferred")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--ig-steps", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    ap.add_argument("--all-curves", action="store_true", help="faithfulness curve and 0.9-circuit for every method")
    ap.add_argument("--paper-shape", action="store_true")
    ap.add_argument("--paper-n", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = shipped(args)
    if args.paper_shape:
        out["paper_shape"] = paper_shape(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
