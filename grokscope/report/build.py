"""A run's report: ``report.html`` (one self-contained file) and ``summary.json``.

:func:`write_report` analyses a run's checkpoints (:func:`grokscope.series.engine.
analyse_series`, cached inside the run) and writes

* ``DIR/report.html``: training curves, the logit lens and causal tracing of the last
  checkpoint (with the change from an early one), the located circuit, their formation
  over training (sliders over checkpoints), circuit measures beside the accuracies,
  and for composition the OOD diagnosis. plotly.js is embedded once in the page head;
  no network access is needed to open it.
* ``DIR/summary.json``: the run config, the analysed steps, per-checkpoint accuracies,
  the lens and tracing tables with their hook names, the located circuit, the
  grokking statistics and the grokscope version (strict JSON: NaN is written as null).

Example:
    >>> rep = write_report("checkpoints/composition-small")        # doctest: +SKIP
    >>> rep.html, rep.summary                                       # doctest: +SKIP
    (PosixPath('reports/composition-small/report.html'), PosixPath('reports/composition-small/summary.json'))
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokscope import __version__
from grokscope.report.sections import (  # noqa: F401  (re-exported)
    PAGE_CSS,
    discovery_html,
    discovery_summary,
    early_step,
    fig_html,
    formation_sentences,
    node_args,
    probe_splits_html,
    progress_figures,
    r2_note,
    series_figures,
    table_html,
)
from grokscope.runs.run import Run, atomic_write_bytes, atomic_write_json
from grokscope.series.engine import DEFAULT_EXAMPLES, DEFAULT_SPLIT, SeriesResult, analyse_series

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
REPORTS_DIR = "reports"
SUMMARY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        html: path of report.html.
        summary: path of summary.json.
        series: the analysis it shows.
    """

    html: Path
    summary: Path
    series: SeriesResult


def default_out_dir(run: Run) -> Path:
    """``reports/<run directory name>``."""
    return Path(REPORTS_DIR) / run.path.resolve().name


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinity replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def summary_dict(series: SeriesResult, run: Run, discovery: Any = None) -> dict[str, Any]:
    """The JSON summary of a report (see the module docstring); ``discovery`` adds the
    discovered circuits (:func:`grokscope.discovery.series.discovery_series`)."""
    final = series.checkpoints[-1]
    lens = {
        "hook_names": series.hook_names,
        "axes": ["step", "layer"],
        "targets": {
            t: {"position": p, "role": series.position_roles[p], "mrr": series.lens_mrr(t).tolist()}
            for t, p in series.lens_targets.items()
        },
        "undecodable": dict(series.lens_undecodable),
    }
    tracing = {
        "site": "resid",
        "hook_names": series.hook_names,
        "position_roles": series.position_roles,
        "perturbations": series.perturbations,
        "axes": ["step", "layer", "pos"],
        "strength": {p: series.strength(p).tolist() for p in series.perturbations},
        "logit_diff": {p: [c["logit_diff"][p] for c in series.checkpoints] for p in series.perturbations},
        "n_examples": {str(c["step"]): c["n_examples"] for c in series.checkpoints},
    }
    per_ckpt = [
        {
            "step": c["step"],
            "acc": c["acc"],
            "loss": c["loss"],
            "weight_norm": c["weight_norm"],
            "circuit_layers": c["circuit"]["layers"],
        }
        for c in series.checkpoints
    ]
    doc = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "grokscope_version": __version__,
        "run": {
            "path": str(run.path),
            "name": run.config.name,
            "task": run.config.task.task,
            "config": run.config.to_dict(),
            "data": run.data_info,
        },
        "analysis": series.args,
        "steps": series.steps,
        "early_step": early_step(series),
        "grokking": series.grokking,
        "checkpoints": per_ckpt,
        "lens": lens,
        "tracing": tracing,
        "circuit": final["circuit"],
        "circuits": [c["circuit"] for c in series.checkpoints],
        "measures": series.measures(),
        "ood": final.ood,
        "diagnoses": final.diagnoses,
    }
    if discovery is not None:
        doc["discovery"] = discovery_summary(discovery)
    from grokscope.progress.forecasting import report_data

    doc.update(report_data(series))  # "forecast"; "progress" and "phases" for modular addition
    return _finite(json.loads(json.dumps(doc, default=str)))


# --------------------------------------------------------------------------- HTML


def render_html(series: SeriesResult, run: Run, discovery: Any = None) -> str:
    """The report page: one ``<script>`` with plotly.js in the head, then every figure."""
    from plotly.offline import get_plotlyjs

    g = series.grokking
    title = f"grokscope report: {run.path.resolve().name}"
    cfg = run.config
    config_rows = [
        ("run directory", str(run.path)), ("config name", cfg.name), ("task", cfg.task.task),
        ("model", ", ".join(f"{k}={v}" for k, v in cfg.to_dict()["model"].items()
                            if k in ("n_layers", "d_model", "n_heads", "d_mlp", "init_range", "share_layers", "tie_embeddings", "dropout"))),
        ("task settings", ", ".join(f"{k}={v}" for k, v in cfg.to_dict()["task"].items() if k != "task")),
        ("training", ", ".join(f"{k}={cfg.to_dict()['train'][k]}" for k in ("lr", "weight_decay", "batch_size", "atomic_fraction", "max_steps"))
         + (f", grad_filter={cfg.train.grad_filter} (alpha {cfg.train.grad_filter_alpha}, lambda {cfg.train.grad_filter_lambda}"
            + (f", from step {cfg.train.grad_filter_start}" if cfg.train.grad_filter_start else "") + ")"
            if cfg.train.grad_filter else "")),
        ("checkpoints analysed", ", ".join(map(str, series.steps))),
        ("examples", f"{series.args['n']} of {series.args['split']} (seed {series.args['seed']}), lens threshold "
                     f"{series.args['threshold']}"),
        ("grokscope", __version__),
    ]
    grok_rows = [(k, g.get(k)) for k in ("train_saturated_step", "iid_at_saturation", "iid_generalized_step",
                                         "grokking_gap", "groks", "final_step", "max_ood")]
    splits = ["train_inferred", "test_inferred_iid", "test_inferred_ood"]
    ck_rows = []
    layer_keys = sorted({k for c in series.checkpoints for k in c["circuit"]["layers"]})
    for c in series.checkpoints:
        ck_rows.append([c["step"], *[c["acc"].get(s) for s in splits], c["weight_norm"],
                        *[c["circuit"]["layers"].get(k) for k in layer_keys]])
    final_c = series.checkpoints[-1]["circuit"]
    edge_rows = [(e["src"], e["dst"], e["perturbation"], e["weight"]) for e in final_c["edges"]]
    node_rows = [(nd["name"], nd["hook_name"], nd["content"], nd.get("mrr"), nd.get("strength"))
                 for nd in final_c["nodes"]]
    figs = series_figures(series)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{PAGE_CSS}</style>",
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>',
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="note">Mechanistic analysis after Wang et al. (2024), "Grokked Transformers are Implicit '
        'Reasoners". Places are named by TransformerLens hook names; S[l] is <code>blocks.l.hook_resid_pre</code> '
        "(S[L]: the last block's <code>hook_resid_post</code>).</p>",
        "<nav>" + '<a href="#probes">Probe splits</a>' + "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _, _ in figs)
        + ('<a href="#discovered">Discovered circuit</a>' if discovery is not None else "") + "</nav>",
        "<h2 id=\"run\">Run</h2>",
        table_html(("setting", "value"), config_rows, left=2),
        "<h2 id=\"grokking\">Grokking</h2>",
        table_html(("statistic", "value"), grok_rows),
        "<h2 id=\"checkpoints\">Checkpoints</h2>",
        table_html(("step", "train acc", "test ID acc", "test OOD acc", "weight norm",
                *[f"layer {k}" for k in layer_keys]), ck_rows, left=0),
        *probe_splits_html(series, run),
    ]
    for anchor, heading, note, fig in figs:
        parts += [f'<h2 id="{anchor}">{html.escape(heading)}</h2>', f'<p class="note">{note}</p>',
                  fig_html(fig, f"fig-{anchor}")]
        if anchor == "circuit":
            parts += [table_html(("node", "hook", "content", "MRR", "max strength"), node_rows),
                      table_html(("edge from", "to", "perturbation", "weight"), edge_rows, left=3)]
            if final_c.get("notes"):
                parts.append('<p class="note">' + html.escape("; ".join(final_c["notes"])) + "</p>")
    if discovery is not None:
        parts += discovery_html(discovery)
    parts += [f'<p class="note">Written by grokscope {__version__}; data in <code>{SUMMARY_FILE}</code>.</p>',
              "</body></html>"]
    return "\n".join(parts)


def write_report(
    run: Run | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    steps: str | Sequence[int] | None = None,
    split: str | None = None,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float | None = None,
    progress: bool = True,
    cache: bool = True,
    device: str | None = None,
    discovery: bool = True,
    workers: int = 1,
) -> Report:
    """Analyse a run and write ``report.html`` and ``summary.json`` into ``out``.

    Args:
        run: a :class:`Run` or its directory (composition or comparison).
        out: output directory (default ``reports/<run directory name>``).
        steps: ``None``/``"all"``, ``"N,M"`` or a list of checkpoint steps.
        split: the split whose examples are analysed (None: the task's ``default_split``).
        n: examples per checkpoint (the paper: 300).
        seed: sampling seed (the same examples at every step).
        threshold: lens MRR threshold of the circuit finder (default 0.5).
        progress: tqdm bar over checkpoints.
        cache: use the run's analysis cache.
        device: where models are loaded (None: CPU).
        discovery: add the "Discovered circuit" section (edge-level discovery at every
            analysed checkpoint, on train_inferred and test_inferred_iid; cached).
        workers: with more than one (and ``cache``), every checkpoint's analyses and
            discoveries first run in that many one-thread processes, filling the cache
            the phases then read (:func:`grokscope.report.parallel.prefill`); the
            content is the same.

    Returns:
        A :class:`Report` with both paths.

    Example:
        >>> write_report("runs/tiny", "reports/tiny", steps="0,1500")    # doctest: +SKIP
    """
    from grokscope.discovery.series import DEFAULT_SPLITS
    from grokscope.patching.hypothesis import DEFAULT_THRESHOLD
    from grokscope.tasks.base import task_of

    run = run if isinstance(run, Run) else Run.open(run)
    task = task_of(run.dataset())
    split = split or task.default_split
    analysis = {"split": split, "n": n, "seed": seed, "device": device,
                "threshold": DEFAULT_THRESHOLD if threshold is None else threshold}
    # discovery on train_inferred and test_inferred_iid; a task whose analysis split is another
    # (aligned text rows) on that split alone
    disc_splits = tuple(DEFAULT_SPLITS) if split == DEFAULT_SPLIT else (split,)
    # the coverage of the located hypothesis circuit; a task without a hypothesis has none to cover
    has_hypothesis = task.hypothesis is not None
    if workers > 1 and cache:
        from grokscope.report.parallel import prefill
        from grokscope.series.engine import parse_steps

        prefill(run, parse_steps(steps, run.steps()), workers=workers, analysis=analysis,
                discovery_splits=disc_splits if discovery else (), hypothesis=has_hypothesis, n=n, seed=seed,
                device=device, progress=progress)
    series = analyse_series(run, steps, progress=progress, cache=cache, **analysis)
    out_dir = Path(out) if out is not None else default_out_dir(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    disc = None
    if discovery:
        from grokscope.discovery.series import discovery_series

        disc = discovery_series(run, series.steps, n=n, seed=seed, cache=cache, device=device, progress=progress,
                                splits=disc_splits, hypothesis=has_hypothesis)
    page = render_html(series, run, disc)
    atomic_write_bytes(out_dir / REPORT_FILE, page.encode("utf-8"))
    atomic_write_json(out_dir / SUMMARY_FILE, summary_dict(series, run, disc))
    return Report(html=out_dir / REPORT_FILE, summary=out_dir / SUMMARY_FILE, series=series)
