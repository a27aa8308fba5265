"""`grokscope data / train / eval / runs / sweep / import-hf`: tasks, training and runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from grokscope.cli.common import (
    UserError,
    _print_table,
)


def data(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="A registered task: composition, comparison, complex, khop, ..."),
    out: Path = typer.Option(..., "--out", help="Directory to write the paper-format files into."),
    seed: int = typer.Option(0, "--seed", help="Data seed."),
) -> None:
    """Generate a task and write it in the paper's format plus stats.json.

    The task's own flags follow (its ``cli_params``): composition --entities --relations
    --out-degree --ood-fraction --phi; comparison --entities --attributes --values
    --ood-fraction --phi; complex the same without --phi; khop adds --hops.

    Example: grokscope data khop --hops 3 --out data/k3 --entities 50 --relations 20 --out-degree 20 --phi 7.2 --seed 0
    """
    from grokscope.runs.config import _parse_like
    from grokscope.tasks import get_task
    from grokscope.tasks.paper_format import save_paper_format

    try:
        spec = get_task(task)
    except ValueError as e:
        raise UserError(str(e)) from None
    by_flag = {flag: name for name, flag in spec.cli_params.items()}
    kwargs: dict[str, Any] = {}
    extra = list(ctx.args)
    while extra:
        flag = extra.pop(0)
        key, _, value = flag.partition("=")
        if key not in by_flag:
            raise UserError(f"{key} does not apply to the {task} task; its flags: {', '.join(by_flag) or 'none'}")
        if not value:
            if not extra:
                raise UserError(f"{key} needs a value")
            value = extra.pop(0)
        name = by_flag[key]
        fld = {f.name: f for f in dataclasses.fields(spec.config_cls)}[name]
        try:
            kwargs[name] = _parse_like(fld.default, fld, value)
        except ValueError as e:
            raise UserError(f"{key}: {e}") from None
    try:
        cfg = spec.config_cls(seed=seed, **kwargs)
        ds = spec.generate(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    save_paper_format(ds, out)
    stats = ds.stats()
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    rows: list[tuple[str, Any]] = [("task", ds.task), ("seed", seed)]
    rows += [(f"split {k}", v) for k, v in stats["splits"].items()]
    rows += [(k, v if not isinstance(v, dict) else json.dumps(v)) for k, v in stats["counts"].items()]
    rows += [("vocab size", stats["vocab_size"]), ("content hash", stats["content_hash"][:16])]
    _print_table(rows, title=f"{ds.task} dataset written to {out}")


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (e.g. train.lr=1e-3, model.n_layers=6, task.phi=9)")
        out[key.strip()] = value.strip()
    return out


def train(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides: task.phi=9 model.n_layers=6 train.lr=1e-3 ..."),
    preset_name: str | None = typer.Option(None, "--preset", help="Preset: quickstart (groks in about a minute), composition-tiny, composition-small, comparison-small, modular-small, composition-paper, ..."),
    out: Path | None = typer.Option(None, "--out", help="New run directory (default runs/PRESET)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory from its latest checkpoint."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    seed: int | None = typer.Option(None, "--seed", help="Run seed (init and batch order)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: OMP_NUM_THREADS, else 1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model from scratch on a paper task, or resume a run.

    Example: grokscope train --preset quickstart --out runs/q  (then: grokscope report runs/q)
    Example: grokscope train --resume runs/tiny
    """
    from grokscope.runs.presets import PRESET_NAMES, preset
    from grokscope.runs.run import Run
    from grokscope.training.loop import train as train_run
    from grokscope.training.loop import train_new

    ov = _parse_overrides(overrides or [])
    if max_steps is not None:
        ov["train.max_steps"] = str(max_steps)
    if device is not None:
        ov["train.device"] = device
    if threads is not None:
        ov["train.threads"] = str(threads)
    if resume is not None:
        if preset_name or out or seed is not None:
            raise UserError("--resume continues a run as configured; do not combine it with --preset, --out or --seed")
        run = Run.open(resume)
        if ov:
            run = _reconfigure(run, ov)
        state = train_run(run, quiet=quiet)
    else:
        if preset_name is None:
            raise UserError(f"give --preset NAME (one of: {', '.join(PRESET_NAMES)}) or --resume RUN")
        cfg = preset(preset_name)
        if seed is not None:
            ov["seed"] = str(seed)
        cfg = cfg.override(ov)
        run = train_new(cfg, out or Path("runs") / preset_name, quiet=quiet)
        state = None
    run = Run.open(run.path)
    last = run.metrics()[-1] if run.metrics() else {}
    acc = last.get("acc", {})
    typer.echo(f"run {run.path}: step {last.get('step')} ({(state or {}).get('stop_reason') or 'done'})")
    _print_table([(f"acc {k}", v) for k, v in acc.items()])


def _reconfigure(run, ov: dict[str, str]):
    """Apply train.* overrides when resuming (e.g. a longer max_steps); refuse others."""
    from grokscope.runs.run import CONFIG_FILE, Run, atomic_write_json

    bad = [k for k in ov if not k.startswith("train.")]
    if bad:
        raise UserError(f"only train.* settings can change on resume; got {', '.join(bad)}")
    cfg = run.config.override(ov)
    doc = json.loads((run.path / CONFIG_FILE).read_text())
    doc["run"] = cfg.to_dict()
    atomic_write_json(run.path / CONFIG_FILE, doc)
    return Run.open(run.path)


def eval_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint step (default: latest)."),
    size: int | None = typer.Option(None, "--size", help="Examples per split (default: all)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the table as JSON."),
) -> None:
    """Evaluate one checkpoint on every probe split (accuracy and loss).

    Example: grokscope eval checkpoints/composition-small --step 2000
    """
    from grokscope.runs.run import Run
    from grokscope.training.loop import eval_subsets, evaluate

    run = Run.open(run_dir)
    step = run.resolve_step(step)
    model = run.load_model(step)
    res = evaluate(model, eval_subsets(run.dataset(), size, run.config.seed))
    typer.echo(f"{run.path} step {step}")
    typer.echo(f"  {'split':<20} {'acc':>7} {'loss':>8}")
    for k, a in res["acc"].items():
        typer.echo(f"  {k:<20} {a:7.4f} {res['loss'][k]:8.4f}")
    if json_out:
        json_out.write_text(json.dumps({"run": str(run.path), "step": step, **res}, indent=2) + "\n")


def runs(
    directory: Path = typer.Argument(Path("runs"), help="Directory holding run directories."),
    grokking: bool = typer.Option(False, "--grokking", help="A markdown table: the settings in which the runs "
                                  "differ, when train saturated, test ID then, when test ID reached 0.95, final "
                                  "and best OOD."),
) -> None:
    """List the runs under a directory with their latest accuracies.

    Example: grokscope runs checkpoints
    Example: grokscope runs runs/sweeps/depth --grokking > depth.md
    """
    from grokscope.runs.run import CONFIG_FILE, Run, RunError

    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    found = sorted(p.parent for p in directory.glob(f"*/{CONFIG_FILE}"))
    if not found:
        typer.echo(f"no runs under {directory}")
        return
    if grokking:
        from grokscope.training.sweep import markdown_table, summarize_runs

        opened = []
        for p in found:
            try:
                opened.append(Run.open(p))
            except RunError as e:
                typer.echo(f"skipping {p}: {e}", err=True)
        rows, keys = summarize_runs([r.config.to_dict() for r in opened], [r.metrics() for r in opened],
                                    [r.path.name for r in opened], [_run_status(r) for r in opened])
        typer.echo(markdown_table(rows, keys), nl=False)
        return
    typer.echo(f"{'run':<40} {'task':<12} {'steps':>8} {'train':>6} {'ID':>6} {'OOD':>6}")
    for p in found:
        try:
            run = Run.open(p)
        except RunError as e:
            typer.echo(f"{str(p):<40} unreadable: {e}")
            continue
        m = run.metrics()
        acc = m[-1]["acc"] if m else {}
        cols = [f"{acc[k]:.3f}" if k in acc else "-" for k in ("train_inferred", "test_inferred_iid", "test_inferred_ood")]
        typer.echo(f"{str(p):<40} {run.config.task.task:<12} {m[-1]['step'] if m else 0:>8} "
                   f"{cols[0]:>6} {cols[1]:>6} {cols[2]:>6}")


def _run_status(run: Any) -> str:
    """'done: <why it stopped>', 'stopped at N (resumable)', or '' for a thinned run."""
    from grokscope.runs.run import TRAINER_STATE_FILE
    from grokscope.runs.thinning import latest_resume_step
    from grokscope.training.loop import TrainerState

    step = latest_resume_step(run)
    if step is None:
        return ""
    state = TrainerState.from_dict(json.loads((run.checkpoint_path(step) / TRAINER_STATE_FILE).read_text())["trainer"])
    return f"done: {state.stop_reason}" if state.done else f"stopped at {step} (resumable)"


def sweep(
    preset_name: str = typer.Option(..., "--preset", help="Preset every run starts from."),
    grid: list[str] = typer.Option(..., "--grid", help="An axis: key=v1,v2,... (repeat for more axes)."),
    out: Path = typer.Option(..., "--out", help="Directory for the runs and the table."),
    budget: float | None = typer.Option(None, "--budget", help="Seconds; points not started by then are skipped."),
    jobs: int = typer.Option(1, "--jobs", help="Runs at a time with the local backend (each on OMP_NUM_THREADS threads, default 1)."),
    backend: str = typer.Option("local", "--backend", help="Where runs execute: local (a pool of --jobs) or ray (one Ray task per point)."),
    address: str | None = typer.Option(None, "--address", help="Ray: a running cluster (default: RAY_ADDRESS, else a new local Ray)."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="Ray: CPUs of the new local Ray (default: all of this machine's)."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="Ray: CPUs each run reserves (and its train threads)."),
    gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", help="Ray: GPUs each run reserves (fractions share a GPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-run lines."),
    overrides: list[str] | None = typer.Argument(None, help="key=value settings for every run."),
) -> None:
    """Train a grid of settings and write one table (sweep.csv, sweep.md).

    Re-running a sweep skips its finished runs and resumes the others from their last
    checkpoint. The backend changes only where runs execute: the run directories and
    the table are the same.

    Example: grokscope sweep --preset composition-small --grid task.phi=7.2,9,12.6 --grid train.weight_decay=0.1,0.3 --out sweeps/phi-wd --budget 3600
    Example: grokscope sweep --preset modular-small --grid task.train_fraction=0.3,0.5 --grid train.weight_decay=0.1,1 --out sweeps/mod --backend ray --num-cpus 2
    """
    from grokscope.training.ray_backend import RayOptions, require_ray
    from grokscope.training.sweep import BACKENDS, grid_points, run_sweep

    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if backend != "ray" and (address or num_cpus is not None or cpus_per_run != 1.0 or gpus_per_run):
        raise UserError("--address, --num-cpus, --cpus-per-run and --gpus-per-run apply to --backend ray only")
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    axes = {}
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise UserError(f"--grid {item!r} is not key=v1,v2 (e.g. --grid task.phi=7.2,9)")
        axes[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    from grokscope.runs.presets import preset

    base = _parse_overrides(overrides or [])
    for point in grid_points(axes):
        preset(preset_name).override({**base, **point})  # validate every point before training
    ray_options = None
    if backend == "ray":
        try:
            require_ray()
        except ImportError as e:
            raise UserError(str(e)) from None
        ray_options = RayOptions(address=address, num_cpus=num_cpus, cpus_per_run=cpus_per_run,
                                 gpus_per_run=gpus_per_run)
    rows = run_sweep(preset_name, axes, out, budget_s=budget, jobs=jobs, base_overrides=base,
                     backend=backend, ray=ray_options, progress=not quiet)
    typer.echo((out / "sweep.md").read_text())
    typer.echo(f"{len(rows)} runs; table in {out / 'sweep.csv'}")


def import_hf_cmd(
    hf_dir: Path = typer.Argument(..., help="HuggingFace GPT-2 directory, or one holding checkpoint-N/ directories."),
    out: Path = typer.Option(..., "--out", help="New run directory."),
    task_data: Path | None = typer.Option(None, "--task-data", help="Paper-format data the model was trained on (default: found next to HF_DIR)."),
    step: int | None = typer.Option(None, "--step", help="Step of a single checkpoint whose step is unknown (default: from trainer_state.json or checkpoint-N, else 0)."),
) -> None:
    """Convert the paper authors' HF GPT-2 checkpoints into a grokscope run (task tokens only).

    Reads safetensors (or pytorch_model.bin with torch.load(weights_only=True)) and JSON only.

    Example: grokscope import-hf ckpts/composition.2000.200.18.0_0.1_8 --out runs/paper-comp --task-data data/composition.2000.200.18.0
    """
    from grokscope.runs.hf_import import import_hf

    run = import_hf(hf_dir, out, task_data, step=step)
    steps = run.steps()
    typer.echo(f"imported {len(steps)} checkpoint(s) into {run.path}: steps {', '.join(map(str, steps))}")
    typer.echo(f"  task {run.data_info['task']}, d_vocab {run.data_info['d_vocab']}, n_ctx {run.data_info['n_ctx']}")
