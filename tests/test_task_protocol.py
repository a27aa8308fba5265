"""The task protocol: a task registered in this file alone runs through lens, tracing,
circuit, series and report; k-hop composition generalises composition exactly."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch

from grokscope.runs.config import ModelConfig, RunConfig, TrainConfig
from grokscope.tasks import (
    CircuitHypothesis,
    CompositionConfig,
    CounterfactualDraw,
    LensTarget,
    Stage,
    Task,
    get_task,
    register_task,
)
from grokscope.tasks.base import pick_per_row
from grokscope.tasks.builtin.khop import KHopConfig, generate_khop
from grokscope.tasks.dataset import Split, TaskDataset, make_split
from grokscope.tasks.vocab import Vocab

# --------------------------------------------------------------------------- a toy task, in a few lines


@dataclass(frozen=True)
class CopyConfig:
    n_entities: int = 12
    seed: int = 0
    task: Literal["copy"] = "copy"


class CopyTask(Task):
    """``<e_x><r_0>`` -> ``<e_x>``: copy the first token to the answer."""

    name = "copy"
    config_cls = CopyConfig
    probe_splits = ("train_inferred", "test_inferred_iid")
    inferred_roles = ("x", "r")
    perturbations = ("x",)
    hypothesis = CircuitHypothesis(
        kind="staged", inputs=("x", "r"),
        stages=(Stage("x@r", "r", "x", sources=(("x", "x"),), perturbation="x"),),
        output_target="t@last", output_role="r", output_content="t",
    )

    def _split(self, name: str, vocab: Vocab, x: np.ndarray) -> Split:
        ent, r0 = vocab.entity_ids, vocab["<r_0>"]
        inputs = np.stack([ent[x], np.full(len(x), r0)], axis=1)
        return make_split(name, inputs, ent[x], vocab, atomic=False, meta={"x": ent[x], "t": ent[x]},
                          roles={"x": 0, "r": 1})

    def generate(self, cfg: CopyConfig) -> TaskDataset:
        vocab = Vocab.composition(cfg.n_entities, 1)
        x = np.random.default_rng(cfg.seed).permutation(cfg.n_entities)
        splits = {name: self._split(name, vocab, x) for name in ("train", *self.probe_splits)}
        return TaskDataset("copy", vocab, None, splits, counts={}, config=dataclasses.asdict(cfg))

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        e_of = {int(t): i for i, t in enumerate(vocab.entity_ids)}
        splits = {n: self._split(n, vocab, np.array([e_of[row[0]] for row in parsed[n][0]])) for n in parsed}
        return TaskDataset("copy", vocab, None, splits, counts={})

    def counterfactuals(self, dataset, split, rows, perturbation, rng, *, id_only=True) -> CounterfactualDraw:
        x = split.meta["x"][rows]
        ent = dataset.vocab.entity_ids
        j = pick_per_row(rng, ent[None, :] != x[:, None])
        return CounterfactualDraw(new_token=np.where(j >= 0, ent[j], -1), answer=x, cf_answer=ent[j])

    def lens_targets(self, split, vocab, *, within_class=False) -> list[LensTarget]:
        return [LensTarget("x@r", split.roles["r"], split.meta["x"]), LensTarget("t@last", split.target_pos, split.meta["t"])]


register_task(CopyTask())


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    from grokscope.training.loop import train_new

    torch.set_num_threads(1)
    cfg = RunConfig(
        task=CopyConfig(),
        model=ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64),
        train=TrainConfig(lr=3e-3, warmup_steps=10, batch_size=12, max_steps=150, eval_every=50, eval_size=None,
                          dense_every=50, dense_until=150, log_per_decade=0, device="cpu", threads=1),
        name="copy-toy",
    )
    return train_new(cfg, tmp_path_factory.mktemp("proto") / "copy", quiet=True)


def test_a_task_registered_in_one_file_runs_through_every_analysis(copy_run, tmp_path):
    from grokscope.lens.logit import lens_split
    from grokscope.patching.hypothesis import find_circuit
    from grokscope.patching.tracing import make_counterfactuals, trace
    from grokscope.report import write_report

    run = copy_run
    ds = run.dataset()
    assert ds.task == "copy" and get_task(ds) is get_task("copy")
    model = run.load_model()
    clean_top1 = model(torch.from_numpy(ds.splits["train_inferred"].input_ids))[:, -1].argmax(-1)
    # It learned to copy: the recorded accuracy is the model's own on every row.
    acc = float((clean_top1.numpy() == ds.splits["train_inferred"].targets).mean())
    assert acc == pytest.approx(run.metrics()[-1]["acc"]["train_inferred"])
    assert acc == 1.0

    lens = lens_split(model, ds.splits["train_inferred"], ds.vocab)
    assert lens.names == ["x@r", "t@last"]
    assert float(lens.recall("t@last", 1)[-1]) == acc  # the lens at S[L] is the model's logits

    cfs = make_counterfactuals(ds, n=None, seed=0)
    cf = cfs["x"]
    assert len(cf) == 12 and bool((cf.answer != cf.cf_answer).all())
    res = trace(model, cfs, site="resid")
    # Independent reference: patching S[0, x] from the x' run is the x' run itself, so the
    # share of changed predictions is the share of examples whose x' run predicts otherwise.
    cf_top1 = model(cf.corrupt)[:, -1].argmax(-1)
    clean = model(cf.clean)[:, -1].argmax(-1)
    assert float(res.strength[0, 0, 0]) == pytest.approx(float((cf_top1 != clean).double().mean()))

    circuit = find_circuit(model, ds, n=None)
    assert circuit.task == "copy" and circuit.kind == "staged"
    assert set(circuit.layers) == {"x@r", "t@last"}
    assert circuit.node("S[0,x]").strengths["x"] == pytest.approx(float(res.strength[0, 0, 0]))

    rep = write_report(run, tmp_path / "report", n=12, progress=False, cache=False)
    summary = json.loads(rep.summary.read_text())
    assert summary["run"]["task"] == "copy"
    assert summary["tracing"]["perturbations"] == ["x"]
    assert summary["checkpoints"][-1]["acc"]["train_inferred"] == acc
    assert "x@r" in rep.html.read_text()


# --------------------------------------------------------------------------- k-hop composition


SMALL = dict(n_entities=40, n_relations=12, out_degree=6, ood_fraction=0.05, test_fraction=0.05, probe_size=400)


def test_khop_with_two_hops_is_composition_fact_for_fact():
    comp = get_task("composition").generate(CompositionConfig(phi=5.0, seed=3, **SMALL))
    k2 = generate_khop(KHopConfig(hops=2, phi=5.0, seed=3, **SMALL))
    assert k2.content_hash() == comp.content_hash()
    for name, sp in comp.splits.items():
        assert np.array_equal(sp.tokens, k2.splits[name].tokens)
        assert sp.roles == k2.splits[name].roles
        assert {k: v.tolist() for k, v in sp.meta.items()} == {k: v.tolist() for k, v in k2.splits[name].meta.items()}
    assert np.array_equal(comp.kb.tail, k2.kb.tail) and np.array_equal(comp.kb.ood, k2.kb.ood)


def test_three_hop_facts_follow_the_chain_and_no_test_fact_is_trained():
    ds = generate_khop(KHopConfig(hops=3, phi=4.0, seed=1, **{**SMALL, "ood_fraction": 0.3}))
    vocab, kb = ds.vocab, ds.kb
    e = {int(t): i for i, t in enumerate(vocab.entity_ids)}
    r = {int(t): i for i, t in enumerate(vocab.relation_ids)}
    train = ds.splits["train"]
    inferred = train.tokens[~train.atomic][:, :4]
    answers = train.tokens[~train.atomic][:, 4]
    assert len(inferred) == round(4.0 * (kb.n_facts - int(kb.ood.sum())))
    for row, ans in zip(inferred.tolist(), answers.tolist()):  # recomputed hop by hop, a plain loop
        cur = e[row[0]]
        for tok in row[1:]:
            assert not kb.ood[cur, r[tok]], "a training chain uses an OOD fact"
            cur = int(kb.tail[cur, r[tok]])
            assert cur >= 0
        assert vocab.entity_ids[cur] == ans
    trained = {tuple(x) for x in inferred.tolist()}
    for name in ("test_inferred_iid", "test_inferred_ood"):
        assert len(ds.splits[name]) > 0
        assert not trained & {tuple(x) for x in ds.splits[name].input_ids.tolist()}
    ood = ds.splits["test_inferred_ood"].meta  # every hop of a test OOD chain is OOD
    for i in range(len(ood["h"])):
        cur = e[int(ood["h"][i])]
        for hop in ("r1", "r2", "r3"):
            assert kb.ood[cur, r[int(ood[hop][i])]]
            cur = int(kb.tail[cur, r[int(ood[hop][i])]])


def test_khop_counterfactuals_change_the_answer_through_the_chain():
    from grokscope.patching.tracing import make_counterfactuals

    ds = generate_khop(KHopConfig(hops=3, phi=4.0, seed=1, **SMALL))
    cfs = make_counterfactuals(ds, n=100, seed=0)
    assert sorted(cfs) == ["h", "r1", "r2", "r3"]
    e = {int(t): i for i, t in enumerate(ds.vocab.entity_ids)}
    r = {int(t): i for i, t in enumerate(ds.vocab.relation_ids)}
    for pert, cf in cfs.items():
        assert len(cf) >= 50, pert
        assert bool((cf.answer != cf.cf_answer).all())
        changed = (cf.clean != cf.corrupt).sum(1)
        assert bool((changed == 1).all()) and bool((cf.clean != cf.corrupt)[:, cf.position].all())
        for row, want in zip(cf.corrupt.tolist(), cf.cf_answer.tolist()):
            cur = e[row[0]]
            for tok in row[1:]:
                cur = int(ds.kb.tail[cur, r[tok]])
            assert ds.vocab.entity_ids[cur] == want


def test_khop_paper_format_round_trip_and_cli(tmp_path):
    from typer.testing import CliRunner

    from grokscope.cli import app
    from grokscope.tasks.paper_format import load_paper_format

    out = tmp_path / "k3"
    res = CliRunner().invoke(app, ["data", "khop", "--hops", "3", "--out", str(out), "--entities", "40",
                                   "--relations", "12", "--out-degree", "6", "--phi", "4", "--seed", "1"])
    assert res.exit_code == 0, res.output
    want = generate_khop(KHopConfig(n_entities=40, n_relations=12, out_degree=6, hops=3, phi=4.0, seed=1))
    back = load_paper_format(out, task="khop")
    assert back.content_hash() == want.content_hash()
    assert back.splits["train_inferred"].meta["b2"].tolist() == want.splits["train_inferred"].meta["b2"].tolist()
    bad = CliRunner().invoke(app, ["data", "khop", "--attributes", "3", "--out", str(tmp_path / "x")])
    assert "--attributes does not apply to the khop task" in str(bad.exception)


def test_khop_lens_targets_and_hypothesis_follow_k():
    ds = generate_khop(KHopConfig(hops=4, phi=1.0, seed=0, **{**SMALL, "n_entities": 20, "out_degree": 4}))
    task = get_task(ds).specialise(ds)
    assert task.perturbations == ("h", "r1", "r2", "r3", "r4")
    names = [t.name for t in task.lens_targets(ds.splits["train_inferred"], ds.vocab)]
    assert names == ["b1@r1", "b2@r2", "b3@r3", "r4@r4", "t@last", "r4@r4/rel"]
    assert [s.target for s in task.hypothesis.stages] == ["b1@r1", "b2@r2", "b3@r3", "r4@r4"]
    assert task.hypothesis.lens_names == set(names) - {"r4@r4/rel"}


def test_complex_reasoning_is_its_own_task_and_gets_its_diagnosis(tmp_path):
    from grokscope.progress.diagnoses import value_gap_diagnosis
    from grokscope.runs.presets import preset
    from grokscope.series.engine import analyse_series
    from grokscope.tasks import ComplexConfig
    from grokscope.training.loop import train_new

    base = preset("comparison-tiny")
    cfg = dataclasses.replace(
        base, task=ComplexConfig(n_entities=20, n_attributes=2, n_values=6, probe_size=200),
        model=ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64),
        train=dataclasses.replace(base.train, batch_size=32, max_steps=20, eval_every=10, dense_every=20,
                                  dense_until=20, log_per_decade=0, warmup_steps=5, eval_size=50),
        name="complex-micro",
    )
    run = train_new(cfg, tmp_path / "cx", quiet=True)
    ds = run.dataset()
    assert ds.task == "complex" and get_task(ds).name == "complex"
    s = analyse_series(run, "20", n=24, progress=False, cache=False)
    assert s.task == "complex" and s.perturbations == ["e1", "e2", "attr"]
    rec = s.checkpoints[-1]
    assert list(rec.diagnoses) == ["value_gap"]
    assert rec.diagnoses["value_gap"] == json.loads(json.dumps(value_gap_diagnosis(run.load_model(20), ds, n=24)))


def test_one_sampler_gives_lens_and_counterfactuals_the_same_rows():
    from grokscope.patching.tracing import make_counterfactuals
    from grokscope.series.sampling import sample_rows

    ds = get_task("composition").generate(CompositionConfig(phi=5.0, seed=3, **SMALL))
    n_rows = len(ds.splits["train_inferred"])
    rows = sample_rows(n_rows, 60, 7)
    # the reference: the draw every analysis documents, written out here
    assert rows.tolist() == sorted(np.random.default_rng(7).choice(n_rows, 60, replace=False).tolist())
    for cf in make_counterfactuals(ds, n=60, seed=7).values():
        assert cf.n_requested == 60 and set(cf.example_index.tolist()) <= set(rows.tolist())
        assert np.array_equal(cf.clean.numpy(), ds.splits["train_inferred"].input_ids[cf.example_index.numpy()])


def test_the_shared_chain_generator_still_makes_the_shipped_composition_data():
    """Independent reference: the shipped run's data was made by the composition generator
    before k-hop existed; its content hash is in the run's config.json."""
    from grokscope.runs.presets import preset
    from grokscope.runs.run import Run

    run = Run.open(Path(__file__).resolve().parents[1] / "checkpoints" / "composition-small")
    ds = get_task("composition").generate(preset("composition-small").task)
    assert ds.content_hash() == run.data_info["content_hash"]
    assert get_task("khop").describe(generate_khop(KHopConfig(hops=3, phi=2.0, **SMALL))).hops == 3
