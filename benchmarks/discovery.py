"""Benchmark: edge scores on a shipped run, every method against exact edge patching.

For every edge of the model's component graph, ``--n`` examples (default 300) of
``train_inferred`` and each of the task's counterfactual corruptions:

* exact patching of every edge, batched (edges x examples; the ground truth);
* EAP, EAP-IG (on the input embeddings, MIB's EAP-IG-inputs) with ``K`` path points
  for each ``--ig-steps``, EAP-IG on activations (``--act-steps``) and EAP-IG refined
  by exact patching of its top edges (``eap-ig-exact``, one row per ``--coverage``);
* per method: CPU seconds of this process (1 thread; wall seconds too, but on a shared
  machine only CPU time is comparable) and the speed-up over exact (preparation
  counted on both sides); agreement with exact *where the effect is*: the edges
  that carry 90% of the total ``|exact|`` effect, their Spearman correlation and
  sign agreement, and Pearson over all edges; the faithfulness-curve area (CPR) of
  the method's ranking beside exact's own ranking's;
* the three corruptions together: CPU seconds and speed-up per method;
* ``--paper-shape``: the time of EAP-IG on a random model of the paper's shape
  (8 layers x 768, 12 heads, d_mlp 3072) on this machine's CPU (and on CUDA when
  available).

Usage::

    OMP_NUM_THREADS=1 TQDM_DISABLE=1 python benchmarks/discovery.py checkpoints/composition-small \
        [--step S] [--n 300] [--ig-steps 1 2 3 5 10] [--act-steps 5] [--coverage 0.9 0.95] [--paper-shape]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from grokscope.discovery.faithfulness import faithfulness_curve, smallest_circuit  # noqa: E402
from grokscope.discovery.methods import refine  # noqa: E402
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


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def mass_edges(exact: torch.Tensor, share: float = 0.9) -> torch.Tensor:
    """The fewest edges, by decreasing ``|exact|``, that carry ``share`` of the total ``|exact|``."""
    a = exact.abs().double()
    order = torch.argsort(a, descending=True, stable=True)
    cum = torch.cumsum(a[order], 0) / a.sum()
    return order[: int((cum < share).sum()) + 1]


def agreement(exact: torch.Tensor, scores: torch.Tensor) -> dict:
    """Pearson over all edges; Spearman and sign agreement among the 90%-mass edges of ``exact``."""
    top = mass_edges(exact)
    return {"pearson": _pearson(exact, scores), "mass_edges": len(top), "spearman_mass": spearman(exact[top], scores[top]),
            "sign_mass": float((torch.sign(exact[top]) == torch.sign(scores[top])).double().mean()),
            "spearman_all": spearman(exact, scores)}


def _timed(fn, *args, **kw):  # (fn(*args, **kw), wall s, CPU s of this process)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _refined(model, corruption, acts, coverage):
    est = score_edges(model, corruption, "eap-ig", ig_steps=DEFAULT_IG_STEPS, acts=acts)
    return refine(model, corruption, est, coverage=coverage, acts=acts)


def shipped(args: argparse.Namespace) -> dict:
    run = Run.open(args.run)
    step = run.resolve_step(args.step)
    model = run.load_model(step)
    model.eval()
    cfs = make_counterfactuals(run.dataset(), args.split, n=args.n, seed=0)
    out: dict = {"run": str(args.run), "step": step, "split": args.split, "threads": torch.get_num_threads(),
                 "corruptions": {}}
    names = (["eap"] + [f"eap-ig{k}" for k in args.ig_steps] + [f"eap-ig-activations{k}" for k in args.act_steps]
             + [f"eap-ig-exact@{c:g}" for c in args.coverage])
    totals = {n: [0.0, 0.0] for n in ["exact"] + names}  # [wall, cpu], preparation included
    for pert, cf in cfs.items():
        corruption = Corruption.from_counterfactuals(cf)
        acts, t_prep, c_prep = _timed(prepare, model, corruption)
        exact, t_ex, c_ex = _timed(score_edges, model, corruption, "exact", acts=acts)
        totals["exact"][0] += t_ex + t_prep
        totals["exact"][1] += c_ex + c_prep
        exact_curve = faithfulness_curve(model, acts, exact)
        row = {"examples": len(cf), "edges": acts.graph.n_edges, "prepare_s": t_prep, "prepare_cpu_s": c_prep,
               "exact_s": t_ex, "exact_cpu_s": c_ex, "exact_cpr": exact_curve.cpr,
               "mass_edges": len(mass_edges(exact.scores)), "methods": {}}
        for name in names:
            if name == "eap":
                sc, t, c = _timed(score_edges, model, corruption, "eap", acts=acts)
            elif name.startswith("eap-ig-activations"):
                k = int(name[len("eap-ig-activations"):])
                sc, t, c = _timed(score_edges, model, corruption, "eap-ig-activations", ig_steps=k, acts=acts)
            elif name.startswith("eap-ig-exact@"):
                sc, t, c = _timed(_refined, model, corruption, acts, float(name.split("@")[1]))
            else:
                k = int(name[len("eap-ig"):])
                sc, t, c = _timed(score_edges, model, corruption, "eap-ig", ig_steps=k, acts=acts)
            totals[name][0] += t + t_prep
            totals[name][1] += c + c_prep
            curve = faithfulness_curve(model, acts, sc)
            r = {"seconds": t, "cpu_s": c, "speedup": (c_ex + c_prep) / (c + c_prep),
                 "speedup_wall": (t_ex + t_prep) / (t + t_prep), **agreement(exact.scores, sc.scores),
                 "cpr": curve.cpr, "cpr_gap": curve.cpr - exact_curve.cpr, "top50": top_overlap(exact, sc, 50)}
            if getattr(sc, "measured", None) is not None:
                r["measured_edges"] = int(sc.measured.sum())
            if args.all_curves:
                best = smallest_circuit(model, acts, sc, 0.9, curve=curve)
                r.update(circuit_0_9=best.size, recovered=best.recovered)
            row["methods"][name] = r
        out["corruptions"][pert] = row
        print(f"{pert}': {len(cf)} examples, {acts.graph.n_edges} edges ({row['mass_edges']} carry 90% of |exact|), "
              f"exact {c_ex:.1f} CPU s ({t_ex:.1f} s wall), preparation {c_prep:.2f} CPU s, exact's CPR {exact_curve.cpr:.3f}")
        for name, r in row["methods"].items():
            extra = f"  measured {r['measured_edges']}" if "measured_edges" in r else ""
            print(f"  {name:22s} {r['cpu_s']:6.2f} CPU s  x{r['speedup']:6.1f}  Pearson {r['pearson']:.3f}  "
                  f"Spearman@90% {r['spearman_mass']:.3f}  sign@90% {r['sign_mass']:.3f}  "
                  f"CPR {r['cpr']:.3f} ({r['cpr_gap']:+.3f}){extra}", flush=True)
    out["totals"] = {k: {"wall_s": v[0], "cpu_s": v[1]} for k, v in totals.items()}
    ex_cpu = totals["exact"][1]
    print(f"the three together (CPU s, preparation included): exact {ex_cpu:.1f}")
    for name in names:
        print(f"  {name:22s} {totals[name][1]:6.2f} CPU s  x{ex_cpu / totals[name][1]:5.1f}"
              f"  (wall {totals[name][0]:.2f} s, x{totals['exact'][0] / totals[name][0]:.1f})")
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


def gpt2_small_child(method: str, n: int, n_pos: int, max_measured: int, batch_size: int | None = None) -> dict:
    """One method on a random-init GPT-2-small-shaped bridge (12 x 12 heads, d_model 768, HF's
    GPT-2 vocabulary), booted offline through TransformerBridge; this process's peak memory."""
    import tempfile

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens.model_bridge import TransformerBridge

    cfg = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=64)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    words = ["<|endoftext|>"] + [f"w{i}" for i in range(10)]  # a stand-in tokenizer: the prompts are token ids
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=words[0], eos_token=words[0],
                                               unk_token=words[0], pad_token=words[0])
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del hf
        tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp, add_bos_token=True)
        model = TransformerBridge.boot_transformers(tmp, device="cpu", tokenizer=tok).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.vocab_size, (n, n_pos), generator=g)
    corrupt = clean.clone()
    corrupt[:, n_pos // 2] = torch.randint(0, cfg.vocab_size, (n,), generator=g)
    ans, cf = torch.randint(0, cfg.vocab_size, (2, n), generator=g)
    corruption = Corruption(clean, corrupt, ans, cf)
    base = _peak_mb()
    (acts, sc), t, c = _timed(_prep_and_score, model, corruption, method, max_measured, batch_size)
    out = {"method": method, "batch_size": batch_size, "examples": n, "positions": n_pos, "edges": acts.graph.n_edges, "wall_s": t, "cpu_s": c,
           "peak_rss_mb": _peak_mb(), "rss_before_mb": base}
    if getattr(sc, "measured", None) is not None:
        out["measured_edges"] = int(sc.measured.sum())
    return out


def _peak_mb() -> float:
    """This process's own peak resident set (VmHWM; ``ru_maxrss`` would start at the parent's)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prep_and_score(model, corruption, method, max_measured=None, batch_size=None):
    acts = prepare(model, corruption) if batch_size is None else prepare(model, corruption, batch_size=batch_size)
    if method == "eap-ig-exact":
        return acts, refine(model, corruption, score_edges(model, corruption, "eap-ig", acts=acts), acts=acts,
                            max_measured=max_measured)
    return acts, score_edges(model, corruption, method, acts=acts)


def gpt2_small(args: argparse.Namespace) -> dict:
    import subprocess
    import sys

    res = {}
    for method in args.gpt2_methods:
        cmd = [sys.executable, __file__, "--gpt2-child", method, "--gpt2-n", str(args.gpt2_n),
               "--gpt2-pos", str(args.gpt2_pos), "--threads", str(args.threads),
               "--gpt2-max-measured", str(args.gpt2_max_measured)]
        if args.gpt2_batch_size:
            cmd += ["--gpt2-batch-size", str(args.gpt2_batch_size)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        res[method if not args.gpt2_batch_size else f"{method}@batch{args.gpt2_batch_size}"] = r
        extra = f", {r['measured_edges']} measured" if "measured_edges" in r else ""
        bs = f" (batch_size {args.gpt2_batch_size})" if args.gpt2_batch_size else ""
        print(f"GPT-2-small-shaped bridge, {r['examples']} prompts x {r['positions']} tokens, {r['edges']} edges: "
              f"{method}{bs} {r['cpu_s']:.1f} CPU s ({r['wall_s']:.1f} s wall), peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(model loaded: {r['rss_before_mb']:.0f} MB){extra}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="checkpoints/composition-small")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--split", default="train_inferred")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--ig-steps", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    ap.add_argument("--act-steps", type=int, nargs="*", default=[5], help="eap-ig-activations path points (none: skip)")
    ap.add_argument("--coverage", type=float, nargs="*", default=[0.9, 0.95], help="eap-ig-exact stop rule shares")
    ap.add_argument("--all-curves", action="store_true", help="faithfulness curve and 0.9-circuit for every method")
    ap.add_argument("--paper-shape", action="store_true")
    ap.add_argument("--paper-n", type=int, default=100)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpt2", action="store_true", help="also time a random GPT-2-small-shaped bridge")
    ap.add_argument("--gpt2-methods", nargs="+", default=["eap", "eap-ig", "eap-ig-exact"])
    ap.add_argument("--gpt2-n", type=int, default=32)
    ap.add_argument("--gpt2-pos", type=int, default=20)
    ap.add_argument("--gpt2-max-measured", type=int, default=32, help="eap-ig-exact: edges measured at most")
    ap.add_argument("--gpt2-batch-size", type=int, default=None, help="prepare(batch_size=...): examples per chunk")
    ap.add_argument("--gpt2-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip-shipped", action="store_true", help="only the GPT-2-small-shaped timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpt2_child:
        print(json.dumps(gpt2_small_child(args.gpt2_child, args.gpt2_n, args.gpt2_pos, args.gpt2_max_measured,
                                          args.gpt2_batch_size)))
        return
    out = {} if args.skip_shipped else shipped(args)
    if args.gpt2:
        out["gpt2_small"] = gpt2_small(args)
    if args.paper_shape:
        out["paper_shape"] = paper_shape(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
