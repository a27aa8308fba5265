"""The shipped checkpoint series: complete, small, re-evaluable, and showing the paper's circuit."""

from __future__ import annotations

from pathlib import Path

import pytest

from grokscope.runs.run import Run
from grokscope.training.loop import eval_subsets, evaluate
from grokscope.training.sweep import summarize_metrics

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("composition-small", "comparison-small")


def _run(name: str) -> Run:
    path = REPO / "checkpoints" / name
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the shipped runs are part of the repository")
    return Run.open(path)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_run_is_complete_and_small(name):
    run = _run(name)
    steps = run.steps()
    assert 10 <= len(steps) <= 20
    assert steps[0] == 0 and steps[-1] == run.metrics()[-1]["step"]
    size = sum(f.stat().st_size for f in run.path.rglob("*") if f.is_file() and ".grokscope-cache" not in f.parts)
    assert size < 20 * 2**20
    assert not list(run.path.rglob("optimizer.safetensors"))
    run.dataset()  # the data split is there and matches its content hash


@pytest.mark.parametrize("name", SHIPPED)
def test_final_checkpoint_reproduces_recorded_accuracy(name):
    run = _run(name)
    final = run.steps()[-1]
    recorded = next(m for m in run.metrics() if m["step"] == final)["acc"]
    probes = eval_subsets(run.dataset(), run.config.train.eval_size, run.config.seed)
    got = evaluate(run.load_model(final), probes)["acc"]
    for split, acc in recorded.items():
        assert got[split] == pytest.approx(acc, abs=2e-3), split


def test_composition_grokked():
    s = summarize_metrics(_run("composition-small").metrics(), train_threshold=0.98)
    # Train accuracy saturates first while test ID is low, and test ID rises well after.
    assert s["train_saturated_step"] is not None and s["iid_at_saturation"] <= 0.6
    assert s["final_test_inferred_iid"] >= 0.85
    assert s["max_ood"] <= 0.15  # composition does not generalise OOD (paper)


def test_shipped_composition_is_its_preset():
    """`grokscope train --preset composition-small` is the shipped run's recipe."""
    from grokscope.runs.presets import preset

    cfg = _run("composition-small").config
    assert cfg.to_dict() == preset("composition-small").to_dict()


def test_composition_r2_at_r2_rises_during_grokking():
    """The paper's lens claim on r2 (values in the README): tied, so r2 is decodable; its
    MRR at S[3, r2] rises from train saturation to the end, over the whole vocabulary and
    among relations, yet stays far from the top of the vocabulary at 4 layers."""
    from grokscope.lens.checkpoint import checkpoint_lens

    run = _run("composition-small")
    assert run.config.model.tie_embeddings
    s = summarize_metrics(run.metrics())
    sat = max(x for x in run.steps() if x <= s["train_saturated_step"])  # the checkpoint at saturation
    final = run.steps()[-1]

    def mrr(step):
        d = checkpoint_lens(run, step, n=300, cache=False)
        assert d["undecodable"] == {}
        return {k: d["targets"][k]["mrr"][3] for k in ("r2@r2", "r2@r2/rel")}

    at_sat, at_end = mrr(sat), mrr(final)
    assert at_end["r2@r2"] > 3 * at_sat["r2@r2"] and at_end["r2@r2"] < 0.5
    assert at_end["r2@r2/rel"] > at_sat["r2@r2/rel"] + 0.1 and at_end["r2@r2/rel"] > 0.85


@pytest.mark.slow
def test_composition_circuit_forms_across_grokking():
    """The paper's picture on the shipped run, found automatically (values in the README)."""
    import numpy as np

    from grokscope.series.engine import analyse_series

    s = analyse_series(_run("composition-small"), n=300, progress=False)
    final = s.to_dict()["checkpoints"][-1]
    bridge_layer = final["circuit"]["layers"]["bridge@r1"]
    assert bridge_layer is not None and bridge_layer <= 2  # resolved low, as the paper
    assert float(np.asarray(s.lens_mrr("bridge@r1"))[-1, bridge_layer]) >= 0.8
    h = np.asarray(s.strength("h"))  # [step, layer, pos]; positions h=0, r1=1, r2=2
    upper = h.shape[1] - 2  # the highest residual state below the output
    # S[upper, r1] carries h's effect (the bridge) only after grokking ...
    assert h[1, upper, 1] < 0.1 and h[-1, upper, 1] > 0.8
    # ... while the h position's upper states lose the direct effect they had.
    assert h[:, 2, 0].max() > 0.3 and h[-1, 2, 0] < 0.05


def test_comparison_grokked():
    """Comparison memorises first and generalises in-distribution later (init_range 1.0)."""
    s = summarize_metrics(_run("comparison-small").metrics())
    assert s["groks"]
    assert s["train_saturated_step"] is not None and s["iid_at_saturation"] <= 0.6
    assert s["iid_generalized_step"] - s["train_saturated_step"] >= 2000  # a real delay, in steps


def test_shipped_comparison_is_its_preset():
    """`grokscope train --preset comparison-small` is the shipped run's recipe (tied, 1,500 s)."""
    from grokscope.runs.presets import preset

    cfg = _run("comparison-small").config
    assert cfg.model.tie_embeddings
    assert cfg.to_dict() == preset("comparison-small").to_dict()


def test_comparison_generalizes_ood_and_errs_on_close_values():
    """Comparison generalizes OOD (the paper); the OOD errors are pairs of close values.

    Tied run, final step (values in docs/REPRODUCTION.md): right on every OOD pair 3 or 4
    apart, 0.78 at distance 2, 0.80 at 1, 0.41 at 0. "Far" is distance >= 3: the untied
    run shipped before was right on 0.94 at distance 2, this one at the final checkpoint
    is not (0.97 at the unshipped step-15,000 checkpoint; 100 OOD pairs swing between
    evaluations)."""
    import numpy as np

    from grokscope.progress.diagnoses import value_gap_diagnosis

    run = _run("comparison-small")
    s = summarize_metrics(run.metrics())
    assert s["final_test_inferred_ood"] >= 0.7 and s["final_test_inferred_iid"] >= 0.95
    ood_start = run.metrics()[1]["acc"]["test_inferred_ood"]  # first evaluation after step 0
    assert ood_start < 0.5 and s["final_test_inferred_ood"] - ood_start > 0.3  # OOD rose during training
    d = value_gap_diagnosis(run.load_model(), run.dataset(), n=300)["splits"]["test_inferred_ood"]
    acc, n = np.array(d["acc_by_gap"], dtype=float), np.array(d["n_by_gap"])
    far = float((acc[3:] * n[3:]).sum() / n[3:].sum())
    close = float((acc[:2] * n[:2]).sum() / n[:2].sum())
    assert far >= 0.95 and close <= 0.85  # values retrieved, compared imprecisely
    assert acc[0] < acc[2] < far  # accuracy rises with the distance of the values
    assert d["accuracy"] == pytest.approx(float((acc * n).sum() / n.sum()))


def test_comparison_parallel_circuit_forms_during_grokking():
    """At saturation (memorising) e1's effect leaves its position early and the attribute
    is not yet read at the entity positions; after grokking both hold (values in the README).

    Tied run: at the end S[1, attr] still holds 0.23 of the attribute's effect (the untied
    run shipped before 0.06), less than either entity position reads (0.44, 0.42)."""
    import numpy as np

    from grokscope.patching.checkpoint import checkpoint_trace

    run = _run("comparison-small")
    s = summarize_metrics(run.metrics())
    early, final = s["train_saturated_step"], run.steps()[-1]
    assert early in run.steps()

    def strength(step):  # perturbation -> [layer, pos]; positions attr q e1 mask e2
        d = checkpoint_trace(run, step, perturbations=["e1", "attr"], cache=False)
        return dict(zip(d["perturbations"], np.asarray(d["strength"])))

    at_early, at_final = strength(early), strength(final)
    e1_early, e1_final = at_early["e1"], at_final["e1"]
    assert e1_early[1, 2] < 0.5 and e1_final[1, 2] > 0.85  # S[1, e1] holds e1 only after grokking
    a_early, a_final = at_early["attr"], at_final["attr"]
    assert a_early[1, 0] > 0.4 and a_final[1, 0] < 0.3  # attr's effect leaves its own position ...
    assert a_final[1, 0] < min(a_final[1, 2], a_final[1, 4]) and a_final[2, 0] < 0.1
    assert a_final[1, 2] > 0.35 and a_final[1, 4] > 0.35  # ... to be read at both entities
