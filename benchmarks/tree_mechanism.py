"""The tree run's mechanism, point by point against Brinkmann et al. (2024) (issue #23).

For one checkpoint (or every one with --all) of a tree run, on ``--n`` unseen trees
(``test_inferred_iid``), with grokscope's own tools (no forward pass re-implemented):

- logit lens: MRR of the next path token at each path position and layer, of the goal
  at ``:`` and of the backward chain at ``:`` (the node m levels above the goal);
- attention: the weight each head puts, from ``:`` and from each path position, on
  each path edge (by the height of its child above the goal and by its offset from the
  node being predicted), on the goal token and on the other edges; layer 0 at each
  edge's child token onto its own parent token (edge information gathered at the child);
- causal tracing of the residual stream under the goal swap and the rewired edge,
  scored where the two paths part, summed by position kind;
- with --discover: the discovered circuit (EAP-IG) under the goal swap.

Usage::

    python benchmarks/tree_mechanism.py checkpoints/tree-small --n 200 --json /tmp/tree_mech.json
    python benchmarks/tree_mechanism.py checkpoints/tree-small --all --n 200 --discover --json /tmp/tree_series.json
    python benchmarks/tree_mechanism.py checkpoints/tree-small --tables /tmp/tree_series.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch

from grokscope.lens.attention import attention_mass, attention_patterns
from grokscope.lens.logit import logit_lens
from grokscope.patching.tracing import make_counterfactuals, trace
from grokscope.runs.run import Run
from grokscope.series.sampling import sample_rows
from grokscope.tasks.builtin.tree_positions import path_layout, position_kinds

SPLIT = "test_inferred_iid"


def nanmean(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.nanmean(x, dim=dim)


def lens_part(model, split, vocab, rows) -> dict:
    """MRR (within the labels) per layer of: the token each path position predicts
    (``path{k}``), the goal at ``:``, and, at the path positions, the path node ``h``
    levels above the goal (``height{h}``: a backward chain would show low heights
    first)."""
    from grokscope.tasks.base import LensTarget

    lay = path_layout(split, vocab, rows)
    width = int(lay.query.max()) + 2
    tok = torch.from_numpy(split.tokens[rows, :width])
    n = len(rows)
    targets = [LensTarget("goal@colon", lay.colon_pos, split.meta["goal"][rows], vocab.value_ids)]
    for k in range(int(lay.depth.max()) + 1):
        keep = lay.depth >= k
        if keep.sum() >= 10:
            targets.append(LensTarget(f"path{k}", np.where(keep, lay.query[:, k], lay.colon_pos),
                                      np.where(keep, lay.path[np.arange(n), np.minimum(k, lay.depth)], 0), vocab.value_ids))
    res = logit_lens(model, tok, targets)
    out = {"goal@colon": res.mrr("goal@colon").tolist(), "path": {}}
    for t in targets[1:]:
        k = int(t.name[4:])
        keep = torch.from_numpy(lay.depth >= k)
        out["path"][t.name] = (1.0 / res.ranks[t.name][:, keep].double()).mean(1).tolist()
    # at path position k (k < depth), the node h levels above the goal, for every h < depth - k
    by_h: dict[int, list] = defaultdict(list)
    for k in range(1, int(lay.depth.max())):
        idx = np.flatnonzero(lay.depth > k)
        if len(idx) < 10:
            continue
        for h in range(int(lay.depth[idx].max()) - k + 1):
            sel = idx[lay.depth[idx] - h >= k]
            if len(sel) < 10:
                continue
            tg = LensTarget("x", lay.query[sel, k], lay.path[sel, lay.depth[sel] - h], vocab.value_ids)
            r = logit_lens(model, tok[sel], [tg]).ranks["x"]
            by_h[h].append(1.0 / r.double())
    out["height_at_path"] = {f"height{h}": torch.cat(v, 1).mean(1).tolist() for h, v in by_h.items()}
    return out


def attention_part(model, split, vocab, rows) -> dict:
    lay = path_layout(split, vocab, rows)
    width = int(lay.query.max()) + 1
    tok = torch.from_numpy(split.tokens[rows, :width])
    pat = attention_patterns(model, tok)
    n_layers, n_heads = pat.shape[:2]
    n = len(rows)
    d_max = int(lay.depth.max())
    edges = lay.edge_tokens()  # [example, t, 3]
    # at ':' : mass on the edge whose child is m levels above the goal
    by_height = np.full((n, d_max, 3), -1)
    for i in range(n):
        d = int(lay.depth[i])
        for m in range(d):
            by_height[i, m] = edges[i, d - m]
    colon = attention_mass(model, tok, lay.colon_pos, by_height, pattern=pat)  # [l, h, e, m]
    goal_at_colon = attention_mass(model, tok, lay.colon_pos, np.full((n, 1), lay.goal_pos), pattern=pat)[..., 0]
    # at path positions k >= 1: mass by offset j = t - k of the edge into path[t] (j = 0: the edge whose child
    # is the token to predict; j = -1: the edge into the current node)
    offsets = list(range(-2, d_max))
    acc = defaultdict(list)
    goal_acc = []
    for k in range(1, d_max + 1):
        have = lay.depth >= k
        if not have.any():
            continue
        idx = np.flatnonzero(have)
        q = lay.query[idx, k]
        groups = np.full((len(idx), len(offsets), 3), -1)
        for a, i in enumerate(idx):
            for b, j in enumerate(offsets):
                t = k + j
                if 1 <= t <= lay.depth[i]:
                    groups[a, b] = edges[i, t]
        m = attention_mass(model, tok[idx], q, groups, pattern=pat[:, :, idx])
        for b, j in enumerate(offsets):
            acc[j].append(m[..., b])
        goal_acc.append(attention_mass(model, tok[idx], q, np.full((len(idx), 1), lay.goal_pos), pattern=pat[:, :, idx])[..., 0])
    path_by_offset = {j: nanmean(torch.cat(v, -1), -1).tolist() for j, v in acc.items()}
    # at path positions k < depth: mass on the path edge whose child is h levels above the goal
    # (h = 0: the goal's edge), per token of the edge (parent, '>', child)
    hacc = defaultdict(list)
    for k in range(1, d_max):
        idx = np.flatnonzero(lay.depth > k)
        if not len(idx):
            continue
        for h in range(d_max - k):
            sel = idx[lay.depth[idx] - h > k]
            if len(sel):
                groups = edges[sel, lay.depth[sel] - h][:, :, None]
                hacc[h].append(attention_mass(model, tok[sel], lay.query[sel, k], groups, pattern=pat[:, :, sel]))
    path_by_height = {h: torch.cat(v, 2).mean(2).tolist() for h, v in hacc.items()}  # h -> [l][h][member]
    # which token of the next edge (offset 0) each head reads: parent, '>', child
    members = []
    for k in range(1, d_max + 1):
        idx = np.flatnonzero(lay.depth >= k)
        if len(idx):
            groups = edges[idx, k][:, :, None]  # [example, 3 members as groups, 1]
            members.append(attention_mass(model, tok[idx], lay.query[idx, k], groups, pattern=pat[:, :, idx]))
    next_edge_members = torch.cat(members, 2).mean(2).tolist()  # [l][h][parent, arrow, child]
    # from the goal token: mass on the path edges by height (a chain run at the goal's position?)
    goal_by_height = attention_mass(model, tok, lay.goal_pos, by_height, pattern=pat)
    # layer 0 at each edge's child token: mass on its own parent token and arrow
    n_edges = (lay.colon_pos - 1) // 4 + 0
    own = []
    for e in range(n_edges):
        child = 4 * e + 2
        own.append(attention_mass(model, tok, child, np.tile([[[4 * e, 4 * e + 1]]], (n, 1, 1)), pattern=pat)[..., 0])
    return {
        "colon_by_height": nanmean(colon, 2).tolist(),          # [l][h][m]
        "colon_goal": goal_at_colon.mean(-1).tolist(),          # [l][h]
        "path_by_offset": path_by_offset,                       # j -> [l][h]
        "next_edge_members": next_edge_members,
        "path_by_height": path_by_height,                       # h -> [l][h][parent, arrow, child]                 # [l][h][parent, arrow, child]
        "goal_by_height": nanmean(goal_by_height, 2).tolist(),  # [l][h][m]
        "path_goal": torch.cat(goal_acc, -1).mean(-1).tolist(),  # [l][h]
        "child_to_own_edge": torch.stack(own, -1).mean((-1, -2)).tolist(),  # [l][h]
        "shape": [n_layers, n_heads],
    }


def heights_part(model, split, vocab) -> dict:
    """Teacher-forced accuracy of each path step (every tree of the split) by the height of the
    node it predicts above the goal (0: the goal itself)."""
    lay = path_layout(split, vocab)
    with torch.no_grad():
        pred = model(torch.from_numpy(split.tokens)).argmax(-1).numpy()
    hits: dict[int, list] = defaultdict(list)
    for i in range(len(split)):
        d = int(lay.depth[i])
        for k in range(1, d + 1):
            hits[d - k].append(bool(pred[i, lay.query[i, k]] == lay.path[i, k]))
    return {str(h): {"acc": float(np.mean(v)), "n": len(v)} for h, v in sorted(hits.items())}


def tracing_part(model, ds, n, seed) -> dict:
    cfs = make_counterfactuals(ds, SPLIT, n=n, seed=seed)
    kinds = position_kinds((int(ds.splits[SPLIT].target_pos[0]) + 3) // 4)
    out = {}
    for pert, cf in cfs.items():
        res = trace(model, {pert: cf}, site="resid")
        s = res.strength[0]  # [layer, pos]
        by_kind: dict[str, torch.Tensor] = {}
        for p in range(s.shape[1]):
            by_kind[kinds[p]] = torch.maximum(by_kind.get(kinds[p], torch.zeros(s.shape[0])), s[:, p])
        # per-example relative position: the replaced token, the path prefix, the scored position
        sp, ch = cf.score_pos, cf.changed_pos
        ex = torch.arange(len(cf))
        changed = res.changed[pert].double()  # [example, layer, pos]
        out[pert] = {
            "n": len(cf), "clean_acc": res.clean_accuracy(pert), "reliable": res.reliable[pert],
            "max_by_kind": {k: v.tolist() for k, v in by_kind.items()},
            "at_replaced": changed[ex, :, ch].mean(0).tolist(),
            "at_scored": changed[ex, :, sp].mean(0).tolist(),
            "at_goal": changed[:, :, cf.roles["goal"]].mean(0).tolist(),
            "at_colon": changed[:, :, cf.roles["colon"]].mean(0).tolist(),
            "path_prefix": [float(np.mean([changed[i, layer, cf.roles["colon"] + 1 : int(sp[i])].max().item()
                                           if int(sp[i]) > cf.roles["colon"] + 1 else 0.0 for i in range(len(cf))]))
                            for layer in range(changed.shape[1])],
        }
    return out


def discovery_part(run, step, n, seed) -> dict:
    from grokscope.discovery.series import checkpoint_discovery

    d = checkpoint_discovery(run, step, split=SPLIT, perturbation="goal", n=n, seed=seed, measure_edges=50)
    if d.get("empty"):
        return {"empty": True}
    kinds = position_kinds((int(run.dataset().splits[SPLIT].target_pos[0]) + 3) // 4)
    circ = d["circuit"]
    edges = [d["edges"][e] for e in circ["edges"]]
    share: dict[str, float] = defaultdict(float)
    heads: dict[str, float] = defaultdict(float)
    for e in edges:
        w = abs(e["score"])
        share[kinds[d["nodes"][e["src"]]["position"]]] += w
        for node in (d["nodes"][e["src"]], d["nodes"][e["dst"]]):
            if node["kind"] == "head" or node.get("head") is not None:
                heads[f"L{node['layer']}.H{node['head']}"] += w
    total = sum(abs(e["score"]) for e in edges) or 1.0
    return {"size": circ["size"], "recovered": circ["recovered"], "n_edges": d["graph"]["n_edges"],
            "clean_metric": d["clean_metric"], "corrupt_metric": d["corrupt_metric"], "reliable": d["reliable"],
            "share_by_kind": {k: v / total for k, v in share.items()},
            "head_share": {k: v / total for k, v in sorted(heads.items(), key=lambda kv: -kv[1])},
            "top_edges": [e["name"] for e in edges[:12]]}


def role_heads(a: dict) -> dict:
    """Each role's head, the one that attends most to the role's place at one checkpoint's
    attention record: ``{role: (getter(attention, layer, head), layer, head)}``."""
    getters = {
        "edge gatherer (child -> own parent)": lambda a, ly, h: a["child_to_own_edge"][ly][h],
        "goal copy (path -> goal)": lambda a, ly, h: a["path_goal"][ly][h],
        **{f"{'goal' if m == 0 else f'{m} above goal'}'s edge (path -> its child)":
           (lambda a, ly, h, m=m: a["path_by_height"][str(m)][ly][h][2] if str(m) in a["path_by_height"] else float("nan"))
           for m in range(3) if str(m) in a["path_by_height"]},
        "next edge's child (path -> it)": lambda a, ly, h: a["next_edge_members"][ly][h][2],
    }
    n_layers, n_heads = a["shape"]
    out = {}
    for role, get in getters.items():
        ly, h = max(((ly, h) for ly in range(n_layers) for h in range(n_heads)), key=lambda lh: get(a, *lh))
        out[role] = (get, ly, h)
    return out


def tables(path: str, run_dir: str) -> None:
    """Print the markdown tables of docs/REPRODUCTION.md from a --json output."""
    data = {int(k): v for k, v in json.loads(open(path).read()).items()}
    evals = sorted((r["step"], r["acc"]) for r in Run.open(run_dir).metrics())
    acc = {s_: next(a for st, a in reversed(evals) if st <= s_) for s_ in data}  # the last evaluation at or before
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    heads = role_heads(data[max(data)]["attention"])
    n_heights = max(int(h[len("height"):]) for r in data.values() for h in r.get("lens", {}).get("height_at_path", {})) + 1
    print("role heads, picked at the last step: " + ", ".join(f"{role} L{ly}.H{h}" for role, (_, ly, h) in heads.items()))
    print()
    print("| step | test ID acc (last eval) | " + " | ".join(f"{role} L{ly}.H{h}" for role, (_, ly, h) in heads.items())
          + " | " + " | ".join(f"lens: height {h} at path (first S[l] with MRR >= 0.8)" for h in range(n_heights)) + " |")
    print("|---|---|" + "---|" * (len(heads) + n_heights))
    for step, r in sorted(data.items()):
        a, lens = r.get("attention", {}), r.get("lens", {}).get("height_at_path", {})
        cells = [f(acc.get(step, {}).get("test_inferred_iid"))]
        cells += [f(get(a, ly, h)) if a else "-" for get, ly, h in heads.values()]
        for h in range(n_heights):
            mrr = lens.get(f"height{h}")
            first = next((ly for ly, x in enumerate(mrr or []) if x >= 0.8), None)
            cells.append("-" if mrr is None else "never" if first is None else f"S[{first}] ({mrr[first]:.2f})")
        print(f"| {step:,} | " + " | ".join(cells) + " |")
    print()
    hs = sorted({h for r in data.values() for h in r.get("heights", {})}, key=int)
    if hs:
        print("| step | " + " | ".join(f"height {h}" for h in hs) + " |")
        print("|---|" + "---|" * len(hs))
        for step, r in sorted(data.items()):
            hh = r.get("heights", {})
            print(f"| {step:,} | " + " | ".join(f"{hh[h]['acc']:.3f} (n={hh[h]['n']})" if h in hh else "-" for h in hs) + " |")
        print()
    print("| step | perturbation | n | clean acc | changed, S[l] at the replaced token (l = 0, 1, ...) "
          "| changed, S[l] at the scored position | max over other positions (kind: S[l]) |")
    print("|---|---|---|---|---|---|---|")
    for step, r in sorted(data.items()):
        for pert, t in r.get("tracing", {}).items():
            other = {k: max(v) for k, v in t["max_by_kind"].items() if k not in ("goal", "arrow") and max(v) > 0.05}
            print(f"| {step:,} | {pert} | {t['n']} | {t['clean_acc']:.3f} | " + " ".join(f"{x:.2f}" for x in t["at_replaced"])
                  + " | " + " ".join(f"{x:.2f}" for x in t["at_scored"]) + " | "
                  + (", ".join(f"{k} {v:.2f}" for k, v in other.items()) or "none > 0.05") + " |")
    print()
    print("| step | circuit edges (of all) | recovered | clean / all-patched logit diff | |score| by position kind | heads by share of |score| |")
    print("|---|---|---|---|---|---|")
    for step, r in sorted(data.items()):
        d = r.get("discovery")
        if not d or d.get("empty"):
            continue
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d["share_by_kind"].items(), key=lambda kv: -kv[1]) if v >= 0.02)
        heads = ", ".join(f"{k} {v:.2f}" for k, v in list(d["head_share"].items())[:5])
        rel = "" if d["reliable"] else " (noise)"
        print(f"| {step:,} | {d['size']} ({d['n_edges']:,}) | {d['recovered']:.2f} | {d['clean_metric']:.2f} / "
              f"{d['corrupt_metric']:.2f}{rel} | {kinds} | {heads} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--step", type=int)
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--discover", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: lens,attention,heights,tracing")
    ap.add_argument("--json")
    ap.add_argument("--tables", help="print the markdown tables of this --json output and exit")
    args = ap.parse_args()
    if args.tables:
        tables(args.tables, args.run)
        return
    run = Run.open(args.run)
    ds = run.dataset()
    split = ds.splits[SPLIT]
    rows = sample_rows(len(split), args.n, args.seed)
    steps = run.steps() if args.all else [args.step or run.steps()[-1]]
    skip = set(filter(None, args.skip.split(",")))
    out = {}
    for step in steps:
        t0 = time.time()
        model = run.load_model(step)
        rec = {}
        if "lens" not in skip:
            rec["lens"] = lens_part(model, split, ds.vocab, rows)
        if "attention" not in skip:
            rec["attention"] = attention_part(model, split, ds.vocab, rows)
        if "heights" not in skip:
            rec["heights"] = heights_part(model, split, ds.vocab)
        if "tracing" not in skip:
            rec["tracing"] = tracing_part(model, ds, args.n, args.seed)
        if args.discover:
            rec["discovery"] = discovery_part(run, step, args.n, args.seed)
        rec["seconds"] = round(time.time() - t0, 1)
        out[step] = rec
        print(f"step {step}: {rec['seconds']} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
