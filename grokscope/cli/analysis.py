"""`grokscope report / lens / trace / circuit`: analyses of a run's checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from grokscope.cli.common import (
    UserError,
    _analysis_run,
    _analysis_steps,
    _check_examples,
    _check_split_arg,
    _grid,
    _print_table,
    _split_or_default,
    _write_json,
)


def report(
    run_dir: Path = typer.Argument(Path("checkpoints/composition-small"), help="Run directory (default checkpoints/composition-small)."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default reports/<run name>)."),
    steps: str = typer.Option("all", "--steps", help="Checkpoints to analyse: all, or comma-separated steps N,M,..."),
    examples: int = typer.Option(300, "--examples", help="Training inferred examples per checkpoint (paper: 300)."),
    seed: int = typer.Option(0, "--seed", help="Seed that draws the examples (the same at every checkpoint)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything instead of reading RUN/.grokscope-cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    workers: int | None = typer.Option(
        None, "--workers", min=1,
        help="Processes that analyse checkpoints side by side, one thread each (default: the --threads setting)."),
) -> None:
    """Analyse every checkpoint and write report.html (self-contained) and summary.json.

    Example: grokscope report checkpoints/composition-small --out reports/small --steps all --examples 300
    """
    from grokscope.report import write_report
    from grokscope.series.engine import parse_steps

    _check_examples(examples)
    run = _analysis_run(run_dir)
    try:
        chosen = parse_steps(steps, run.steps())
    except ValueError as e:
        raise UserError(f"--steps: {e}") from None
    if not chosen:
        raise UserError(f"{run.path}: holds no checkpoint yet; train it first")
    if workers is None:
        workers = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    rep = write_report(run, out, steps=chosen, n=examples, seed=seed, progress=not quiet, cache=not no_cache,
                       workers=workers)
    s = rep.series
    final = s.checkpoints[-1]
    typer.echo(f"report of {run.path} ({s.task}, {len(s.steps)} checkpoints, {examples} examples each)")
    _print_table([
        ("report", str(rep.html)),
        ("summary", str(rep.summary)),
        ("grokking gap", s.grokking.get("grokking_gap")),
        (f"circuit layers at step {final['step']}", json.dumps(final["circuit"]["layers"])),
        ("cache", f"{s.cache_hits} hits, {s.cache_misses} computed"),
    ])


def lens(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: latest)."),
    all_steps: bool = typer.Option(False, "--all", help="Every checkpoint."),
    examples: int = typer.Option(300, "--examples", help="Examples of the split (paper: 300)."),
    split: str | None = typer.Option(None, "--split", help="train_inferred, test_inferred_iid or test_inferred_ood (default: the task's analysis split, train_inferred for the paper's tasks)."),
    seed: int = typer.Option(0, "--seed", help="Seed that draws the examples."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write everything (example token ids, hook names, per-example ranks) as JSON."),
) -> None:
    """Logit lens: MRR of every target token at every residual state S[l] (by hook name).

    Example: grokscope lens checkpoints/composition-small --step 2000 --json lens.json
    """
    from grokscope.lens.checkpoint import checkpoint_lens

    _check_examples(examples)
    run = _analysis_run(run_dir)
    split = _split_or_default(run, split)
    _check_split_arg(run, split)
    docs = []
    for s in _analysis_steps(run, step, all_steps):
        d = checkpoint_lens(run, s, split=split, n=examples, seed=seed)
        names = list(d["targets"])
        top = d["top_tokens"]["tokens"]
        roles = d["position_roles"]
        cols = [f"{k} (pos {d['target_positions'][k]})" for k in names] + [f"top@{r}" for r in roles]
        rows = [
            [*(d["targets"][k]["mrr"][layer] for k in names), *top[layer]]
            for layer in range(len(d["hook_names"]))
        ]
        _grid(f"{run.path} step {s}: logit-lens MRR on {d['n_examples']} {split} examples "
              "(top@role: most frequent decoded token)",
              [f"S[{i}] {h}" for i, h in enumerate(d["hook_names"])], cols, rows)
        for name, why in (d.get("undecodable") or {}).items():
            typer.echo(f"  {name}: {why}")
        docs.append({"step": s, **d})
    if json_out:
        _write_json(json_out, {"run": str(run.path), "analysis": "logit_lens", "checkpoints": docs})


def trace_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: latest)."),
    all_steps: bool = typer.Option(False, "--all", help="Every checkpoint."),
    perturb: str | None = typer.Option(None, "--perturb", help="Comma-separated perturbations of the run's task (composition h,r1,r2; comparison e1,e2,attr; khop h,r1..rk); default all."),
    site: str = typer.Option("resid", "--site", help="What to patch: resid, attn, mlp or head."),
    examples: int = typer.Option(300, "--examples", help="Examples of the split (paper: 300)."),
    split: str | None = typer.Option(None, "--split", help="train_inferred, test_inferred_iid or test_inferred_ood (default: the task's analysis split, train_inferred for the paper's tasks)."),
    seed: int = typer.Option(0, "--seed", help="Seed that draws the examples and counterfactuals."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write everything (example and counterfactual token ids, hook names, per-example values) as JSON."),
) -> None:
    """Causal tracing: fraction of predictions changed by patching each (layer, position).

    Example: grokscope trace checkpoints/composition-small --perturb h,r1 --site resid --json trace.json
    """
    from grokscope.patching.checkpoint import checkpoint_trace
    from grokscope.patching.tracing import SITE_KINDS, perturbations_of

    _check_examples(examples)
    if site not in SITE_KINDS:
        raise UserError(f"--site {site!r} is unknown; allowed values: {', '.join(SITE_KINDS)}")
    run = _analysis_run(run_dir)
    split = _split_or_default(run, split)
    dataset = _check_split_arg(run, split)
    family = run.config.task.task
    allowed = perturbations_of(dataset)
    perts = list(allowed) if perturb is None else [p.strip() for p in perturb.split(",") if p.strip()]
    bad = [p for p in perts if p not in allowed]
    if bad or not perts:
        raise UserError(f"--perturb {perturb!r}: unknown perturbation(s) {', '.join(bad) or '(none given)'}; "
                        f"allowed values for {family}: {', '.join(allowed)}")
    docs = []
    for s in _analysis_steps(run, step, all_steps):
        d = checkpoint_trace(run, s, split=split, n=examples, seed=seed, site=site, perturbations=perts)
        for i, p in enumerate(d["perturbations"]):
            table = d["strength"][i]
            if site == "head":
                rows_l = [f"{h}[head {k}]" for h in d["hook_names"] for k in range(len(table[0]))]
                rows_v = [row for layer in table for row in layer]
            else:
                rows_l = [f"{h}" for h in d["hook_names"]]
                rows_v = table
            _grid(f"{run.path} step {s}: causal strength, {site} patched from the {p}' run "
                  f"({d['n_examples'][p]} examples, clean accuracy {d['clean_accuracy'][p]:.3f})",
                  rows_l, [f"{r} ({j})" for j, r in zip(d["positions"], d["position_roles"])], rows_v)
        docs.append({"step": s, **d})
    if json_out:
        _write_json(json_out, {"run": str(run.path), "analysis": "causal_tracing", "checkpoints": docs})


def circuit(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: latest)."),
    examples: int = typer.Option(300, "--examples", help="Examples of the split (paper: 300)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Lens MRR a state must reach to hold its target, in (0, 1]."),
    seed: int = typer.Option(0, "--seed", help="Seed that draws the examples."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the circuit (nodes, edges, hook names, lens and tracing evidence) as JSON."),
) -> None:
    """Locate the circuit of one checkpoint from the logit lens and causal tracing.

    Example: grokscope circuit checkpoints/composition-small --step 2000 --json circuit.json
    """
    from grokscope.patching.checkpoint import checkpoint_circuit

    _check_examples(examples)
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold must lie in (0, 1], got {threshold}")
    run = _analysis_run(run_dir)
    (s,) = _analysis_steps(run, step, False)
    d = checkpoint_circuit(run, s, split=_split_or_default(run, None), n=examples, seed=seed, threshold=threshold)
    typer.echo(f"{run.path} step {s}: {d['task']} circuit (lens threshold {threshold})")
    _print_table([(f"layer {k}", "-" if v is None else v) for k, v in d["layers"].items()], title="resolve layers")
    _grid("nodes", [nd["name"] for nd in d["nodes"]], ["hook", "content", "MRR", *[f"{p}'" for p in d["strength"]]],
          [[nd["hook_name"], nd["content"], nd["mrr"], *[nd["strengths"].get(p) for p in d["strength"]]]
           for nd in d["nodes"]])
    _grid("edges (weight: causal strength)", [f"{e['src']} -> {e['dst']}" for e in d["edges"]],
          ["perturb", "weight"], [[e["perturbation"], e["weight"]] for e in d["edges"]])
    for note in d["notes"]:
        typer.echo(f"note: {note}")
    if json_out:
        _write_json(json_out, {"run": str(run.path), "analysis": "circuit", "step": s, **d})


# `grokscope progress` and `grokscope discover` live in grokscope/cli/discovery.py (registered at the end).
