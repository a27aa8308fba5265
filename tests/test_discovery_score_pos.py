"""``Corruption.score_pos``: each example scored at its own position, checked against plain
TransformerLens (``run_with_hooks`` with one edge patched, the metric read at that example's
position) and TransformerLens 4.3's own node attribution with the same per-example metric."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from grokscope.discovery.batched import patch_edge_sets
from grokscope.discovery.faithfulness import recovered
from grokscope.discovery.graph import ComponentGraph
from grokscope.discovery.scores import Corruption, prepare, score_edges
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model

N, POS, VOCAB = 6, 5, 20


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_range=0.3)
    model = build_model(cfg, d_vocab=VOCAB, n_ctx=POS, seed=0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (N, POS), generator=g)
    corrupt = clean.clone()
    corrupt[:, 0] = (clean[:, 0] + 1 + torch.randint(0, VOCAB - 1, (N,), generator=g)) % VOCAB
    answer, cf_answer = torch.randint(0, VOCAB, (2, N), generator=g)
    score_pos = torch.tensor([1, 4, 2, 4, 3, 1])
    c = Corruption(clean, corrupt, answer, cf_answer, score_pos=score_pos)
    return model, c, prepare(model, c)


def _own(logits, c):
    """Each example's logit difference at its own scoring position."""
    at = logits[torch.arange(len(logits)), c.score_pos]
    return at.gather(1, c.answer[:, None])[:, 0] - at.gather(1, c.cf_answer[:, None])[:, 0]


def _writer(model, cache, node):
    if node.kind == "embed":
        return cache["hook_embed"][:, node.position]
    if node.kind == "mlp_out":
        return cache[f"blocks.{node.layer}.hook_mlp_out"][:, node.position]
    return cache[f"blocks.{node.layer}.attn.hook_z"][:, node.position, node.head] @ model.blocks[node.layer].attn.W_O[node.head]


def _naive(model, c, g, w, r):
    """One edge patched with plain run_with_hooks; metric per example at its own position."""
    with torch.no_grad():
        _, cc = model.run_with_cache(c.clean)
        _, cx = model.run_with_cache(c.corrupt)
    delta = _writer(model, cx, w) - _writer(model, cc, w)
    p = r.position

    def add(t, hook):
        t = t.clone()
        t[:, p] += delta
        return t

    with torch.no_grad():
        if r.kind == "logits":
            logits = model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{g.n_layers - 1}.hook_resid_post", add)])
        elif r.kind == "mlp_in":
            logits = model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{r.layer}.ln2.hook_in", add)])
        else:
            name = f"blocks.{r.layer}.attn.hook_{r.kind[0]}"
            store = {}
            model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{r.layer}.ln1.hook_in", add),
                                                    (name, lambda t, hook: store.update(v=t.clone()))])

            def put(t, hook):
                t = t.clone()
                t[:, p, r.head] = store["v"][:, p, r.head]
                return t

            logits = model.run_with_hooks(c.clean, fwd_hooks=[(name, put)])
    return _own(logits, c)


def test_graph_has_a_logits_reader_at_each_scored_position(tiny):
    _, c, acts = tiny
    g = acts.graph
    assert g.read_positions == (1, 2, 3, 4)
    into_logits = {int(p) for p, r, _ in g.edge_index.tolist() if r == g.logits_reader}
    assert into_logits == {1, 2, 3, 4}
    assert g.n_edges == ComponentGraph(2, 4, POS).n_edges + 3 * g.n_writers
    assert ComponentGraph(2, 4, POS, (POS - 1,)) == ComponentGraph(2, 4, POS)


def test_baselines_are_read_at_each_examples_position(tiny):
    model, c, acts = tiny
    with torch.no_grad():
        m_clean, m_corrupt = _own(model(c.clean), c), _own(model(c.corrupt), c)
    assert (m_clean - m_corrupt).abs().mean() > 0.1
    assert torch.allclose(acts.clean_metric, m_clean, atol=1e-5)
    assert torch.allclose(acts.corrupt_metric, m_corrupt, atol=1e-4)
    g = acts.graph
    ends = torch.stack([torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges, dtype=torch.bool)])
    vals = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, ends, acts.metric, score_pos=c.score_pos)
    assert torch.allclose(vals[0], m_clean, atol=1e-5) and torch.allclose(vals[1], m_corrupt, atol=1e-4)
    assert recovered(model, acts, ends)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-5)


def test_exact_scores_equal_plain_transformer_lens_at_each_position(tiny):
    model, c, acts = tiny
    g = acts.graph
    sc = score_edges(model, c, "exact", acts=acts)
    pick = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:20].tolist()
    by_kind: dict = {}
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        if r.kind == "logits" or w.position in (0, 2):
            by_kind.setdefault((r.kind, w.kind, r.position), e)
    pick += list(by_kind.values())
    assert {g.edge_nodes(e)[1].position for e in pick if g.edge_nodes(e)[1].kind == "logits"} == {1, 2, 3, 4}
    nonzero = 0
    for e in pick:
        w, r = g.edge_nodes(e)
        naive = float((acts.clean_metric - _naive(model, c, g, w, r)).mean())
        assert float(sc.scores[e]) == pytest.approx(naive, abs=2e-4), (w.label, r.label)
        nonzero += abs(naive) > 1e-3
    assert nonzero >= 10


def test_eap_writer_scores_equal_transformer_lens_at_each_position(tiny):
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    model, c, acts = tiny
    ws = score_edges(model, c, "eap", acts=acts).writer_scores()
    g = acts.graph
    ref = torch.zeros(g.n_pos, g.n_writers)
    for i in range(N):
        p, a, b = int(c.score_pos[i]), c.answer[i], c.cf_answer[i]
        res = attribution_patch(model, c.clean[i : i + 1], c.corrupt[i : i + 1],
                                lambda logits, p=p, a=a, b=b: logits[0, p, a] - logits[0, p, b],
                                EdgeAttributionConfig(granularity="node"))
        for node, v in res.node_scores.items():
            w = 0 if node.kind == "embed" else (
                g.head_writer(node.layer, node.head) if node.kind == "attn_head_out" else g.mlp_writer(node.layer))
            ref[node.position, w] += v / N
    assert ref.abs().max() > 0.1
    assert torch.allclose(ws, ref, atol=1e-4)
    assert ws[4:].abs().max() > 0 and ref[0].abs().max() > 0


def test_from_counterfactuals_passes_score_pos(tiny):
    _, c, _ = tiny
    cf = SimpleNamespace(clean=c.clean, corrupt=c.corrupt, answer=c.answer, cf_answer=c.cf_answer,
                         perturbation="x", roles={}, score_pos=c.score_pos)
    assert Corruption.from_counterfactuals(cf).score_pos.tolist() == c.score_pos.tolist()
    del cf.score_pos
    assert Corruption.from_counterfactuals(cf).score_pos is None
    with pytest.raises(ValueError, match="score_pos"):
        Corruption(c.clean, c.corrupt, c.answer, c.cf_answer, score_pos=torch.tensor([POS] * N))


def test_a_saved_discovery_reads_back_on_its_own_graph(tiny):
    """The JSON of a discovery scored at several positions rebuilds its graph: the same edges."""
    from grokscope.discovery.circuit import discover
    from grokscope.discovery.series import scores_from_dict

    model, c = tiny[0], tiny[1]
    d = discover(model, c, "eap", top=10)
    doc = d.to_dict()
    scores, keep = scores_from_dict(doc)
    assert scores.graph == d.scores.graph and scores.graph.n_edges == doc["graph"]["n_edges"]
    assert len(scores.graph.read_positions) > 1
    assert torch.allclose(scores.scores, d.scores.scores.float(), atol=1e-6)
    assert torch.equal(keep, d.circuit.keep)
