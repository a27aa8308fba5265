"""Where EAP-IG's edge scores go wrong, and three attempts to fix them cheaply (issue 27).

On the shipped composition run (final checkpoint, 300 ``train_inferred`` facts, h'/r1'/r2'),
against exact patching of every edge, with the agreement measures of
``benchmarks/discovery.py`` (Pearson over all edges; Spearman and sign agreement among the
edges carrying 90% of the exact effect; CPR minus exact's own ranking's CPR):

* ``--paths``: the integration grid of EAP-IG on the input embeddings (right Riemann, the
  default; midpoint; 5-point Gauss-Legendre; only the half of the path near the clean or
  the corrupt input);
* ``--bias``: the 90%-mass edges, exact beside EAP-IG, and their ratio;
* ``--calibrate``: EAP-IG rescaled per group of edges (one reader at one position, or that
  and the writer's layer) by the exact score of each group's top-estimated edge, the
  groups touched by the top ``M`` estimates; measured edges keep their exact score;
* ``--start-at-layer``: CPU time of a forward pass started at block ``L``
  (``TransformerBridge.forward(resid, start_at_layer=L)``) against the full pass: could
  one edge into a late reader be measured exactly for less than a whole forward pass?

Usage::

    OMP_NUM_THREADS=1 python benchmarks/eap_ig_errors.py checkpoints/composition-small \
        --paths --bias --calibrate --start-at-layer [--exact-cache DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from discovery import agreement, mass_edges  # noqa: E402

from grokscope.discovery.faithfulness import faithfulness_curve  # noqa: E402
from grokscope.discovery.scores import Corruption, EdgeScores, path_scores, prepare, score_edges  # noqa: E402
from grokscope.patching.tracing import make_counterfactuals  # noqa: E402
from grokscope.runs.run import Run  # noqa: E402


def grids(k: int = 5) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    even = torch.full((k,), 1.0 / k)
    x, w = np.polynomial.legendre.leggauss(k)
    return {
        "right Riemann (default)": (torch.arange(1, k + 1) / k, even),
        "midpoint": ((torch.arange(k) + 0.5) / k, even),
        "Gauss-Legendre": (torch.tensor((x + 1) / 2).float(), torch.tensor(w / 2).float()),
        "clean half": (0.5 + 0.5 * (torch.arange(k) + 0.5) / k, even),
        "corrupt half": (0.5 * (torch.arange(k) + 0.5) / k, even),
    }


def calibrated(est: torch.Tensor, exact: torch.Tensor, key: torch.Tensor, m: int) -> tuple[torch.Tensor, int]:
    """EAP-IG rescaled per group (``key``) by the exact/estimate ratio of the group's top-estimated edge."""
    out, measured = est.clone(), 0
    groups: list[int] = []
    for e in torch.argsort(est.abs(), descending=True)[:m].tolist():
        if int(key[e]) not in groups:
            groups.append(int(key[e]))
    for k in groups:
        members = torch.nonzero(key == k).flatten()
        top = members[torch.argmax(est[members].abs())]
        ratio = float(exact[top] / est[top]) if float(est[top]) != 0 else 1.0
        out[members] = est[members] * ratio
        out[top] = exact[top]
        measured += 1
    return out, measured


def line(name: str, exact: torch.Tensor, sc: torch.Tensor, gap: float, extra: str = "") -> str:
    ag = agreement(exact, sc)
    return (f"  {name:34s} Pearson {ag['pearson']:.3f}  Spearman@90% {ag['spearman_mass']:.3f}  "
            f"sign@90% {ag['sign_mass']:.3f}  CPR gap {gap:+.4f}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--paths", action="store_true")
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--start-at-layer", action="store_true")
    ap.add_argument("--exact-cache", help="a folder to keep the exact scores in (they take ~70 CPU s)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = Run.open(args.run)
    model = run.load_model(run.resolve_step(None)).eval()
    cfs = make_counterfactuals(run.dataset(), "train_inferred", n=args.n, seed=0)
    if args.paths or args.bias or args.calibrate:
        for pert, cf in cfs.items():
            corruption = Corruption.from_counterfactuals(cf)
            acts = prepare(model, corruption)
            g = acts.scored_graph
            cache = Path(args.exact_cache) / f"exact_{pert}_{args.n}.pt" if args.exact_cache else None
            if cache is not None and cache.is_file():
                exact = torch.load(cache)
            else:
                exact = score_edges(model, corruption, "exact", acts=acts).scores
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(exact, cache)
            exact_cpr = faithfulness_curve(model, acts, EdgeScores(g, exact, "exact", 1, 0.0)).cpr

            def gap(sc: torch.Tensor) -> float:
                return faithfulness_curve(model, acts, EdgeScores(g, sc, "x", 1, 0.0)).cpr - exact_cpr  # noqa: B023

            print(f"{pert}': {len(cf)} examples, {g.n_edges} edges, {len(mass_edges(exact))} carry 90% of |exact|", flush=True)
            est = score_edges(model, corruption, "eap-ig", acts=acts).scores
            if args.paths:
                for name, (al, wt) in grids().items():
                    sc = path_scores(model, acts, al.float(), wt.float())
                    print(line(f"path: {name}", exact, sc, gap(sc)), flush=True)
            if args.bias:
                for e in mass_edges(exact).tolist():
                    print(f"  {g.edge_name(e):28s} exact {float(exact[e]):+8.4f}  EAP-IG {float(est[e]):+8.4f}  "
                          f"ratio {float(est[e] / exact[e]):.2f}")
            if args.calibrate:
                p, r, w = g.edge_index.unbind(1)
                keys = {"reader@pos": p * 10000 + r,
                        "reader@pos x writer layer": (p * 10000 + r) * 100 + acts.graph.writer_layer[w] + 1}
                for kname, key in keys.items():
                    for m in (20, 40, 80):
                        sc, measured = calibrated(est, exact, key, m)
                        print(line(f"calibrated by {kname}, M={m}", exact, sc, gap(sc), f"  measured {measured}"),
                              flush=True)
    if args.start_at_layer:
        split = run.dataset().splits["train_inferred"]
        tok = torch.as_tensor(split.tokens[: args.n])[:, : int(split.target_pos.max()) + 1]
        with torch.no_grad():
            _, cache = model.run_with_cache(tok, names_filter=lambda n: n.endswith("hook_resid_pre"))
            full = model(tok)

            def cpu(fn, k: int = 20) -> float:
                c0 = time.process_time()
                for _ in range(k):
                    fn()
                return (time.process_time() - c0) / k * 1000

            print(f"forward of {tuple(tok.shape)} tokens: full {cpu(lambda: model(tok)):.1f} CPU ms")
            for layer in range(model.cfg.n_layers):
                x = cache[f"blocks.{layer}.hook_resid_pre"]
                same = float((model(x, start_at_layer=layer) - full).abs().max())
                print(f"  start_at_layer={layer}: {cpu(lambda: model(x, start_at_layer=layer)):.1f} CPU ms "  # noqa: B023
                      f"(max |logit difference| from the full pass {same:.1e})")


if __name__ == "__main__":
    main()
