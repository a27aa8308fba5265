"""EAP-IG / MIB graph JSON: export, import, round trips, a hand-written file, and an
imported circuit measured by grokscope's patching.

References are independent of :mod:`grokscope.discovery.mib`: edge counts of EAP-IG's
graph written out by hand, a JSON typed here the way ``eap.graph.Graph.to_json`` writes
one, per-position scores summed with a plain loop, and the recovered fraction's two ends
(every edge kept: 1; none: 0).
"""

from __future__ import annotations

import json

import pytest
import torch

from grokscope.discovery.faithfulness import recovered
from grokscope.discovery.graph import ComponentGraph
from grokscope.discovery.mib import (
    MibFormatError,
    from_mib,
    measure_mib,
    mib_edge_names,
    mib_node_names,
    mib_path,
    read_mib,
    to_mib,
    write_mib,
)
from grokscope.discovery.scores import Corruption, EdgeScores, prepare, score_edges
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model


def _eap_ig_edge_count(L: int, H: int) -> int:
    # layer l: every earlier writer into each head's q, k, v; those plus the layer's heads into its MLP
    total = 0
    for layer in range(L):
        before = 1 + layer * (H + 1)
        total += before * 3 * H + before + H
    return total + 1 + L * (H + 1)  # every writer into the logits


@pytest.mark.parametrize("L,H", [(1, 1), (2, 2), (4, 4), (12, 12)])
def test_edge_and_node_names_are_eap_igs(L, H):
    names = mib_edge_names(L, H)
    assert len(names) == len(set(names)) == _eap_ig_edge_count(L, H)
    assert len(mib_node_names(L, H)) == 2 + L * (H + 1)
    g = ComponentGraph(L, H, n_pos=2)
    pairs = set()
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        pairs.add(f"{w.name}->{r.name}")
    assert pairs == set(names)  # grokscope's graph, positions dropped, is EAP-IG's
    if (L, H) == (12, 12):
        assert len(names) == 32491  # GPT-2 small in EAP-IG / MIB


def test_export_sums_positions_and_round_trips(tmp_path):
    g = ComponentGraph(2, 2, n_pos=3)
    gen = torch.Generator().manual_seed(0)
    scores = EdgeScores(g, torch.randn(g.n_edges, generator=gen), "eap-ig")
    keep = torch.rand(g.n_edges, generator=gen) < 0.1
    mib = to_mib(scores, keep, d_model=16)
    # by hand: sum the per-position scores of each writer -> reader pair; in graph at any position
    by_pair: dict = {}
    held: dict = {}
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        k = f"{w.name}->{r.name}"
        by_pair[k] = by_pair.get(k, 0.0) + float(scores.scores[e])
        held[k] = held.get(k, False) or bool(keep[e])
    assert list(mib.scores) == mib_edge_names(2, 2)
    for k, v in by_pair.items():
        assert mib.scores[k] == pytest.approx(v, abs=1e-5)
        assert mib.in_graph[k] == held[k]
    assert mib.cfg == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 16}
    assert mib.nodes["logits"] and mib.nodes["input"] == any(held[k] for k in held if k.startswith("input->"))
    # file round trip
    path = write_mib(scores, mib_path(tmp_path, "eap-ig", "my_task", "tiny"), keep, d_model=16)
    assert path.relative_to(tmp_path).as_posix() == "eap-ig_patching_edge/my-task_tiny/importances.json"
    back = read_mib(path)
    assert back.scores == pytest.approx(mib.scores) and back.in_graph == mib.in_graph and back.nodes == mib.nodes
    # import onto the graph: an in-graph pair is kept at every position it exists at
    kept = back.keep(g)
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        assert bool(kept[e]) == held[f"{w.name}->{r.name}"]
    assert bool((kept | ~keep).all())  # the export loses no kept edge
    again = to_mib(back.edge_scores(g), kept)
    assert again.in_graph == mib.in_graph
    assert repr(back).startswith("MibGraph(n_layers=2") and len(repr(back)) <= 300


HAND_WRITTEN = """
{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 8},
 "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": true}, "m0": {"in_graph": false},
           "logits": {"in_graph": true}},
 "edges": {"input->a0.h0<q>": {"score": 0.5, "in_graph": false},
           "input->a0.h0<k>": {"score": -0.25, "in_graph": false},
           "input->a0.h0<v>": {"score": 2.0, "in_graph": true},
           "input->m0": {"score": 0.0, "in_graph": false},
           "a0.h0->m0": {"score": 0.125, "in_graph": false},
           "input->logits": {"score": 1.0, "in_graph": false},
           "a0.h0->logits": {"score": -3.0, "in_graph": true},
           "m0->logits": {"score": 0.0, "in_graph": false}}}
"""


def test_hand_written_mib_json_imports():
    mib = from_mib(json.loads(HAND_WRITTEN))
    g = ComponentGraph(1, 1, n_pos=3)
    keep = mib.keep(g)
    kept = sorted(g.edge_name(e) for e in torch.nonzero(keep).flatten().tolist())
    # the value input at every position; the logits read only at the last one
    assert kept == ["a0.h0->logits@2", "input->a0.h0<v>@0", "input->a0.h0<v>@1", "input->a0.h0<v>@2"]
    sc = mib.edge_scores(g)
    names = [g.edge_name(e) for e in range(g.n_edges)]
    assert float(sc.scores[names.index("input->a0.h0<k>@1")]) == -0.25
    assert float(sc.scores[names.index("a0.h0->logits@2")]) == -3.0
    assert mib.nodes == {"input": True, "a0.h0": True, "m0": False, "logits": True}
    # on a one-position graph it exports back to the same document (on more positions an
    # imported score stands at every position, so a re-export sums it n_pos times)
    g1 = ComponentGraph(1, 1, n_pos=1)
    assert to_mib(mib.edge_scores(g1), mib.keep(g1), d_model=8).to_dict() == json.loads(HAND_WRITTEN)


def test_bad_documents_are_refused_with_a_reason(tmp_path):
    with pytest.raises(MibFormatError, match="missing key"):
        from_mib({"cfg": {}, "edges": {}})
    doc = json.loads(HAND_WRITTEN)
    doc["edges"]["m0->a0.h0<q>"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(MibFormatError, match="m0->a0.h0<q>"):
        from_mib(doc)
    with pytest.raises(MibFormatError, match="n_layers=1"):
        from_mib(json.loads(HAND_WRITTEN)).keep(ComponentGraph(2, 1, n_pos=2))
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(MibFormatError, match="not JSON"):
        read_mib(bad)
    assert issubclass(MibFormatError, ValueError)


def test_a_circuit_found_elsewhere_is_measured_here():
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_range=0.3), d_vocab=20, n_ctx=4, seed=0)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 20, (8, 4), generator=gen)
    corrupt = clean.clone()
    corrupt[:, 1] = (clean[:, 1] + 1 + torch.randint(0, 19, (8,), generator=gen)) % 20
    c = Corruption(clean, corrupt, *torch.randint(0, 20, (2, 8), generator=gen))
    acts = prepare(model, c)
    g = acts.graph
    names = mib_edge_names(2, 4)
    everything = {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32},
                  "nodes": {n: {"in_graph": True} for n in mib_node_names(2, 4)},
                  "edges": {n: {"score": 1.0, "in_graph": True} for n in names}}
    nothing = json.loads(json.dumps(everything))
    for v in nothing["edges"].values():
        v["in_graph"] = False
    keeps = torch.stack([from_mib(everything).keep(g), from_mib(nothing).keep(g)])
    assert bool(keeps[0].all()) and not bool(keeps[1].any())
    rec, _ = recovered(model, acts, keeps)
    assert rec.tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    full = measure_mib(model, c, from_mib(everything), acts=acts)
    assert full.recovered == pytest.approx(1.0, abs=1e-5) and full.size == g.n_edges
    # a circuit exported from here and read back recovers what the circuit itself recovers
    sc = score_edges(model, c, "eap", acts=acts)
    top = torch.zeros(g.n_edges, dtype=torch.bool)
    top[sc.order()[:40]] = True
    back = from_mib(json.loads(json.dumps(to_mib(sc, top).to_dict()))).keep(g)
    assert bool((back | ~top).all())  # every exported edge comes back (at every position)
    r_back, r_top = recovered(model, acts, torch.stack([back, top]))[0].tolist()
    assert 0.0 <= min(r_back, r_top) and r_back != pytest.approx(0.0)


def test_a_summed_graph_exports_the_same_document():
    g = ComponentGraph(2, 2, n_pos=3)
    gen = torch.Generator().manual_seed(2)
    per_pos = EdgeScores(g, torch.randn(g.n_edges, generator=gen), "eap-ig")
    s = g.summed_graph()
    summed = EdgeScores(s, torch.zeros(s.n_edges).index_add_(0, g.position_map(), per_pos.scores), "eap-ig")
    keep = torch.zeros(s.n_edges, dtype=torch.bool)
    keep[:5] = True
    a = to_mib(summed, keep).to_dict()
    b = to_mib(per_pos, keep[g.position_map()]).to_dict()
    assert a["nodes"] == b["nodes"]
    for k, v in a["edges"].items():
        assert v["in_graph"] == b["edges"][k]["in_graph"] and v["score"] == pytest.approx(b["edges"][k]["score"], abs=1e-5)
    assert torch.equal(from_mib(a).keep(s), keep)
