"""``grokscope discover`` and ``grokscope progress``: the discovered circuit and the
progress measures on the command line (registered on :data:`grokscope.cli.app`)."""

from __future__ import annotations

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
    _write_json,
)


def progress(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    steps: str = typer.Option("all", "--steps", help="Checkpoints: all, or comma-separated steps N,M,..."),
    examples: int = typer.Option(300, "--examples", help="Examples per checkpoint for the circuit measures."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the progress measures, phases and forecast as JSON."),
) -> None:
    """Progress measures (modular addition: key frequencies, restricted/excluded loss, phases)
    and the grokking forecast: which cheap measure moves before test accuracy.

    Example: grokscope progress checkpoints/modular-small --json progress.json
    """
    from grokscope.progress.forecasting import report_data
    from grokscope.series.engine import analyse_series

    _check_examples(examples)
    run = _analysis_run(run_dir)
    series = analyse_series(run, steps, n=examples, progress=False)
    d = report_data(series)
    if "progress" in d:
        recs, ph = d["progress"]["records"], d["phases"]
        typer.echo(f"{run.path}: key frequencies (last checkpoint) {d['progress']['key_freqs']}")
        _grid("progress measures", [str(s) for s in d["progress"]["steps"]],
              ["train loss", "test loss", "restricted", "excluded", "Gini emb", "weight norm"],
              [[r["train_loss"], r["test_loss"], r["restricted_loss"], r["excluded_loss"], r["gini_embed"], r["weight_norm"]]
               for r in recs])
        _print_table([(k, "-" if v is None else v) for k, v in ph.items()], title="phases (steps)")
    fc = d["forecast"]
    typer.echo(f"forecast: reference step {fc['reference_step']} (train accuracy >= 0.99), test onset {fc['test_onset']}")
    _grid("onsets (steps; lead > 0: the measure moved first)", list(fc["measures"]),
          ["onset", "test onset", "lead", "grid", "moving at ref"],
          [[m["onset"], m["test_onset"], m["lead"], m["resolution"], m["moving_at_reference"]] for m in fc["measures"].values()])
    if json_out:
        _write_json(json_out, {"run": str(run.path), "analysis": "progress", **d})


def discover(
    run_dir: Path | None = typer.Argument(None, help="Run directory (or give --model and --prompts instead)."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: latest)."),
    all_steps: bool = typer.Option(False, "--all", help="Every checkpoint (cached in RUN/.grokscope-cache)."),
    split: str = typer.Option("train_inferred", "--split", help="train_inferred, test_inferred_iid or test_inferred_ood."),
    perturb: str | None = typer.Option(None, "--perturb", help="The counterfactual to patch from (h, r1, r2 / e1, e2, attr; default the task's first), or 'mean' for mean ablation."),
    method: str = typer.Option("eap-ig", "--method", help="Edge scores: eap, eap-ig, eap-ig-activations, eap-ig-exact (EAP-IG, then the top edges patched exactly) or exact."),
    ig_steps: int | None = typer.Option(None, "--ig-steps", help="EAP-IG path points (default: grokscope.discovery.scores.DEFAULT_IG_STEPS)."),
    metric: str = typer.Option("logit_diff", "--metric", help="logit_diff (answer vs the counterfactual's answer) or logprob."),
    top: int | None = typer.Option(None, "--top", help="Keep the N best edges (default: the smallest circuit that reaches --recover)."),
    recover: float = typer.Option(0.9, "--recover", help="Recovered fraction the circuit must reach, in (0, 1]."),
    examples: int = typer.Option(300, "--examples", help="Examples of the split (paper: 300)."),
    seed: int = typer.Option(0, "--seed", help="Seed that draws the examples and counterfactuals."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write everything (examples' token ids, nodes with hook names, every edge's score, the circuit, the faithfulness curve) as JSON."),
    compare: Path | None = typer.Option(None, "--compare", help="Another run of the same shape (e.g. another seed, or trained with a gradient filter): discover its circuit the same way and print its overlap with this run's (with --all: the last checkpoint's)."),
    compare_step: int | None = typer.Option(None, "--compare-step", help="The other run's checkpoint (default: its latest)."),
    model: str | None = typer.Option(None, "--model", help="A model that is not a grokscope run: a local HF directory or an HF model name, booted through TransformerBridge (needs --prompts)."),
    prompts: Path | None = typer.Option(None, "--prompts", help="With --model: a JSONL file, each line {\"clean\": ..., \"corrupt\": ..., \"answer\": ..., \"cf_answer\": ...} (corrupt and cf_answer optional: without corrupt, mean ablation)."),
    positions: str = typer.Option("last", "--positions", help="With --model: last (a node per component and position) or sum (one per head / MLP)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="With --model: examples per slice (bounds peak memory)."),
    device: str | None = typer.Option(None, "--device", help="With --model: cpu or cuda (default: cuda when available)."),
    figure: Path | None = typer.Option(None, "--figure", help="Also write the circuit figure (gs.plots.discovered_graph) as HTML."),
) -> None:
    """Discover the circuit: score every edge (EAP-IG), keep the smallest faithful set.

    Example: grokscope discover checkpoints/composition-small --perturb h --recover 0.9 --json circuit.json
    Example: grokscope discover runs/plain --compare runs/filtered
    Example: grokscope discover --model ./my-hf-model --prompts prompts.jsonl --json circuit.json --figure circuit.html
    """
    from grokscope.discovery.scores import DEFAULT_IG_STEPS, METHODS, METRICS
    from grokscope.discovery.series import checkpoint_discovery, jaccard

    _check_examples(examples)
    if method not in METHODS:
        raise UserError(f"--method {method!r} is unknown; allowed values: {', '.join(METHODS)}")
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r} is unknown; allowed values: {', '.join(METRICS)}")
    if model is not None or prompts is not None:
        if run_dir is not None:
            raise UserError("give either a RUN directory or --model with --prompts, not both")
        if model is None or prompts is None:
            raise UserError("--model and --prompts go together: the model and the prompts to discover its circuit on")
        k = DEFAULT_IG_STEPS if ig_steps is None else ig_steps
        _discover_model(model, prompts, method=method, ig_steps=k, metric=metric, top=top, recover=recover,
                        perturb=perturb, positions=positions, batch_size=batch_size, device=device,
                        json_out=json_out, figure=figure)
        return
    if run_dir is None:
        raise UserError("give a RUN directory, or --model with --prompts")
    if not 0 < recover <= 1:
        raise UserError(f"--recover must lie in (0, 1], got {recover}")
    if top is not None and top < 1:
        raise UserError(f"--top must be a positive number of edges, got {top}")
    k = DEFAULT_IG_STEPS if ig_steps is None else ig_steps
    if k < 1:
        raise UserError(f"--ig-steps must be >= 1, got {k}")
    run = _analysis_run(run_dir)
    _check_split_arg(run, split)
    ablation = "mean" if perturb == "mean" else "counterfactual"
    pert = None if perturb in (None, "mean") else perturb
    docs = []
    for s in _analysis_steps(run, step, all_steps):
        d = checkpoint_discovery(run, s, split=split, perturbation=pert, ablation=ablation, n=examples, seed=seed,
                                 method=method, ig_steps=k, metric=metric, top=top, recover=recover)
        if d.get("empty"):
            raise UserError(f"no example of --split {split} has a valid {d['perturbation']} counterfactual; try another split")
        docs.append(d)
        _print_discovery(f"{run.path} step {s}: {d['method']} on {len(d['examples']['clean'])} {split} examples, "
                         f"{d['corruption']['ablation']} {d['perturbation']}", d)
    if compare is not None:
        _compare(run, docs[-1], compare, compare_step, split=split, perturbation=pert, ablation=ablation, n=examples,
                 seed=seed, method=method, ig_steps=k, metric=metric, top=top, recover=recover)
    if len(docs) > 1:
        _grid("formation (overlap: Jaccard with the last checkpoint's circuit)", [str(d["step"]) for d in docs],
              ["gap", "edges", "recovered", "CPR", "overlap"],
              [[d["clean_metric"] - d["corrupt_metric"], d["circuit"]["size"], d["circuit"]["recovered"],
                d["curve"]["cpr"], jaccard(d["circuit"]["edges"], docs[-1]["circuit"]["edges"])] for d in docs])
        typer.echo("  gap: clean minus all-edges-patched metric; where it is near 0 the circuit is noise")
    if json_out:
        _write_json(json_out, {"run": str(run.path), "analysis": "discovery",
                               "checkpoints": docs} if len(docs) > 1 else {"run": str(run.path), "analysis": "discovery", **docs[0]})
    if figure:
        _write_figure(figure, docs[-1], f"{run.path} step {docs[-1]['step']}")


def _print_discovery(header: str, d: dict) -> None:
    """The discovery's summary lines and its strongest circuit edges."""
    c = d["circuit"]
    typer.echo(f"{header}, metric {d['metric']} (clean {d['clean_metric']:.3f}, all edges patched {d['corrupt_metric']:.3f})")
    typer.echo(f"  circuit: {c['size']} of {d['graph']['n_edges']} edges ({100 * c['fraction_of_edges']:.1f}%), "
               f"recovers {c['recovered']:.3f}; curve CPR {d['curve']['cpr']:.3f}, CMD {d['curve']['cmd']:.3f}")
    nodes = d["nodes"]
    rows = []
    for e in c["edges"][:15]:
        ed = d["edges"][e]
        src, dst = nodes[ed["src"]], nodes[ed["dst"]]
        rows.append([src["hook_name"], src["head"], dst["hook_name"], dst["head"], src["position"], ed["score"], ed["exact"]])
    _grid("  strongest circuit edges", [str(i + 1) for i in range(len(rows))],
          ["writer hook", "head", "reader hook", "head", "pos", "score", "exact"], rows)
    sh = d["shares"]
    typer.echo("  |attribution| by position: " + ", ".join(f"{k_} {v:.2f}" for k_, v in sh["position"].items())
               + "; by kind: " + ", ".join(f"{k_} {v:.2f}" for k_, v in sh["kind"].items()))


def _write_figure(path: Path, doc: dict, title: str) -> None:
    from grokscope.plots import discovered_graph

    if doc["graph"].get("summed"):
        raise UserError("--figure draws a circuit over input positions: use --positions last")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    discovered_graph(doc, title=title).write_html(str(path), include_plotlyjs=True)
    typer.echo(f"figure written to {path}")


PROMPT_KEYS = ("clean", "corrupt", "answer", "cf_answer")


def _read_prompts(path: Path) -> dict[str, list]:
    """The JSONL prompts as columns; one line's problem is one error naming the line."""
    import json

    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--prompts {path} line {i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("clean"), str) or "answer" not in row:
            raise UserError(f"--prompts {path} line {i}: needs a \"clean\" string and an \"answer\" "
                            f"(keys: {', '.join(PROMPT_KEYS)})")
        extra = set(row) - set(PROMPT_KEYS)
        if extra:
            raise UserError(f"--prompts {path} line {i}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(PROMPT_KEYS)}")
        rows.append(row)
    if not rows:
        raise UserError(f"--prompts {path}: no prompts")
    cols: dict[str, list] = {}
    for key in PROMPT_KEYS:
        have = [key in r for r in rows]
        if any(have) and not all(have):
            raise UserError(f"--prompts {path}: line {have.index(False) + 1} has no \"{key}\" while others do")
        cols[key] = [r[key] for r in rows] if all(have) else None  # type: ignore[assignment]
    return cols


def _boot(model: str, device: str | None):
    """A local HF directory or an HF model name, booted through TransformerBridge, in eval mode."""
    import torch

    path = Path(model)
    if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise UserError(f"--model {model}: no such directory (give a local HF directory or an HF model name)")
    if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        raise UserError(f"--model {model} is a grokscope run: pass it as RUN (grokscope discover {model})")
    from transformer_lens.model_bridge import TransformerBridge

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return TransformerBridge.boot_transformers(model, device=dev).eval()
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--model {model}: cannot be loaded as an HF model ({first})") from None


def _discover_model(model: str, prompts: Path, *, method: str, ig_steps: int, metric: str, top: int | None,
                    recover: float, perturb: str | None, positions: str, batch_size: int | None, device: str | None,
                    json_out: Path | None, figure: Path | None) -> None:
    """``grokscope discover --model M --prompts P``: the same output as for a run."""
    from grokscope.discovery.circuit import discover as discover_circuit
    from grokscope.discovery.inputs import PromptError
    from grokscope.discovery.scores import POSITIONS

    if positions not in POSITIONS:
        raise UserError(f"--positions {positions!r} is unknown; allowed values: {', '.join(POSITIONS)}")
    if perturb not in (None, "mean", "zero"):
        raise UserError(f"--perturb {perturb!r}: with --model use mean or zero (or give corrupt prompts)")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    cols = _read_prompts(prompts)
    if perturb is not None and cols["corrupt"] is not None:
        raise UserError(f"--perturb {perturb}: the prompts have corrupt versions; drop --perturb or the corrupt prompts")
    if metric == "logit_diff" and cols["cf_answer"] is None:
        metric = "logprob"  # nothing to take the difference with
    bridge = _boot(model, device)
    try:
        d = discover_circuit(bridge, cols["clean"], cols["corrupt"], answer=cols["answer"], cf_answer=cols["cf_answer"],
                             ablation=perturb, metric=metric, positions=positions, method=method, ig_steps=ig_steps,
                             batch_size=batch_size, top=top, recover=recover)
    except PromptError as e:
        raise UserError(f"--prompts {prompts}: {e}") from None
    doc = d.to_dict()
    doc["perturbation"] = d.corruption.ablation
    _print_discovery(f"{model}: {doc['method']} on {len(cols['clean'])} prompts, {d.corruption.ablation}", doc)
    if json_out:
        _write_json(json_out, {"model": model, "analysis": "discovery", **doc})
    if figure:
        _write_figure(figure, doc, str(model))


def _compare(run, doc: dict, other_dir: Path, other_step: int | None, **kw) -> None:
    """Print how the circuit of ``doc`` overlaps the one discovered the same way in another run."""
    from grokscope.discovery.series import checkpoint_discovery, jaccard

    other = _analysis_run(other_dir)
    if other.config.task.task != run.config.task.task:
        raise UserError(f"--compare {other_dir}: a {other.config.task.task} run; {run.path} is a {run.config.task.task} run")
    step = _analysis_steps(other, other_step, False)[0]
    o = checkpoint_discovery(other, step, **kw)
    if o.get("empty"):
        raise UserError(f"--compare {other_dir}: no example of its split has a valid {o['perturbation']} counterfactual")
    if o["graph"] != doc["graph"]:
        raise UserError(f"--compare {other_dir}: its component graph {o['graph']} differs from {doc['graph']}; "
                        "circuits can only be compared between models of the same shape on the same task")
    a, b = set(doc["circuit"]["edges"]), set(o["circuit"]["edges"])
    typer.echo(f"compared with {other.path} step {step}: {len(b)} edges, recovers {o['circuit']['recovered']:.3f}, "
               f"CPR {o['curve']['cpr']:.3f}")
    typer.echo(f"  overlap: Jaccard {jaccard(a, b):.2f}; {len(a & b)} edges in both, {len(a - b)} only in the first, "
               f"{len(b - a)} only in the second")
    typer.echo("  |attribution| by position, first / second: " + ", ".join(
        f"{p} {doc['shares']['position'][p]:.2f} / {o['shares']['position'].get(p, 0.0):.2f}" for p in doc["shares"]["position"]))
