"""Discovery on four architectures, each a small random-init model built offline from an HF
config and booted through TransformerBridge, checked against plain HF + torch autograd
(tests/hf_reference.py: hooks on the HF modules, no TransformerLens):

* GPT-2 (LayerNorm, learned positions, fused ``Conv1D`` q/k/v), GPT-NeoX / Pythia (parallel
  attention + MLP, partial rotary, per-head interleaved q/k/v), Llama and Qwen2 (RMSNorm,
  rotary, grouped-query attention with 2 KV heads for 4 query heads: key/value readers per
  KV head; Qwen2 with q/k/v biases);
* EAP scores equal gradient-times-difference by autograd on the HF model (atol 1e-4 of the
  largest score); exact scores equal one-edge patching on the HF model; the circuit's
  recovered fraction equals one HF forward with every other edge patched;
* an attention-only model (TransformerLens's native one: HF has none) against autograd and
  patching through plain ``run_with_hooks``;
* a shape that cannot be described raises one error that names it (Gemma 2's post-attention
  norms: the writers no longer add up to the residual stream).
"""

from __future__ import annotations

import pytest
import torch
from hf_reference import Spec, eap_scores, patched_metric, writers
from hf_tiny import ARCHS, attn_only, bridge, save

from grokscope.discovery.circuit import discover
from grokscope.discovery.graph import ComponentGraph
from grokscope.discovery.scores import Corruption, prepare, score_edges
from grokscope.discovery.shapes import UnsupportedModelError

N, POS = 5, 6
pytestmark = pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")


def _data(seed: int = 0, vocab: int = 61):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (N, POS), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = 1 + (clean[:, 2] + torch.randint(0, vocab - 2, (N,), generator=g)) % (vocab - 1)
    answer, cf_answer = torch.randint(1, vocab, (2, N), generator=g)
    return Corruption(clean, corrupt, answer, cf_answer)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save(request.param, tmp_path_factory.mktemp(request.param))
    model = bridge(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    c = _data()
    acts = prepare(model, c)

    def metric(logits):
        return logits.gather(1, c.answer[:, None])[:, 0] - logits.gather(1, c.cf_answer[:, None])[:, 0]

    return request.param, model, Spec(hf, request.param), c, acts, metric


def test_graph_describes_the_architecture(arch):
    name, model, spec, c, acts, _ = arch
    g = acts.graph
    assert g.n_kv == spec.K and g.parallel == (name == "neox") and g.mlp
    assert g.n_readers == 2 * (spec.H + 2 * spec.K + 1) + 1
    assert (acts.clean_metric - acts.corrupt_metric).abs().mean() > 0.1  # the comparisons are not between zeros


def test_eap_equals_gradient_times_difference_by_autograd_on_the_hf_model(arch):
    name, model, spec, c, acts, metric = arch
    ours = score_edges(model, c, "eap", acts=acts).scores
    ref = eap_scores(spec, acts.graph, c.clean, c.corrupt, metric)
    biggest = float(ref.abs().max())
    assert biggest > 1e-2
    assert float((ours - ref).abs().max()) <= 1e-4 * biggest, name


def test_writers_and_baselines_equal_the_hf_model(arch):
    name, model, spec, c, acts, metric = arch
    cw, logits = writers(spec, acts.graph, c.clean)
    assert torch.allclose(acts.clean_writers, cw, atol=1e-5)
    assert torch.allclose(acts.clean_metric, metric(logits[:, -1]), atol=1e-5)


def test_exact_scores_equal_one_edge_patched_on_the_hf_model(arch):
    name, model, spec, c, acts, metric = arch
    g = acts.graph
    by_kind: dict = {}
    for e, (p, r, w) in enumerate(g.edge_index.tolist()):
        if p == 2 or r == g.logits_reader:
            by_kind.setdefault((g.reader_node(p, r).kind, g.writer_node(p, w).kind), e)
    pick = sorted(by_kind.values()) + torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:8].tolist()
    exact = score_edges(model, c, "exact", acts=acts).scores
    xw, _ = writers(spec, g, c.corrupt)
    refs = torch.tensor([float((acts.clean_metric - patched_metric(spec, g, c.clean, xw, [tuple(g.edge_index[e].tolist())], metric)).mean())
                         for e in pick])
    assert refs.abs().max() > 1e-2
    assert torch.allclose(exact[pick], refs, atol=1e-4 * float(refs.abs().max()) + 1e-6), name


def test_circuit_recovered_equals_one_forward_with_every_other_edge_patched(arch):
    name, model, spec, c, acts, metric = arch
    d = discover(model, c, method="eap-ig", top=25, measure_circuit_edges=0)
    g = d.graph
    out = [tuple(t) for t in g.edge_index[~d.circuit.keep].tolist()]
    xw, x_logits = writers(spec, g, c.corrupt)
    _, c_logits = writers(spec, g, c.clean)
    lo, hi = float(metric(x_logits[:, -1]).mean()), float(metric(c_logits[:, -1]).mean())
    m = float(patched_metric(spec, g, c.clean, xw, out, metric).mean())
    assert 0 < d.circuit.size < g.n_edges
    assert d.circuit.recovered == pytest.approx((m - lo) / (hi - lo), abs=1e-4), name


# --------------------------------------------------------------------------- attention-only


@pytest.fixture(scope="module")
def attn():
    model = attn_only()
    c = _data(1)
    return model, c, prepare(model, c)


def test_attention_only_eap_equals_autograd_through_plain_hooks(attn):
    """TransformerLens's attribution_patch needs MLP hooks; the reference here is autograd through
    two plain run_with_hooks passes per reader: the attention input shifted by eps, then only that
    head's query/key/value copied into the corrupt run."""
    model, c, acts = attn
    g = acts.graph
    assert not g.mlp and g.n_writers == 1 + 2 * 4 and g.n_readers == 2 * 12 + 1
    assert {g.reader_node(0, r).kind for r in range(g.n_readers)} == {"q_input", "k_input", "v_input", "logits"}
    ours = score_edges(model, c, "eap", acts=acts).scores

    def metric(logits):
        last = logits[:, -1]
        return last.gather(1, c.answer[:, None])[:, 0] - last.gather(1, c.cf_answer[:, None])[:, 0]

    grads = torch.zeros(N, POS, g.n_readers, model.cfg.d_model)
    for r in range(g.n_readers):
        node = g.reader_node(0, r)
        eps = torch.zeros(N, POS, model.cfg.d_model, requires_grad=True)
        if node.kind == "logits":
            out = model.run_with_hooks(c.corrupt, fwd_hooks=[(f"blocks.{g.n_layers - 1}.hook_resid_post", lambda t, hook, eps=eps: t + eps)])
        else:
            name, store = f"blocks.{node.layer}.attn.hook_{node.kind[0]}", {}
            model.run_with_hooks(c.corrupt, fwd_hooks=[(f"blocks.{node.layer}.ln1.hook_in", lambda t, hook, eps=eps: t + eps),
                                                      (name, lambda t, hook, store=store: store.update(x=t))])

            def put(t, hook, h=node.head, store=store):
                t = t.clone()
                t[:, :, h] = store["x"][:, :, h]
                return t

            out = model.run_with_hooks(c.corrupt, fwd_hooks=[(name, put)])
        grads[:, :, r] = torch.autograd.grad(metric(out).sum(), eps)[0]
    delta = acts.clean_writers - acts.corrupt_writers
    p, r, w = g.edge_index.unbind(1)
    ref = (delta[:, p, w] * grads[:, p, r]).sum(-1).mean(0)
    assert ref.abs().max() > 1e-2 and float((ours - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_attention_only_exact_equals_run_with_hooks(attn):
    model, c, acts = attn
    g = acts.graph
    exact = score_edges(model, c, "exact", acts=acts).scores
    with torch.no_grad():
        _, cc = model.run_with_cache(c.clean)
        _, cx = model.run_with_cache(c.corrupt)
    checked = 0
    for e, (p, r, w) in enumerate(g.edge_index.tolist()):
        wn, rn = g.writer_node(p, w), g.reader_node(p, r)
        if p != 2 or rn.kind not in ("v_input", "logits"):
            continue
        if wn.kind == "embed":
            delta = cx["hook_embed"][:, p] - cc["hook_embed"][:, p]
        else:
            W = model.blocks[wn.layer].attn.W_O[wn.head]
            delta = (cx[f"blocks.{wn.layer}.attn.hook_z"][:, p, wn.head] - cc[f"blocks.{wn.layer}.attn.hook_z"][:, p, wn.head]) @ W

        def add(t, hook, delta=delta, p=p):
            t = t.clone()
            t[:, p] += delta
            return t

        with torch.no_grad():
            if rn.kind == "logits":
                logits = model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{g.n_layers - 1}.hook_resid_post", add)])
            else:
                store = {}
                name = f"blocks.{rn.layer}.attn.hook_v"
                model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{rn.layer}.ln1.hook_in", add),
                                                        (name, lambda t, hook, store=store: store.update(v=t.clone()))])

                def put(t, hook, p=p, h=rn.head, store=store):
                    t = t.clone()
                    t[:, p, h] = store["v"][:, p, h]
                    return t

                logits = model.run_with_hooks(c.clean, fwd_hooks=[(name, put)])
        last = logits[:, -1]
        m = last.gather(1, c.answer[:, None])[:, 0] - last.gather(1, c.cf_answer[:, None])[:, 0]
        assert float(exact[e]) == pytest.approx(float((acts.clean_metric - m).mean()), abs=2e-5), (wn.label, rn.label)
        checked += 1
    assert checked >= 10 and exact.abs().max() > 1e-2


def test_an_unsupported_shape_raises_one_error_naming_it(attn, tmp_path):
    gemma = bridge(save("gemma2", tmp_path))
    with pytest.raises(UnsupportedModelError, match="do not add up to the residual stream.*Gemma 2/3"):
        discover(gemma, _data(2), method="eap", top=5)
    model, c, _ = attn

    class NoSplit:
        cfg = model.cfg
        blocks = [type("B", (), {"attn": object(), "mlp": None})() for _ in range(model.cfg.n_layers)]

    with pytest.raises(UnsupportedModelError, match="no separate q/k/v projections"):
        ComponentGraph.of(NoSplit(), 4)
    with pytest.raises(UnsupportedModelError, match="no TransformerLens blocks"):
        ComponentGraph.of(type("M", (), {"cfg": model.cfg})(), 4)


def test_attention_only_circuits_measured_densely_equal_the_pair_engine(attn):
    from grokscope.discovery import batched, edge_sets

    model, c, acts = attn
    g = acts.graph
    keep = torch.rand(3, g.n_edges, generator=torch.Generator().manual_seed(0)) < torch.tensor([0.05, 0.5, 0.95])[:, None]
    dense = edge_sets.patch_edge_sets(model, g, c.clean, acts.corrupt_writers, keep, acts.metric)
    pairs = batched.patch_edge_sets(model, g, c.clean, acts.corrupt_writers, keep, acts.metric)
    assert torch.allclose(dense, pairs, atol=1e-5) and float((dense[0] - dense[2]).abs().max()) > 1e-2
