"""The report's HTML sections: the page style, tables, figures (the series', the progress measures', the discovered circuit's) and the sentences that say what changed."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from grokscope.discovery.graph import GraphNode
from grokscope.series.engine import SeriesResult

PAGE_CSS = """
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



def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
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


def fig_html(fig: Any, div_id: str) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, auto_play=False,
        config={"displaylogo": False, "responsive": True},
    )


def series_figures(series: SeriesResult) -> list[tuple[str, str, str, Any]]:
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
    return out + progress_figures(series)


def progress_figures(series: SeriesResult) -> list[tuple[str, str, str, Any]]:
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


def formation_sentences(discovery: Any) -> list[str]:
    """What changed between the first and the last discovered circuit, per split, in words:
    size, the strongest edge and its share, the overlap, and whether the first is reliable."""
    out = []
    for split, recs in discovery.records.items():
        if len(recs) < 2:
            continue
        a, b = recs[0], recs[-1]

        def top(r: dict[str, Any]) -> str:
            if not r["top_edges"]:
                return "no edge"
            e = r["top_edges"][0]
            total = sum(abs(x["score"]) for x in r["top_edges"]) or 1.0
            name = f"{GraphNode(**node_args(e['src'])).name}->{GraphNode(**node_args(e['dst'])).name}" \
                   f"@{e['src']['position']}"
            return f"{name} ({abs(e['score']) / total:.0%} of the top {len(r['top_edges'])} edges' |score|)"

        gap_a = a["clean_metric"] - a["corrupt_metric"]
        out.append(
            f"{split}: at step {a['step']} the smallest circuit recovering 0.9 has {a['size']} edges "
            f"(clean - corrupt gap {gap_a:.2f}); its strongest edge is {top(a)}. At step {b['step']} it has "
            f"{b['size']} edges; the strongest is {top(b)}. The first circuit shares "
            f"{a['jaccard_final']:.2f} of its edges with the last (Jaccard)."
        )
    return out


def node_args(node: dict[str, Any]) -> dict[str, Any]:
    return {"kind": node["kind"], "position": node["position"], "layer": node.get("layer"), "head": node.get("head")}


def discovery_html(discovery: Any) -> list[str]:
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
    parts.extend(f'<p>{html.escape(line)}</p>' for line in formation_sentences(discovery))
    for i, (split, doc) in enumerate(discovery.final.items()):
        parts.append(fig_html(plots.discovered_graph(doc, title=f"{split}: " + (
            f"{doc['circuit']['size']} of {doc['graph']['n_edges']} edges recover {doc['circuit']['recovered']:.2f} "
            f"at step {doc['step']}")), f"fig-discovered-{i}"))
    curves = {f"{split}, step {r['step']}": r["curve"] for split, recs in discovery.records.items()
              for r in (recs[0], recs[-1]) if recs}
    parts.append(fig_html(plots.faithfulness_figure(curves), "fig-discovered-curve"))
    parts.append(fig_html(plots.discovery_formation(discovery.records), "fig-discovered-formation"))
    rows = []
    for split, recs in discovery.records.items():
        for r in recs:
            pos = ", ".join(f"{k} {v:.2f}" for k, v in r["shares"]["position"].items())
            kind = ", ".join(f"{k} {v:.2f}" for k, v in r["shares"]["kind"].items())
            gap = r["clean_metric"] - r["corrupt_metric"]
            rows.append([split, r["step"], f"{gap:.3g}" + ("" if r.get("reliable", True) else " (noise)"), r["size"],
                         r["fraction"],
                         r["recovered"], r["cpr"], r["cmd"], r["jaccard_final"], r["coverage"], pos, kind])
    parts.append(table_html(("split", "step", "gap", "edges", "fraction", "recovered", "CPR", "CMD", "overlap with final",
                         "hypothesis coverage", "|attribution| by position", "by kind"), rows, left=1))
    parts.append('<p class="note">gap: the clean run\'s metric minus the metric with every edge patched; where it '
                 "is near 0 (an untrained model) the circuit and its recovered fraction are noise; such rows say (noise): "
                 "the gap is under 3 standard errors or under 5% of the metric's scale.</p>")
    return parts


def probe_splits_html(series: SeriesResult, run: Any, n_examples: int = 2) -> list[str]:
    """The "Probe splits" section: every probe split's accuracy at each analysed checkpoint
    (the checkpoints table shows three) and a few items of each as the split files write them
    (plain English for a task with ``text_files``)."""
    from grokscope.tasks.base import get_task

    ds = run.dataset()
    spec = get_task(ds.task)
    names = list(ds.probe_splits)
    rows = [[c["step"], *[c["acc"].get(s) for s in names]] for c in series.checkpoints]
    examples = []
    for name in names:
        split = ds.splits[name]
        if len(split):
            sub = split.subset(list(range(min(n_examples, len(split)))))
            examples += [(name, len(split), inp, tgt[len(inp):]) for inp, tgt in spec.text_items(ds, sub)]
    return [
        '<h2 id="probes">Probe splits</h2>',
        '<p class="note">Accuracy of every probe split the trainer evaluates (exact match of the whole answer '
        "where answers are several tokens), then items of each split as its file writes them.</p>",
        table_html(("step", *names), rows, left=0),
        table_html(("split", "items", "input_text", "answer"), examples, left=4),
    ]
