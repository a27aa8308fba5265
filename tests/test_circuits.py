"""Tests for grokscope.patching.hypothesis: circuits assembled from hand-made lens and
tracing results (known answers), and the end-to-end finder on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grokscope.lens.logit import LensResult, lens_split, resid_hook_names
from grokscope.patching.hypothesis import build_circuit, find_circuit, first_layer
from grokscope.patching.tracing import Counterfactuals, TraceResult, make_counterfactuals, trace
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model
from grokscope.tasks import composition

L = 4  # layers; states S[0..4]


def _ranks_for(mrr_per_layer: list[float]) -> torch.Tensor:
    """[layer, 2] ranks whose MRR is (approximately) the given value: rank 1 or huge."""
    out = []
    for m in mrr_per_layer:
        # two examples: ranks (1, 1) -> 1.0, (1, 10**6) -> ~0.5, (10**6, 10**6) -> ~0
        out.append([1, 1] if m > 0.75 else [1, 10**6] if m > 0.25 else [10**6, 10**6])
    return torch.tensor(out)


def _lens(targets: dict[str, list[float]]) -> LensResult:
    return LensResult({k: _ranks_for(v) for k, v in targets.items()}, {}, {}, resid_hook_names(L))


def _tracing(perts: list[str], roles: dict[str, int], strength: torch.Tensor) -> TraceResult:
    n_pos = strength.shape[-1]
    cfs = {
        p: Counterfactuals(p, roles[p], torch.zeros(0, n_pos, dtype=torch.long), torch.zeros(0, n_pos, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long), roles)
        for p in perts
    }
    by_pos = {v: k for k, v in roles.items()}
    return TraceResult(
        site="resid", perturbations=perts, layers=list(range(L + 1)), hook_names=resid_hook_names(L),
        positions=list(range(n_pos)), position_roles=[by_pos[i] for i in range(n_pos)],
        strength=strength, logit_diff=strength, counterfactuals=cfs,
        clean_top1={}, cf_top1={}, changed={}, ld_patched={}, ld_clean={}, ld_cf={},
    )


def test_first_layer():
    assert first_layer(torch.tensor([0.1, 0.6, 0.2, 0.9]), 0.5) == 1
    assert first_layer(torch.tensor([0.1, 0.6, 0.2, 0.9]), 0.5, start=2) == 3
    assert first_layer(torch.tensor([0.1, 0.2]), 0.5) is None


def test_composition_circuit_from_known_lens_and_tracing():
    roles = {"h": 0, "r1": 1, "r2": 2}
    strength = torch.zeros(3, L + 1, 3)
    strength[0, 2, 1] = 0.9  # S[2, r1] under h'
    strength[1, 2, 1] = 0.8  # S[2, r1] under r1'
    strength[2, 2, 2] = 0.7  # S[2, r2] under r2'
    strength[0, 0, 0] = strength[1, 0, 1] = strength[2, 0, 2] = 1.0
    lens = _lens({
        "bridge@r1": [0, 0, 1, 1, 1],  # resolved at layer 2
        "r2@r2": [0, 0, 0.5, 1, 1],
        "t@last": [0, 0, 0, 0.5, 1],  # answer appears at layer 3
    })
    c = build_circuit("composition", lens, _tracing(["h", "r1", "r2"], roles, strength), threshold=0.4, step=7)
    assert c.layers == {"bridge@r1": 2, "t@last": 3, "r2@r2": 2}
    bridge = c.node("S[2,r1]")
    assert bridge.hook_name == "blocks.2.hook_resid_pre" and bridge.content == "bridge" and bridge.position == 1
    assert bridge.strengths == pytest.approx({"h": 0.9, "r1": 0.8, "r2": 0.0})
    assert c.node("S[4,r2]").hook_name == "blocks.3.hook_resid_post"
    edges = {(e.src, e.dst): (e.weight, e.perturbation) for e in c.edges}
    assert edges[("S[0,h]", "S[2,r1]")] == pytest.approx((0.9, "h"))
    assert edges[("S[0,r1]", "S[2,r1]")] == pytest.approx((0.8, "r1"))
    assert edges[("S[2,r1]", "S[4,r2]")] == pytest.approx((0.9, "h"))
    assert edges[("S[2,r2]", "S[4,r2]")] == pytest.approx((0.7, "r2"))
    assert len(c.edges) == 5
    d = json.loads(json.dumps(c.to_dict()))
    assert d["step"] == 7 and d["layers"]["bridge@r1"] == 2


def test_unresolved_bridge_links_inputs_to_the_output():
    roles = {"h": 0, "r1": 1, "r2": 2}
    strength = torch.zeros(3, L + 1, 3)
    strength[0, 0, 0] = 0.6
    lens = _lens({"bridge@r1": [0] * 5, "r2@r2": [0] * 5, "t@last": [0, 0, 0, 0, 1]})
    c = build_circuit("composition", lens, _tracing(["h", "r1", "r2"], roles, strength))
    assert c.layers["bridge@r1"] is None and c.notes
    assert {(e.src, e.dst) for e in c.edges} == {("S[0,h]", "S[4,r2]"), ("S[0,r1]", "S[4,r2]"), ("S[0,r2]", "S[4,r2]")}
    assert next(e.weight for e in c.edges if e.src == "S[0,h]") == pytest.approx(0.6)


def test_comparison_parallel_circuit():
    roles = {"attr": 0, "q": 1, "e1": 2, "mask": 3, "e2": 4}
    strength = torch.zeros(3, L + 1, 5)
    strength[0, 2, 2] = 0.95  # S[2, e1] under e1'
    strength[1, 2, 4] = 0.85  # S[2, e2] under e2'
    lens = _lens({
        "v1@e1": [0, 0, 1, 1, 1], "v2@e2": [0, 0.5, 1, 1, 1],
        "label0@attr": [0, 0, 0, 1, 1], "label1@attr": [0, 0, 0, 1, 1], "label2@attr": [0, 0, 0, 1, 1],
        "label@last": [0, 0, 0, 0.5, 1],
    })
    c = build_circuit("comparison", lens, _tracing(["e1", "e2", "attr"], roles, strength), threshold=0.75)
    assert c.layers == {"v1@e1": 2, "v2@e2": 2, "labels@attr": 3, "label@last": 4,
                        "e1 held@e1": None, "e2 held@e2": None}
    assert c.parallel is True
    edges = {(e.src, e.dst): e.weight for e in c.edges}
    assert edges[("S[2,e1]", "S[4,e2]")] == pytest.approx(0.95)
    assert edges[("S[2,e2]", "S[4,e2]")] == pytest.approx(0.85)
    assert ("S[3,attr]", "S[4,e2]") in edges
    with pytest.raises(ValueError, match="lacks"):
        build_circuit("composition", lens, _tracing(["e1", "e2", "attr"], roles, strength))


def test_comparison_values_held_in_place_found_by_tracing():
    """Values the lens cannot decode: tracing shows each entity's effect staying at its
    own position (S[0..2, e1], S[0..3, e2]) before the output reads it: still parallel."""
    roles = {"attr": 0, "q": 1, "e1": 2, "mask": 3, "e2": 4}
    strength = torch.zeros(3, L + 1, 5)
    strength[0, 0:3, 2] = torch.tensor([1.0, 0.98, 0.9])  # e1' at S[0..2, e1], then gone
    strength[0, 3:, 4] = 0.9  # ... and at the last position from layer 3 on
    strength[1, :, 4] = 1.0  # e2' at every S[l, e2]
    strength[2, 0, 0] = 1.0
    lens = _lens({
        "v1@e1": [0] * 5, "v2@e2": [0] * 5,
        "label0@attr": [0] * 5, "label1@attr": [0] * 5, "label2@attr": [0] * 5,
        "label@last": [0, 0, 0, 0.5, 1],
    })
    c = build_circuit("comparison", lens, _tracing(["e1", "e2", "attr"], roles, strength), threshold=0.75)
    assert c.layers["v1@e1"] is None and c.layers["v2@e2"] is None
    assert c.layers["e1 held@e1"] == 2 and c.layers["e2 held@e2"] == 3
    assert c.parallel is True
    edges = {(e.src, e.dst): e.weight for e in c.edges}
    assert edges[("S[0,e1]", "S[2,e1]")] == pytest.approx(0.9)
    assert ("S[3,e2]", "S[4,e2]") in edges
    # Without the tracing evidence there is no parallel claim.
    strength[0, 1:3, 2] = 0.0
    strength[1, 1:, 4] = 0.0
    c = build_circuit("comparison", lens, _tracing(["e1", "e2", "attr"], roles, strength), threshold=0.75)
    assert c.parallel is None and ("S[0,e1]", "S[4,e2]") in {(e.src, e.dst) for e in c.edges}


def test_find_circuit_end_to_end_matches_its_parts():
    ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0, seed=0)
    m = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64), len(ds.vocab), ds.n_ctx, seed=0).eval()
    c = find_circuit(m, ds, n=15, seed=3, threshold=0.3)
    lens = lens_split(m, ds.splits["train_inferred"], ds.vocab, n=15, seed=3)
    res = trace(m, make_counterfactuals(ds, n=15, seed=3), site="resid")
    assert c.mrr["bridge@r1"] == lens.mrr("bridge@r1").tolist()
    assert c.strength["h"] == res.strength[0].tolist()
    # the lens and the counterfactuals used the same examples of the split
    split = ds.splits["train_inferred"]
    rows = np.sort(np.random.default_rng(3).choice(len(split), 15, replace=False))
    assert lens.token_ids["bridge@r1"].tolist() == split.meta["bridge"][rows].tolist()
    for cf in make_counterfactuals(ds, n=15, seed=3).values():
        assert set(cf.example_index.tolist()) <= set(rows.tolist())
    json.dumps(c.to_dict())
