"""The registered methods against independent references.

* ``eap-ig-activations``: an edge's score equals a plain-TransformerLens integrated
  gradient written here: the writer's layer output (``hook_mlp_out`` / ``attn.hook_z``)
  replaced by the corrupt -> clean interpolation with ``run_with_hooks``, a leaf tensor
  added at the reader's hook, ``torch.autograd`` for its gradient;
* ``eap-ig-exact``: measured edges carry exactly ``exact``'s numbers, the others the
  EAP-IG estimate; the stop rule holds after the last round and not before it; an
  estimate equal to the exact scores is measured in one round, its top edges only;
* the registry: ``score_edges`` and ``discover`` take the names; built-in names are refused.
"""

from __future__ import annotations

import pytest
import torch

from grokscope.discovery import discover
from grokscope.discovery.methods import RefinedScores, ig_activation_scores, refine
from grokscope.discovery.scores import (
    METHODS,
    Corruption,
    EdgeScores,
    prepare,
    register_method,
    score_edges,
)
from grokscope.errors import GrokscopeWarning
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model

N, POS, VOCAB = 6, 4, 20


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_range=0.3)
    model = build_model(cfg, d_vocab=VOCAB, n_ctx=POS, seed=0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (N, POS), generator=g)
    corrupt = clean.clone()
    corrupt[:, 1] = (clean[:, 1] + 1 + torch.randint(0, VOCAB - 1, (N,), generator=g)) % VOCAB
    answer, cf_answer = torch.randint(0, VOCAB, (2, N), generator=g)
    corruption = Corruption(clean, corrupt, answer, cf_answer)
    return model, corruption, prepare(model, corruption)


def _reference_ig(model, c, out_hook, writer_value, reader_hook, pos, steps):
    """Mean over examples of (clean - corrupt writer value) . (path-averaged d metric / d reader input)."""
    with torch.no_grad():
        _, cc = model.run_with_cache(c.clean, names_filter=[out_hook])
        _, kc = model.run_with_cache(c.corrupt, names_filter=[out_hook])
    clean_v, corrupt_v = cc[out_hook], kc[out_hook]
    grads = []
    for k in range(1, steps + 1):
        a = k / steps
        eps = torch.zeros(N, POS, model.cfg.d_model, requires_grad=True)
        hooks = [(out_hook, lambda t, hook, a=a: corrupt_v + a * (clean_v - corrupt_v)),
                 (reader_hook, lambda t, hook, eps=eps: t + eps)]
        with torch.enable_grad():
            logits = model.run_with_hooks(c.clean, fwd_hooks=hooks)[:, -1]
            m = logits.gather(1, c.answer[:, None])[:, 0] - logits.gather(1, c.cf_answer[:, None])[:, 0]
            (g,) = torch.autograd.grad(m.sum(), eps)
        grads.append(g[:, pos])
    g = torch.stack(grads).mean(0)  # [example, d_model]
    delta = writer_value(clean_v) - writer_value(corrupt_v)
    return float((delta[:, pos] * g).sum(-1).mean())


def test_ig_on_activations_equals_plain_autograd(tiny):
    model, c, acts = tiny
    g = acts.graph
    steps = 3
    sc = ig_activation_scores(model, c, ig_steps=steps, acts=acts)
    assert sc.method == "eap-ig-activations" and sc.ig_steps == steps
    W_O = model.blocks[0].attn.W_O.detach()  # [head, d_head, d_model]
    # (writer output hook, its writer's value, reader hook, writer and reader node names, position;
    # the last layer's MLP input matters only at the read position)
    cases = [
        ("blocks.0.hook_mlp_out", lambda v: v, "blocks.1.hook_resid_post", "m0", "logits", g.read_pos),
        ("blocks.0.hook_mlp_out", lambda v: v, "blocks.1.ln2.hook_in", "m0", "m1", g.read_pos),
        ("blocks.0.attn.hook_z", lambda z: z[:, :, 2] @ W_O[2], "blocks.1.hook_resid_post", "a0.h2", "logits", g.read_pos),
        ("blocks.0.attn.hook_z", lambda z: z[:, :, 1] @ W_O[1], "blocks.1.ln2.hook_in", "a0.h1", "m1", g.read_pos),
    ]
    names = [g.edge_name(e) for e in range(g.n_edges)]
    for out_hook, value, reader_hook, w, r, pos in cases:
        e = names.index(f"{w}->{r}@{pos}")
        ref = _reference_ig(model, c, out_hook, value, reader_hook, pos, steps)
        assert abs(ref) > 1e-3, (w, r)  # not a comparison between zeros
        assert float(sc.scores[e]) == pytest.approx(ref, rel=1e-3, abs=1e-5), (w, r, pos)
    # the embedding's path is eap-ig's: edges out of `input` score the same
    ig = score_edges(model, c, "eap-ig", ig_steps=steps, acts=acts)
    emb = g.edge_index[:, 2] == 0
    assert torch.allclose(sc.scores[emb], ig.scores[emb], atol=1e-5)
    assert not torch.allclose(sc.scores[~emb], ig.scores[~emb], atol=1e-3)


def test_refined_scores_are_exact_where_measured_and_the_rule_holds(tiny):
    model, c, acts = tiny
    exact = score_edges(model, c, "exact", acts=acts).scores
    est = score_edges(model, c, "eap-ig", ig_steps=5, acts=acts)
    r = refine(model, c, est, acts=acts, coverage=0.9)
    assert isinstance(r, RefinedScores) and r.method == "eap-ig-exact" and r.rounds >= 1 and r.met
    m = r.measured
    assert 8 <= int(m.sum()) < acts.graph.n_edges
    assert torch.allclose(r.scores[m], exact[m], atol=1e-5)
    assert torch.equal(r.scores[~m], est.scores[~m])
    assert torch.equal(r.exact.isnan(), ~m)
    # measured edges are the top of the estimate's ranking
    worst_measured = float(est.scores[m].abs().min())
    assert float(est.scores[~m].abs().max()) <= worst_measured
    # the stop rule: measured |exact| >= 0.9 (measured |exact| + unmeasured |estimate|)
    M, U = float(exact[m].abs().sum()), float(est.scores[~m].abs().sum())
    assert M >= 0.9 * (M + U)


def test_an_exact_estimate_is_measured_in_one_round_its_top_only(tiny):
    model, c, acts = tiny
    exact = score_edges(model, c, "exact", acts=acts)
    r = refine(model, c, exact, acts=acts, coverage=0.8, min_round=1)
    a = exact.scores.abs().double()
    order = torch.argsort(a, descending=True)
    need = int((torch.cumsum(a[order], 0) < 0.8 * a.sum()).sum()) + 1  # by hand: the fewest edges holding 80%
    assert r.rounds == 1 and int(r.measured.sum()) == need
    assert set(torch.nonzero(r.measured).flatten().tolist()) == set(order[:need].tolist())
    with pytest.raises(ValueError, match="coverage"):
        refine(model, c, exact, acts=acts, coverage=0.0)


@pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")  # 6 examples: a small gap
def test_registry_serves_score_edges_and_discover(tiny):
    model, c, acts = tiny
    assert {"eap-ig-activations", "eap-ig-exact"} <= set(METHODS)
    sc = score_edges(model, c, "eap-ig-exact", acts=acts)
    assert isinstance(sc, RefinedScores) and sc.measured.any()
    d = discover(model, c, "eap-ig-exact", measure_circuit_edges=0)
    assert d.scores.method == "eap-ig-exact"
    # the measured edges reach Discovery.exact (and its table) without being patched again
    assert torch.equal(~d.exact.isnan(), d.scores.measured)
    table = d.edges(5)
    assert table["exact"].notna().all() and (table["exact"] == table["score"]).all()
    with pytest.raises(ValueError, match="built in"):
        register_method("eap", lambda *a, **k: EdgeScores(acts.graph, torch.zeros(acts.graph.n_edges), "eap"))
    with pytest.raises(ValueError, match="eap-ig-exact"):
        score_edges(model, c, "nope", acts=acts)


def test_max_measured_caps_the_rounds(tiny):
    model, c, acts = tiny
    est = score_edges(model, c, "eap", acts=acts)
    with pytest.warns(GrokscopeWarning, match="max_measured=5"):
        r = refine(model, c, est, acts=acts, coverage=1.0, max_measured=5, min_round=3)
    assert int(r.measured.sum()) == 5 and r.rounds == 1 and not r.met  # coverage 1 asks for every edge: capped
    assert repr(r).startswith("<RefinedScores method=eap-exact") and len(repr(r)) <= 300
    order = torch.sort(est.scores.abs(), descending=True, stable=True).indices
    assert set(torch.nonzero(r.measured).flatten().tolist()) == set(order[:5].tolist())


def test_chunked_and_summed_activations_give_the_same_numbers(tiny):
    model, c, acts = tiny
    whole = ig_activation_scores(model, c, ig_steps=2, acts=acts)
    chunked = ig_activation_scores(model, c, ig_steps=2, acts=prepare(model, c, batch_size=2))
    assert torch.allclose(whole.scores, chunked.scores, atol=1e-5)
    summed = ig_activation_scores(model, c, ig_steps=2, acts=prepare(model, c, positions="sum"))
    by_hand = torch.zeros(summed.graph.n_edges).index_add_(0, acts.graph.position_map(), whole.scores)
    assert summed.graph.n_edges < acts.graph.n_edges and torch.allclose(summed.scores, by_hand, atol=1e-5)


def test_refine_on_a_summed_graph_measures_exactly_there(tiny):
    model, c, _ = tiny
    acts = prepare(model, c, positions="sum", batch_size=3)
    exact = score_edges(model, c, "exact", acts=acts).scores
    r = score_edges(model, c, "eap-ig-exact", acts=acts)
    assert r.graph.n_edges == len(exact) and r.measured.any()
    assert torch.allclose(r.scores[r.measured], exact[r.measured], atol=1e-5)
