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


def early_step(series: SeriesResult) -> int | None:
    """The early checkpoint the report compares the last one with.

    The analysed step closest to where train accuracy saturated (the paper compares
    that moment with the end of grokking), else the first analysed step; None when a
    single step was analysed.
    """
    steps = series.steps
    if len(steps) < 2:
        return None
    sat = series.grokking.get("train_saturated_step")
    candidates = steps[:-1]
    if sat is None:
        return candidates[0]
    return min(candidates, key=lambda s: (abs(s - sat), s))


def r2_note(series: SeriesResult, early: int | None) -> str:
    """The paper's r2 lens claim as it reads on this run, or "" (no decodable r2 target).

    The paper (8 layers) finds the MRR of r2 at S[5, r2] rising during grokking; this
    gives r2's MRR at every intermediate state S[1..L-1, r2] at the early step and at
    the last, over the whole vocabulary and among relation tokens.
    """
    # the last relation read at its own position, ranked over the vocabulary and among relations
    base = next((t for t in series.lens_targets if f"{t}/rel" in series.lens_targets), None)
    names = [t for t in (base, f"{base}/rel") if base and t in series.lens_targets and t not in series.lens_undecodable]
    if not names or early is None or early not in series.steps:
        return ""
    rel, role = base.split("/")[0].split("@")
    i = series.steps.index(early)
    L = series.n_layers
    parts = []
    for name in names:
        mrr = series.lens_mrr(name)
        fmt = lambda row: ", ".join(f"{v:.3f}" for v in row[1:L])  # noqa: E731
        scope = "among relations" if name.endswith("/rel") else "over the whole vocabulary"
        parts.append(f"{scope} {fmt(mrr[i])} at step {early} and {fmt(mrr[-1])} at step {series.steps[-1]}")
    return (f" The paper (8 layers, two hops) finds the MRR of r2 at S[5, r2] rising during grokking; here, at "
            f"S[1..{L - 1}, {role}], {rel}'s MRR is " + "; ".join(parts) + ".")


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


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 24px 48px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
p.note { color: #555; max-width: 1000px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
code { background: #f4f4f4; padding: 0 3px; }
nav a { margin-right: 14px; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    def cell(v: Any, i: int, tag: str) -> str:
        if isinstance(v, float):
            v = "-" if not math.isfinite(v) else f"{v:.4g}"
        elif v is None:
            v = "-"
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    head = "".join(cell(h, i, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(v, i, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fig_html(fig: Any, div_id: str) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, auto_play=False,
        config={"displaylogo": False, "responsive": True},
    )


def _figures(series: SeriesResult) -> list[tuple[str, str, str, Any]]:
    """(anchor, heading, explanation, figure) of every section, in page order."""
    from grokscope import plots

    last = series.steps[-1]
    early = early_step(series)
    final = series.checkpoints[-1]
    m = series.measures()
    out: list[tuple[str, str, str, Any]] = [
        ("curves", "Training curves",
         "Accuracy and loss of every evaluated split (log step axis). Triangles mark checkpoints; dashed "
         "lines mark where train accuracy saturated and where test ID accuracy generalized.",
         plots.training_curves(series.metrics, series.steps, series.grokking)),
        ("lens", f"Logit lens at step {last}",
         "MRR of each target token decoded from the residual stream S[l, p] through the final norm and "
         "unembedding (rows: hook names). Hover shows the most frequent decoded token. A name ending in "
         "/rel ranks among the relation tokens only (the paper ranks over the whole vocabulary)."
         + "".join(f" Not shown: {html.escape(t)}, {html.escape(why)}." for t, why in series.lens_undecodable.items())
         + r2_note(series, early),
         plots.lens_heatmap(series, last)),
        ("tracing", f"Causal tracing at step {last}" + (f" and its change since step {early}" if early is not None else ""),
         "Fraction of examples whose top-1 prediction changes when S[l, p] is copied from the "
         "counterfactual run (one panel per perturbation)" + (
             f"; second row: step {last} minus step {early}." if early is not None else "."),
         plots.tracing_heatmap(series, last, diff_from=early)),
        ("circuit", f"Located circuit at step {last}",
         "Nodes sit at (input position, layer); edge width and colour are the causal strength of the "
         "state the edge passes through, under the perturbation that changes what it carries.",
         plots.circuit_diagram(final["circuit"])),
    ]
    if early is not None:
        out.append(("circuit-early", f"Circuit at the early step {early}",
                    "The same finder on the early checkpoint, for comparison.",
                    plots.circuit_diagram(series.checkpoint(early)["circuit"])))
    out += [
        ("lens-formation", "Formation over training: logit lens",
         "Drag the slider to move through the analysed checkpoints (starts at the last one).",
         plots.lens_formation(series)),
        ("tracing-formation", "Formation over training: causal tracing",
         "Drag the slider to move through the analysed checkpoints (starts at the last one).",
         plots.tracing_formation(series)),
        ("measures", "Circuit measures beside accuracy",
         f"Measures at the fixed reference layer S[{m['reference_layer']}] (<code>{m['hook_name']}</code>): "
         "lens MRR (solid) and causal strength (dashed), next to the accuracies and the total weight norm.",
         plots.circuit_measures(series)),
    ]
    for i, (name, result) in enumerate(final.diagnoses.items()):
        fig = plots.DIAGNOSIS_FIGURES.get(name)
        if fig is None or not result:
            continue
        title, caption, draw = fig
        out.append(("ood" if i == 0 else f"diagnosis-{name}", f"{title} at step {last}", caption, draw(result)))
    return out + _progress_figures(series)


def _progress_figures(series: SeriesResult) -> list[tuple[str, str, str, Any]]:
    """The phases and progress measures (tasks with the ``fourier`` diagnosis) and the grokking forecast."""
    from grokscope import plots
    from grokscope.progress.forecasting import ONSET_FRACTION, report_data

    data = report_data(series)
    out: list[tuple[str, str, str, Any]] = []
    if "progress" in data:
        ph = data["phases"]
        out.append(("progress", "Progress measures and phases",
                    "Restricted loss keeps only the key frequencies of the logits over (a, b), excluded loss removes "
                    "them (training pairs). Phases, located automatically: memorisation until train accuracy reaches "
                    f"0.99 (step {ph['memorised']}), circuit formation until test accuracy's onset (step {ph['cleanup']}), "
                    f"cleanup until test accuracy reaches 0.99 (step {ph['grokked']}); restricted loss's onset: step "
                    f"{ph['restricted_onset']}.", plots.progress_figure(data)))
    fc = data["forecast"]
    lead = ", ".join(f"{k} by {fc['measures'][k]['lead']} steps" for k in fc["leading"])
    out.append(("forecast", "Grokking forecast",
                f"Onset of a series: the first step, from the step train accuracy reached 0.99 (step "
                f"{fc['reference_step']}), where it has covered {ONSET_FRACTION:.0%} of its move to its final value; the "
                "same rule for test accuracy, read on each measure's own steps. Positive: the measure moved first "
                "(a series still moving right after the reference, such as the training loss, does not count). "
                + (f"Leading: {lead}." if lead else "No cheap measure moves before test accuracy here."),
                plots.forecast_figure(fc)))
    return out


def discovery_summary(discovery: Any) -> dict[str, Any]:
    """The "Discovered circuit" part of summary.json: settings, per-step records, and the
    final circuit's edges per split (writer and reader hook names, heads, position, score)."""
    out = discovery.to_dict()
    out["final_circuit"] = {}
    for split, doc in discovery.final.items():
        nodes = doc["nodes"]
        out["final_circuit"][split] = {
            "step": doc["step"], "size": doc["circuit"]["size"], "recovered": doc["circuit"]["recovered"],
            "n_edges": doc["graph"]["n_edges"],
            "edges": [{"writer": nodes[doc["edges"][e]["src"]], "reader": nodes[doc["edges"][e]["dst"]],
                       "score": doc["edges"][e]["score"], "exact": doc["edges"][e]["exact"]}
                      for e in doc["circuit"]["edges"]],
        }
    return out


def _discovery_html(discovery: Any) -> list[str]:
    """The "Discovered circuit" section: graph, faithfulness curves, formation, table."""
    from grokscope import plots

    parts = ['<h2 id="discovered">Discovered circuit</h2>',
             '<p class="note">Edge-level discovery over the component graph (writers: embedding, each head\'s '
             "<code>hook_z</code> times its <code>W_O</code>, each MLP output; readers: each head's query, key and "
             "value input, each MLP input, the logits), scored with "
             f"{html.escape(str(discovery.settings.get('method')))} on the "
             f"{html.escape(str(discovery.settings.get('perturbation') or 'first'))} counterfactual. The circuit is "
             "the smallest top-|score| edge set (pruned) whose exact faithfulness (every other edge patched) "
             "reaches 0.9. Coverage: share of the circuit's |score| on the residual paths of the located "
             "(hypothesis) circuit above.</p>"]
    for i, (split, doc) in enumerate(discovery.final.items()):
        parts.append(_fig_html(plots.discovered_graph(doc, title=f"{split}: " + (
            f"{doc['circuit']['size']} of {doc['graph']['n_edges']} edges recover {doc['circuit']['recovered']:.2f} "
            f"at step {doc['step']}")), f"fig-discovered-{i}"))
    curves = {f"{split}, step {r['step']}": r["curve"] for split, recs in discovery.records.items()
              for r in (recs[0], recs[-1]) if recs}
    parts.append(_fig_html(plots.faithfulness_figure(curves), "fig-discovered-curve"))
    parts.append(_fig_html(plots.discovery_formation(discovery.records), "fig-discovered-formation"))
    rows = []
    for split, recs in discovery.records.items():
        for r in recs:
            pos = ", ".join(f"{k} {v:.2f}" for k, v in r["shares"]["position"].items())
            kind = ", ".join(f"{k} {v:.2f}" for k, v in r["shares"]["kind"].items())
            rows.append([split, r["step"], r["clean_metric"] - r["corrupt_metric"], r["size"], r["fraction"],
                         r["recovered"], r["cpr"], r["cmd"], r["jaccard_final"], r["coverage"], pos, kind])
    parts.append(_table(("split", "step", "gap", "edges", "fraction", "recovered", "CPR", "CMD", "overlap with final",
                         "hypothesis coverage", "|attribution| by position", "by kind"), rows, left=1))
    parts.append('<p class="note">gap: the clean run\'s metric minus the metric with every edge patched; where it '
                 "is near 0 (an untrained model) the circuit and its recovered fraction are noise.</p>")
    return parts


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
    figs = _figures(series)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>',
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="note">Mechanistic analysis after Wang et al. (2024), "Grokked Transformers are Implicit '
        'Reasoners". Places are named by TransformerLens hook names; S[l] is <code>blocks.l.hook_resid_pre</code> '
        "(S[L]: the last block's <code>hook_resid_post</code>).</p>",
        "<nav>" + "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _, _ in figs)
        + ('<a href="#discovered">Discovered circuit</a>' if discovery is not None else "") + "</nav>",
        "<h2 id=\"run\">Run</h2>",
        _table(("setting", "value"), config_rows, left=2),
        "<h2 id=\"grokking\">Grokking</h2>",
        _table(("statistic", "value"), grok_rows),
        "<h2 id=\"checkpoints\">Checkpoints</h2>",
        _table(("step", "train acc", "test ID acc", "test OOD acc", "weight norm",
                *[f"layer {k}" for k in layer_keys]), ck_rows, left=0),
    ]
    for anchor, heading, note, fig in figs:
        parts += [f'<h2 id="{anchor}">{html.escape(heading)}</h2>', f'<p class="note">{note}</p>',
                  _fig_html(fig, f"fig-{anchor}")]
        if anchor == "circuit":
            parts += [_table(("node", "hook", "content", "MRR", "max strength"), node_rows),
                      _table(("edge from", "to", "perturbation", "weight"), edge_rows, left=3)]
            if final_c.get("notes"):
                parts.append('<p class="note">' + html.escape("; ".join(final_c["notes"])) + "</p>")
    if discovery is not None:
        parts += _discovery_html(discovery)
    parts += [f'<p class="note">Written by grokscope {__version__}; data in <code>{SUMMARY_FILE}</code>.</p>',
              "</body></html>"]
    return "\n".join(parts)


def write_report(
    run: Run | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    steps: str | Sequence[int] | None = None,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float | None = None,
    progress: bool = True,
    cache: bool = True,
    device: str | None = None,
    discovery: bool = True,
) -> Report:
    """Analyse a run and write ``report.html`` and ``summary.json`` into ``out``.

    Args:
        run: a :class:`Run` or its directory (composition or comparison).
        out: output directory (default ``reports/<run directory name>``).
        steps: ``None``/``"all"``, ``"N,M"`` or a list of checkpoint steps.
        split: the split whose examples are analysed.
        n: examples per checkpoint (the paper: 300).
        seed: sampling seed (the same examples at every step).
        threshold: lens MRR threshold of the circuit finder (default 0.5).
        progress: tqdm bar over checkpoints.
        cache: use the run's analysis cache.
        device: where models are loaded (None: CPU).
        discovery: add the "Discovered circuit" section (edge-level discovery at every
            analysed checkpoint, on train_inferred and test_inferred_iid; cached).

    Returns:
        A :class:`Report` with both paths.

    Example:
        >>> write_report("runs/tiny", "reports/tiny", steps="0,1500")    # doctest: +SKIP
    """
    from grokscope.patching.hypothesis import DEFAULT_THRESHOLD

    run = run if isinstance(run, Run) else Run.open(run)
    series = analyse_series(
        run, steps, split=split, n=n, seed=seed,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        progress=progress, cache=cache, device=device,
    )
    out_dir = Path(out) if out is not None else default_out_dir(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    disc = None
    if discovery:
        from grokscope.discovery.series import discovery_series

        disc = discovery_series(run, series.steps, n=n, seed=seed, cache=cache, device=device, progress=progress)
    page = render_html(series, run, disc)
    atomic_write_bytes(out_dir / REPORT_FILE, page.encode("utf-8"))
    atomic_write_json(out_dir / SUMMARY_FILE, summary_dict(series, run, disc))
    return Report(html=out_dir / REPORT_FILE, summary=out_dir / SUMMARY_FILE, series=series)
