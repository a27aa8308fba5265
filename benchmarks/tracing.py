"""Benchmark: full causal tracing of a checkpoint, batched vs one patch per forward pass.

Traces every perturbation x residual state S[l, p] (l = 0..L, every input position) on
``--n`` examples (the paper: 300 training inferred examples) three ways and checks
they give the same numbers:

* ``batched``: :func:`grokscope.patching.tracing.trace` (all (site, example) pairs
  stacked into large batches, one hook per hook name);
* ``loop``: one site per forward pass with plain ``model.run_with_hooks`` (the
  examples of one site batched), the usual way;
* ``tl``: TransformerLens's ``patching.get_act_patch_resid_pre`` (resid_pre layers
  only: it has no final resid_post row), when it works with the bridge;
* ``per-example`` (``--per-example``): one (example, site) per forward pass;
* ``--heads``: also single-head sites (``attn.hook_z``), batched vs loop.

Usage::

    OMP_NUM_THREADS=1 TQDM_DISABLE=1 python benchmarks/tracing.py RUN_DIR [--step S] [--n 300]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from grokscope.lens.logit import resid_hook_names  # noqa: E402
from grokscope.patching.tracing import make_counterfactuals, site_hook_names, trace  # noqa: E402
from grokscope.runs.run import Run  # noqa: E402


def loop_trace(model, cf, names, n_heads=None):
    """Strength [layer, (head,) pos] and ld [example, layer, (head,) pos], one site per forward."""
    n, n_pos = cf.clean.shape
    with torch.no_grad():
        _, cache = model.run_with_cache(cf.corrupt, names_filter=names)
        clean_top = model(cf.clean)[:, -1].argmax(-1)
    heads = [None] if n_heads is None else list(range(n_heads))
    grid = (len(names), n_pos) if n_heads is None else (len(names), n_heads, n_pos)
    changed = torch.zeros(n, *grid, dtype=torch.bool)
    ld = torch.zeros(n, *grid)
    for li, name in enumerate(names):
        for head in heads:
            for pos in range(n_pos):

                def hook(act, hook, name=name, pos=pos, head=head):
                    act = act.clone()
                    if head is None:
                        act[:, pos] = cache[name][:, pos]
                    else:
                        act[:, pos, head] = cache[name][:, pos, head]
                    return act

                with torch.no_grad():
                    logits = model.run_with_hooks(cf.clean, fwd_hooks=[(name, hook)])[:, -1]
                at = (slice(None), li, pos) if head is None else (slice(None), li, head, pos)
                changed[at] = (logits.argmax(-1) != clean_top).cpu()
                ld[at] = (logits.gather(-1, cf.answer[:, None]) - logits.gather(-1, cf.cf_answer[:, None]))[:, 0].cpu()
    return changed.float().mean(0), ld


def per_example_trace(model, cf, names):
    """[layer, pos] strength, one (example, site) per forward pass."""
    n, n_pos = cf.clean.shape
    with torch.no_grad():
        _, cache = model.run_with_cache(cf.corrupt, names_filter=names)
        clean_top = model(cf.clean)[:, -1].argmax(-1)
    changed = torch.zeros(n, len(names), n_pos, dtype=torch.bool)
    for i in range(n):
        for li, name in enumerate(names):
            for pos in range(n_pos):

                def hook(act, hook, name=name, pos=pos, i=i):
                    act = act.clone()
                    act[0, pos] = cache[name][i, pos]
                    return act

                with torch.no_grad():
                    logits = model.run_with_hooks(cf.clean[i : i + 1], fwd_hooks=[(name, hook)])[0, -1]
                changed[i, li, pos] = logits.argmax(-1) != clean_top[i]
    return changed.float().mean(0)


def tl_trace(model, cf):
    """TransformerLens's get_act_patch_resid_pre: [layer, pos] strength (resid_pre only)."""
    from transformer_lens import patching

    with torch.no_grad():
        _, cache = model.run_with_cache(cf.corrupt)
        clean_top = model(cf.clean)[:, -1].argmax(-1)

    def metric(logits):
        return (logits[:, -1].argmax(-1) != clean_top).float().mean()

    with torch.no_grad():
        return patching.get_act_patch_resid_pre(model, cf.clean, cache, metric)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run directory")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--n", type=int, default=300, help="examples (default 300, as the paper)")
    ap.add_argument("--split", default="train_inferred")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--per-example", action="store_true", help="also time one (example, site) per forward")
    ap.add_argument("--heads", action="store_true", help="also time per-head tracing (attn.hook_z)")
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens's get_act_patch_resid_pre")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    run = Run.open(args.run)
    step = run.resolve_step(args.step)
    model = run.load_model(step, device=args.device)
    ds = run.dataset()
    cfs = make_counterfactuals(ds, args.split, n=args.n, seed=args.seed)
    cfs = {k: v for k, v in cfs.items() if len(v)}
    for v in cfs.values():
        dev = next(model.parameters()).device
        v.clean, v.corrupt = v.clean.to(dev), v.corrupt.to(dev)
        v.answer, v.cf_answer = v.answer.to(v.clean.device), v.cf_answer.to(v.clean.device)
    names = resid_hook_names(model.cfg.n_layers)
    n_pos = next(iter(cfs.values())).clean.shape[1]
    n_sites = len(names) * n_pos
    print(f"run {run.path} step {step} task {ds.task}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"device {next(model.parameters()).device}, threads {torch.get_num_threads()}")
    print("examples per perturbation: " + ", ".join(f"{k}={len(v)} (invalid {v.n_invalid})" for k, v in cfs.items()))
    print(f"sites per perturbation: {len(names)} resid states x {n_pos} positions = {n_sites}")

    def timed(fn):
        trace(model, {k: v for k, v in list(cfs.items())[:1]}, site="resid", layers=[0], positions=[0])  # warm up
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    res, t_batched = timed(lambda: trace(model, cfs, site="resid", batch_size=args.batch_size))
    full, t_full = timed(lambda: trace(model, cfs, site="resid", batch_size=args.batch_size, skip_unchanged=False))
    loops, t_loop = timed(lambda: {k: loop_trace(model, v, names) for k, v in cfs.items()})
    n_forward_loop = len(cfs) * (n_sites + 2)
    print(f"batched trace:                    {t_batched:8.3f} s  (rows equal to the clean run skipped)")
    print(f"batched trace, every row run:     {t_full:8.3f} s  identical: "
          f"{torch.equal(full.strength, res.strength) and all(torch.equal(full.ld_patched[p], res.ld_patched[p]) for p in cfs)}")
    print(f"loop, one site per forward:       {t_loop:8.3f} s  ({n_forward_loop} forward passes)  "
          f"ratio {t_loop / t_batched:6.1f}x")
    for k, (pert, (strength, ld)) in enumerate(loops.items()):
        same = torch.equal(res.strength[k], strength)
        err = float((res.ld_patched[pert] - ld).abs().max())
        print(f"  {pert}: strength identical: {same}; max |ld difference| {err:.2e}")
    if not args.no_tl:
        try:
            tl, t_tl = timed(lambda: {k: tl_trace(model, v) for k, v in cfs.items()})
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"TransformerLens get_act_patch_resid_pre failed: {type(e).__name__}: {e}")
        else:
            print(f"TL get_act_patch_resid_pre:       {t_tl:8.3f} s  ratio {t_tl / t_batched:6.1f}x "
                  "(resid_pre rows only)")
            for k, (pert, strength) in enumerate(tl.items()):
                diff = float((res.strength[k, : model.cfg.n_layers] - strength.cpu()).abs().max())
                print(f"  {pert}: max |strength difference| vs batched {diff:.2e}")
    if args.per_example:
        per, t_per = timed(lambda: {k: per_example_trace(model, v, names) for k, v in cfs.items()})
        n_fwd = sum(len(v) for v in cfs.values()) * n_sites
        print(f"per example, one site per forward:{t_per:8.3f} s  ({n_fwd} forward passes)  "
              f"ratio {t_per / t_batched:6.1f}x")
        for k, (pert, strength) in enumerate(per.items()):
            print(f"  {pert}: max |strength difference| vs batched {float((res.strength[k] - strength).abs().max()):.2e}")
    if args.heads:
        hnames = site_hook_names("head", model.cfg.n_layers)
        n_h = model.cfg.n_heads
        hres, t_hb = timed(lambda: trace(model, cfs, site="head", batch_size=args.batch_size))
        hloop, t_hl = timed(lambda: {k: loop_trace(model, v, hnames, n_h) for k, v in cfs.items()})
        print(f"heads ({len(hnames)} layers x {n_h} heads x {n_pos} positions per perturbation):")
        print(f"  batched trace:                  {t_hb:8.3f} s")
        print(f"  loop, one head-site per forward:{t_hl:8.3f} s  ({len(cfs) * (len(hnames) * n_h * n_pos + 2)} "
              f"forward passes)  ratio {t_hl / t_hb:6.1f}x")
        for k, (pert, (strength, ld)) in enumerate(hloop.items()):
            same = torch.equal(hres.strength[k], strength)
            err = float((hres.ld_patched[pert] - ld).abs().max())
            print(f"    {pert}: strength identical: {same}; max |ld difference| {err:.2e}")
    print("strength [perturbation, layer, pos] (batched):")
    for k, pert in enumerate(res.perturbations):
        print(f"  {pert}: " + " | ".join(" ".join(f"{x:.2f}" for x in row) for row in res.strength[k].tolist()))


if __name__ == "__main__":
    main()
