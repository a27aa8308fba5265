"""What edge-level discovery finds on the shipped composition run (numbers in the README).

On 100 training inferred facts and the h' counterfactual, EAP-IG finds, without being
told, the paper's staged path at the final checkpoint: lower-layer MLPs at r1 (the
first hop), heads that write at r2 while reading MLP outputs at r1 through their keys
or values (the bridge moved), and the last MLP at r2 into the logits (the second hop),
in a circuit of a small fraction of all edges that recovers >= 0.9 of the logit
difference. Across grokking the circuit shrinks, gets more faithful per edge, and its
attribution moves to r1. The thresholds hold on the untied and the tied-embedding
composition-small runs (both measured; see the README).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grokscope.runs.run import Run
from grokscope.training.sweep import summarize_metrics

REPO = Path(__file__).resolve().parents[1]
N = 100


def _run() -> Run:
    path = REPO / "checkpoints" / "composition-small"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the shipped runs are part of the repository")
    return Run.open(path)


def _discover(run: Run, step: int, split: str = "train_inferred"):
    from grokscope.discovery.circuit import discover
    from grokscope.discovery.scores import Corruption
    from grokscope.patching.tracing import make_counterfactuals

    model = run.load_model(step)
    model.eval()
    cf = make_counterfactuals(run.dataset(), split, n=N, seed=0, perturbations=["h"])["h"]
    return discover(model, Corruption.from_counterfactuals(cf), "eap-ig", step=step, measure_circuit_edges=20)


@pytest.fixture(scope="module")
def final():
    run = _run()
    return _discover(run, run.steps()[-1])


def test_final_circuit_is_the_staged_path(final):
    d = final
    g = d.graph
    assert d.circuit.recovered >= 0.9
    assert d.circuit.size <= 0.15 * g.n_edges
    roles, L = d.corruption.roles, g.n_layers
    r1, r2 = roles["r1"], roles["r2"]
    edges = [g.edge_nodes(e) for e in d.circuit_edges()]
    # first hop: MLPs below the last layer at r1 feed the circuit
    assert {w.layer for w, _ in edges if w.kind == "mlp_out" and w.position == r1 and w.layer < L - 1}
    # the bridge moves: heads read an MLP's output at r1 (key/value) and write at r2
    reads_r1 = {(r.layer, r.head) for w, r in edges
                if r.kind in ("k_input", "v_input") and r.position == r1 and w.kind == "mlp_out"}
    writes_r2 = {(w.layer, w.head) for w, _ in edges if w.kind == "attn_head_out" and w.position == r2}
    assert reads_r1 & writes_r2
    # second hop: the last MLP at r2 writes the answer; it is the strongest edge
    top_w, top_r = edges[0]
    assert (top_w.kind, top_w.layer, top_w.position, top_r.kind) == ("mlp_out", L - 1, r2, "logits")
    assert float(d.exact[d.circuit_edges()[0]]) > 5.0  # measured alone, it carries logits


def test_circuit_shrinks_and_moves_to_r1_across_grokking(final):
    run = _run()
    sat = summarize_metrics(run.metrics(), train_threshold=0.98)["train_saturated_step"]
    early_step = min(run.steps(), key=lambda s: abs(s - sat))
    early = _discover(run, early_step)
    # memorising: a large circuit; grokked: a small one that recovers as much
    assert final.circuit.size <= 0.5 * early.circuit.size
    assert final.curve.cpr >= early.curve.cpr + 0.05
    assert final.shares()["position"]["r1"] >= early.shares()["position"]["r1"] + 0.1
    assert final.shares()["position"]["h"] < early.shares()["position"]["h"]
