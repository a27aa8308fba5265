"""Tests for grokscope.series.engine: measures across checkpoints and the disk cache.

A micro composition run (3 layers, three checkpoints) trains once for the module; every
series is compared against the analysis functions called directly on the same
examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from grokscope.lens.checkpoint import checkpoint_lens
from grokscope.lens.logit import lens_split
from grokscope.patching.checkpoint import checkpoint_trace
from grokscope.patching.tracing import make_counterfactuals, trace
from grokscope.progress.diagnoses import ood_diagnosis, value_gap_diagnosis
from grokscope.runs.presets import preset
from grokscope.runs.run import Run
from grokscope.series import cache as cache_mod
from grokscope.series.cache import CACHE_DIR_NAME, AnalysisCache
from grokscope.series.engine import analyse_series, parse_steps, weight_norm
from grokscope.series.records import SeriesResult

N = 24  # examples per analysis: small and fast

MICRO = {
    "model.n_layers": "3", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
    "train.batch_size": "32", "train.max_steps": "40", "train.eval_every": "10", "train.dense_every": "20",
    "train.dense_until": "20", "train.log_per_decade": "1", "train.warmup_steps": "5", "train.eval_size": "50",
}
COMPOSITION = {"task.n_entities": "30", "task.n_relations": "6", "task.out_degree": "4", "task.phi": "3",
               "task.ood_fraction": "0.2"}
COMPARISON = {"task.n_entities": "20", "task.n_attributes": "3", "task.n_values": "6"}


def micro_run(path, task: str = "composition") -> Run:
    """Train a micro run (about two seconds): checkpoints at steps 0, 20 and 40."""
    from grokscope.training.loop import train_new

    ov = COMPOSITION if task == "composition" else COMPARISON
    return train_new(preset(f"{task}-tiny").override({**MICRO, **ov}), path, quiet=True)


@pytest.fixture(scope="module")
def comp_run(tmp_path_factory) -> Run:
    torch.set_num_threads(1)
    return micro_run(tmp_path_factory.mktemp("series") / "comp")


def _dump(s: SeriesResult) -> str:
    return json.dumps(s.to_dict(), sort_keys=True)


def test_second_pass_reads_the_cache_and_loads_no_model(comp_run, monkeypatch):
    first = analyse_series(comp_run, n=N, progress=False)
    assert first.cache_hits == 0 and first.cache_misses > 0
    assert (comp_run.path / CACHE_DIR_NAME).is_dir()

    def no_model(*a, **k):
        raise AssertionError("a cached pass must not load a model")

    monkeypatch.setattr(Run, "load_model", no_model)
    second = analyse_series(comp_run, n=N, progress=False)
    assert second.cache_misses == 0 and second.cache_hits == first.cache_misses
    assert _dump(second) == _dump(first)
    assert SeriesResult.from_dict(json.loads(_dump(first))).to_dict() == json.loads(_dump(first))


def test_changing_arguments_misses_the_cache(comp_run):
    analyse_series(comp_run, n=N, progress=False)
    n_steps = len(comp_run.steps())
    other_n = analyse_series(comp_run, n=N - 4, progress=False)
    # lens, trace, circuit and ood depend on n; the weight norm does not
    assert other_n.cache_misses == 4 * n_steps and other_n.cache_hits == n_steps
    other_seed = analyse_series(comp_run, n=N, seed=1, progress=False)
    assert other_seed.cache_misses == 4 * n_steps
    thr = analyse_series(comp_run, n=N, threshold=0.3, progress=False)
    assert thr.cache_misses == 2 * n_steps  # the circuit and the OOD diagnosis use the threshold
    assert _dump(other_n) != _dump(analyse_series(comp_run, n=N, progress=False))


def test_a_new_version_or_a_corrupt_file_misses(comp_run, monkeypatch):
    step = comp_run.steps()[-1]
    cache = AnalysisCache(comp_run)
    want = checkpoint_lens(comp_run, step, n=N, cache=cache)
    path = cache.path(step, "lens", {"split": "train_inferred", "n": N, "seed": 0, "within_class": False})
    assert path.is_file()
    path.write_text("{ not json")
    again = AnalysisCache(comp_run)
    assert checkpoint_lens(comp_run, step, n=N, cache=again) == want and again.misses == 1
    monkeypatch.setattr(cache_mod, "__version__", "999.0")
    newer = AnalysisCache(comp_run)
    checkpoint_lens(comp_run, step, n=N, cache=newer)
    assert newer.misses == 1 and newer.hits == 0


def test_unwritable_cache_still_analyses(comp_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = AnalysisCache(comp_run, directory=blocker / "cache")  # cannot mkdir under a file
    step = comp_run.steps()[-1]
    d = checkpoint_lens(comp_run, step, n=N, cache=cache)
    assert d["targets"]["bridge@r1"]["mrr"] and cache.hits == 0


def test_series_matches_the_analyses_called_directly(comp_run):
    s = analyse_series(comp_run, n=N, progress=False)
    steps = comp_run.steps()
    L = comp_run.config.model.n_layers
    assert s.steps == steps and s.task == "composition"
    assert s.hook_names[0] == "blocks.0.hook_resid_pre" and s.hook_names[-1] == f"blocks.{L - 1}.hook_resid_post"
    assert s.position_roles == ["h", "r1", "r2"] and s.perturbations == ["h", "r1", "r2"]
    assert s.lens_mrr("bridge@r1").shape == (len(steps), L + 1)
    assert s.strength("h").shape == (len(steps), L + 1, 3)
    ds = comp_run.dataset()
    step = steps[-1]
    model = comp_run.load_model(step)
    lens = lens_split(model, ds.splits["train_inferred"], ds.vocab, n=N, seed=0)
    for t in ("bridge@r1", "r2@r2", "t@last"):
        np.testing.assert_allclose(s.lens_mrr(t)[-1], lens.mrr(t).numpy(), rtol=1e-6)
    tr = trace(model, make_counterfactuals(ds, "train_inferred", n=N, seed=0), site="resid")
    for i, p in enumerate(tr.perturbations):
        np.testing.assert_allclose(s.strength(p)[-1], tr.strength[i].numpy(), rtol=1e-6)
    # accuracies come from metrics.jsonl at the checkpoint's step
    by_step = {m["step"]: m["acc"] for m in comp_run.metrics()}
    assert s.acc("test_inferred_iid") == [by_step[x]["test_inferred_iid"] for x in steps]
    # the weight norm is sqrt(sum of squared parameters) of the checkpoint
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in model.state_dict().values() if v.is_floating_point()))
    assert s.checkpoint(step)["weight_norm"] == pytest.approx(norm, rel=1e-6)
    assert weight_norm(comp_run, step) == pytest.approx(norm, rel=1e-6)
    assert s.grokking["final_step"] == comp_run.metrics()[-1]["step"]
    m = s.measures()
    assert 0 < m["reference_layer"] < L and len(m["weight_norm"]) == len(steps)
    assert all(len(v) == len(steps) for v in m["measures"].values())


def test_every_step_uses_the_same_examples(comp_run):
    rows = {json.dumps(checkpoint_lens(comp_run, st, n=N)["example_index"]) for st in comp_run.steps()}
    assert len(rows) == 1
    tr = {json.dumps(checkpoint_trace(comp_run, st, n=N)["examples"]["h"]["clean"]) for st in comp_run.steps()}
    assert len(tr) == 1


def test_lens_and_trace_json_hold_examples_and_hook_names(comp_run):
    step = comp_run.steps()[-1]
    d = checkpoint_lens(comp_run, step, n=N)
    assert len(d["inputs"]) == N and len(d["inputs"][0]) == 3
    assert np.array(d["targets"]["bridge@r1"]["ranks"]).shape == (comp_run.config.model.n_layers + 1, N)
    assert len(d["top_tokens"]["tokens"]) == len(d["hook_names"])
    t = checkpoint_trace(comp_run, step, n=N, site="mlp", perturbations=["r2"])
    assert t["site"] == "mlp" and t["hook_names"][0] == "blocks.0.hook_mlp_out" and t["perturbations"] == ["r2"]
    assert "changed" in t["per_example"]["r2"] and t["examples"]["r2"]["corrupt"]
    with pytest.raises(ValueError, match="choose from h, r1, r2"):
        checkpoint_trace(comp_run, step, n=N, perturbations=["e1"])
    with pytest.raises(ValueError, match="resid, attn, mlp, head"):
        checkpoint_trace(comp_run, step, n=N, site="neuron")


def test_ood_diagnosis_accuracy_is_the_models_own(comp_run):
    ds = comp_run.dataset()
    model = comp_run.load_model(comp_run.steps()[-1])
    d = ood_diagnosis(model, ds)
    sp = ds.splits["test_inferred_ood"]
    assert len(sp) > 0 and set(d["splits"]) == {"test_inferred_ood", "test_inferred_iid"}
    with torch.no_grad():
        logits = model(torch.from_numpy(sp.input_ids))[:, -1]
    acc = float((logits.argmax(-1).numpy() == sp.meta["t"]).mean())
    ood = d["splits"]["test_inferred_ood"]
    assert ood["accuracy"] == pytest.approx(acc) and ood["n"] == len(sp)
    assert len(ood["bridge_mrr"]) == len(d["hook_names"]) == comp_run.config.model.n_layers + 1


def test_comparison_gets_the_value_gap_diagnosis(tmp_path, comp_run):
    run = micro_run(tmp_path / "cmp", "comparison")
    model, ds = run.load_model(), run.dataset()
    with pytest.raises(ValueError, match="composition"):
        ood_diagnosis(model, ds)
    s = analyse_series(run, "0,40", n=N, progress=False, cache=False)
    assert s.task == "comparison" and s.perturbations == ["e1", "e2", "attr"] and s.steps == [0, 40]
    assert "MRR labels @ S" in " ".join(s.measures()["measures"])
    d = s.checkpoints[-1]["ood"]
    assert d == value_gap_diagnosis(model, ds, n=N)
    # Independent reference: the model's argmax on every OOD example, bucketed by hand.
    sp = ds.splits["test_inferred_ood"]
    values = {int(t): int(ds.vocab.tokens[t].strip("<>")) for t in ds.vocab.value_ids}
    rows = np.sort(np.random.default_rng(0).choice(len(sp), N, replace=False)) if len(sp) > N else np.arange(len(sp))
    got = d["splits"]["test_inferred_ood"]
    buckets: dict[int, list[bool]] = {}
    for i in rows:
        pos = int(sp.target_pos[i])
        with torch.no_grad():
            pred = int(model(torch.from_numpy(sp.tokens[i : i + 1, : pos + 1]))[0, pos].argmax())
        gap = abs(values[int(sp.meta["v1"][i])] - values[int(sp.meta["v2"][i])])
        buckets.setdefault(gap, []).append(pred == int(sp.tokens[i, pos + 1]))
    assert got["n"] == len(rows) and sum(got["n_by_gap"]) == len(rows)
    for gap, n_gap in enumerate(got["n_by_gap"]):
        ref = buckets.get(gap, [])
        assert n_gap == len(ref)
        assert got["acc_by_gap"][gap] == (pytest.approx(np.mean(ref)) if ref else None)
    with pytest.raises(ValueError, match="comparison"):
        value_gap_diagnosis(comp_run.load_model(), comp_run.dataset())


def test_parse_steps():
    assert parse_steps(None, [0, 5]) == [0, 5] and parse_steps("all", [0, 5]) == [0, 5]
    assert parse_steps("5, 0", [0, 5]) == [0, 5] and parse_steps([5], [0, 5]) == [5]
    with pytest.raises(ValueError, match="available steps: 0, 5"):
        parse_steps("7", [0, 5])
    with pytest.raises(ValueError, match="comma-separated"):
        parse_steps("first", [0, 5])
