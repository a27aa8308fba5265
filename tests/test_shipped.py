"""The shipped checkpoint series: complete, small, re-evaluable, and showing the paper's circuit."""

from __future__ import annotations

from pathlib import Path

import pytest

from grokscope.run import Run
from grokscope.sweep import summarize_metrics
from grokscope.train import eval_subsets, evaluate

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
    assert size < 15 * 2**20
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
