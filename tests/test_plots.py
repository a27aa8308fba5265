"""Tests for grokscope.plots: every figure is a go.Figure with the expected traces,
frames, colour scales and hook-named axes, built from a real (micro) series."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from grokscope import plots
from grokscope.lens.checkpoint import checkpoint_lens
from grokscope.lens.logit import lens_split
from grokscope.patching.checkpoint import checkpoint_trace
from grokscope.runs.presets import preset
from grokscope.runs.run import Run
from grokscope.series.engine import analyse_series

N = 20
MICRO = {
    "task.n_entities": "30", "task.n_relations": "6", "task.out_degree": "4", "task.phi": "3",
    "task.ood_fraction": "0.2",
    "model.n_layers": "3", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
    "train.batch_size": "32", "train.max_steps": "40", "train.eval_every": "10", "train.dense_every": "20",
    "train.dense_until": "20", "train.log_per_decade": "1", "train.warmup_steps": "5", "train.eval_size": "50",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    from grokscope.training.loop import train_new

    torch.set_num_threads(1)
    return train_new(preset("composition-tiny").override(MICRO), tmp_path_factory.mktemp("plots") / "r", quiet=True)


@pytest.fixture(scope="module")
def series(run):
    return analyse_series(run, n=N, progress=False)


def test_training_curves_traces_axes_and_grokking_marks():
    metrics = [
        {"step": s, "acc": {"train_inferred": a, "test_inferred_iid": b, "test_inferred_ood": 0.0},
         "loss": {"train_inferred": 1 - a, "test_inferred_iid": 1 - b, "test_inferred_ood": 3.0},
         "train_loss": None if s == 0 else 0.5}
        for s, a, b in [(0, 0.0, 0.0), (100, 0.995, 0.3), (200, 1.0, 0.5), (400, 1.0, 0.97)]
    ]
    grok = {"train_saturated_step": 100, "iid_generalized_step": 400, "grokking_gap": 300}
    fig = plots.training_curves(metrics, [0, 100, 200, 400], grok)
    assert isinstance(fig, go.Figure)
    # 3 acc + 3 loss + training loss + checkpoints + 2 grokking lines
    assert len(fig.data) == 10
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert fig.layout.yaxis.title.text.startswith("accuracy") and fig.layout.yaxis2.title.text.startswith("loss")
    assert "training step" in fig.layout.xaxis2.title.text
    names = [t.name for t in fig.data]
    assert any("grokking gap 300" in n for n in names) and "checkpoints" in names
    ck = next(t for t in fig.data if t.name == "checkpoints")
    assert list(ck.x) == [100, 200, 400]  # step 0 cannot sit on a log axis
    colors = {t.name: t.line.color for t in fig.data if t.name and t.name.startswith("test OOD")}
    assert set(colors.values()) == {plots.SPLIT_COLORS["test_inferred_ood"]}
    assert len(plots.training_curves(metrics, log_x=False).data) == 7


def test_lens_heatmap_from_series_dict_and_lensresult(run, series):
    fig = plots.lens_heatmap(series)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    hm = fig.data[0]
    L = run.config.model.n_layers
    # composition-tiny is untied: both r2 targets are undecodable, so no r2 column is drawn
    assert set(series.lens_undecodable) == {"r2@r2", "r2@r2/rel"}
    assert np.asarray(hm.z).shape == (L + 1, 2) and not any("r2@r2" in x for x in hm.x)
    assert hm.colorscale == go.Heatmap(colorscale=plots.SEQUENTIAL).colorscale and hm.zmin == 0 and hm.zmax == 1
    assert "blocks.0.hook_resid_pre" in fig.layout.yaxis.ticktext[0] and "hook name" in fig.layout.yaxis.title.text
    assert fig.layout.xaxis.title.text and "position" in fig.layout.xaxis.title.text
    assert "hook blocks.1.hook_resid_pre" in hm.text[1][0] and "top decoded token" in hm.text[1][0]
    np.testing.assert_allclose(np.asarray(hm.z)[:, 0], series.lens_mrr("bridge@r1")[-1])
    d = checkpoint_lens(run, series.steps[-1], n=N)
    np.testing.assert_allclose(np.asarray(plots.lens_heatmap(d).data[0].z), np.asarray(hm.z))
    ds = run.dataset()
    lr = lens_split(run.load_model(), ds.splits["train_inferred"], ds.vocab, n=N)
    assert np.asarray(plots.lens_heatmap(lr).data[0].z).shape == (L + 1, 2)


def test_tracing_heatmap_panels_and_diff(run, series):
    fig = plots.tracing_heatmap(series)
    assert len(fig.data) == 3 and fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    assert fig.layout.yaxis.ticktext[-1].endswith("hook_resid_post") and "hook name" in fig.layout.yaxis.title.text
    assert all(fig.layout[f"xaxis{i if i > 1 else ''}"].title.text == "input position (role)" for i in (1, 2, 3))
    first, last = series.steps[0], series.steps[-1]
    diff = plots.tracing_heatmap(series, last, diff_from=first)
    assert len(diff.data) == 6 and diff.layout.coloraxis2.cmid == 0
    want = series.strength("h")[-1] - series.strength("h")[0]
    np.testing.assert_allclose(np.asarray(diff.data[3].z), want)
    assert diff.data[3].coloraxis == "coloraxis2"
    # trace dicts work too, including per-head sites (rows: layer x head)
    a = checkpoint_trace(run, last, n=N, perturbations=["h", "r1"])
    b = checkpoint_trace(run, first, n=N, perturbations=["h", "r1"])
    assert len(plots.tracing_heatmap(a, diff_from=b).data) == 4
    head = checkpoint_trace(run, last, n=N, site="head", perturbations=["r2"])
    hf = plots.tracing_heatmap(head)
    assert np.asarray(hf.data[0].z).shape == (run.config.model.n_layers * run.config.model.n_heads, 3)
    assert "blocks.0.attn.hook_z[head 1]" in hf.layout.yaxis.ticktext
    with pytest.raises(ValueError, match="strength"):
        plots.tracing_heatmap(series, metric="rank")


def test_circuit_diagram(series):
    c = series.checkpoints[-1]["circuit"]
    fig = plots.circuit_diagram(c)
    assert len(fig.data) == len(c["edges"]) + 2
    nodes = fig.data[-1]
    assert list(nodes.x) == [nd["position"] for nd in c["nodes"]] and list(nodes.y) == [nd["layer"] for nd in c["nodes"]]
    assert any(f": {nd['content']}" in t for nd in c["nodes"] for t in nodes.text)
    assert "hook name" in fig.layout.yaxis.title.text and fig.layout.xaxis.title.text == "input position (role)"
    assert fig.layout.xaxis.ticktext == ("0: h", "1: r1", "2: r2")
    widths = [t.line.width for t in fig.data[: len(c["edges"])]]
    want = [1 + 9 * max(e["weight"], 0) for e in c["edges"]]
    np.testing.assert_allclose(widths, want)
    # A long note is wrapped to lines that fit a 1,400-px window, and the margin grows with it.
    long = dict(c, notes=["v1 never resolved below the last layer: e1 linked straight to the output " * 3,
                          "a second note"])
    note = plots.circuit_diagram(long).layout.annotations[-1]
    lines = note.text.split("<br>")
    assert len(lines) >= 3 and max(map(len, lines)) <= plots.NOTE_WIDTH and lines[-1] == "a second note"
    assert note.xanchor == "left" and plots.circuit_diagram(long).layout.margin.b >= 90 + 16 * len(lines)


def test_formation_sliders(series):
    lf = plots.lens_formation(series)
    assert len(lf.data) == 1 and len(lf.frames) == len(series.steps)
    assert [f.name for f in lf.frames] == [str(s) for s in series.steps]
    assert [s.label for s in lf.layout.sliders[0].steps] == [str(s) for s in series.steps]
    assert lf.layout.sliders[0].active == len(series.steps) - 1
    np.testing.assert_allclose(np.asarray(lf.frames[0].data[0].z)[:, 0], series.lens_mrr("bridge@r1")[0])
    tf = plots.tracing_formation(series)
    assert len(tf.data) == 3 and len(tf.frames) == len(series.steps)
    assert all(len(f.data) == 3 for f in tf.frames)
    np.testing.assert_allclose(np.asarray(tf.frames[0].data[1].z), series.strength("r1")[0])
    assert tf.layout.yaxis.ticktext[0].startswith("S[0] blocks.0.hook_resid_pre")


def test_circuit_measures_and_ood(series):
    m = series.measures()
    fig = plots.circuit_measures(series)
    n_acc = sum(1 for s in ("train_inferred", "test_inferred_iid", "test_inferred_ood")
                if any(a is not None for a in series.acc(s)))
    assert len(fig.data) == len(m["measures"]) + n_acc + 1
    assert fig.layout.xaxis.type == "log" and m["hook_name"] in fig.layout.annotations[0].text
    assert fig.layout.yaxis2.title.text.startswith("accuracy")
    colors = [t.line.color for t in fig.data]
    assert len(set(colors)) == len(colors)  # one colour per legend entry, none shared with a split
    assert not any(k.startswith("MRR r2") for k in m["measures"])  # undecodable here
    ood = series.checkpoints[-1]["ood"]
    of = plots.ood_diagnosis_figure(ood)
    assert len(of.data) == 3 * len(ood["splits"]) and "hook name" in of.layout.xaxis.title.text
    assert of.layout.xaxis.ticktext[0].endswith("blocks.0.hook_resid_pre")


def test_value_gap_figure_plots_each_split_by_distance():
    diag = {"n_values": 3, "splits": {
        "test_inferred_ood": {"n": 4, "accuracy": 0.5, "gap": [0, 1, 2], "n_by_gap": [2, 2, 0],
                              "acc_by_gap": [0.0, 1.0, None], "acc_by_label": {}},
        "train_inferred": {"n": 2, "accuracy": 1.0, "gap": [0, 1, 2], "n_by_gap": [1, 0, 1],
                           "acc_by_gap": [1.0, None, 1.0], "acc_by_label": {}},
    }}
    fig = plots.value_gap_figure(diag)
    assert [t.name.split(" (all")[0] for t in fig.data] == ["train (inferred)", "test OOD (inferred)"]
    ood = fig.data[1]
    assert list(ood.y) == [0.0, 1.0, None] and list(ood.customdata) == [2, 2, 0]
    assert "all: 0.50, n=4" in ood.name and fig.layout.xaxis.dtick == 1


def test_compare_runs_one_panel_per_split_one_colour_per_run():
    a = [{"step": 0, "acc": {"train_inferred": 0.0, "test_inferred_iid": 0.1}},
         {"step": 10, "acc": {"train_inferred": 1.0, "test_inferred_iid": 0.9}}]
    b = [{"step": 0, "acc": {"train_inferred": 0.2}}, {"step": 5, "acc": {"train_inferred": 0.5}}]
    fig = plots.compare_runs({"A": a, "B": b}, splits=("train_inferred", "test_inferred_iid"))
    assert [(t.name, t.xaxis) for t in fig.data] == [("A", "x"), ("A", "x2"), ("B", "x"), ("B", "x2")]
    assert list(fig.data[1].y) == [0.1, 0.9] and np.isnan(fig.data[3].y).all()  # B never measured test ID
    assert fig.data[0].line.color != fig.data[2].line.color == fig.data[3].line.color
    assert [t.showlegend for t in fig.data] == [True, False, True, False]
    assert plots.compare_runs({"A": a}, log_x=True).data[0].x.tolist() == [10.0]
