"""eap-ig-activations and eap-ig-exact on HF-booted GPT-2, GPT-NeoX (parallel blocks), Llama and
Qwen2 (RMSNorm, grouped-query attention), random-init (tests/hf_tiny.py).

References: for edges into the logits, an integrated gradient written with plain
``run_with_hooks`` and ``torch.autograd`` (the writer's layer output -- ``hook_mlp_out``, or
``attn.hook_z`` times ``W_O`` -- replaced by its corrupt -> clean interpolation, a leaf added
at ``hook_resid_post`` of the last block); ``exact`` for the measured edges of eap-ig-exact.
"""

from __future__ import annotations

import hf_tiny
import pytest
import torch

from grokscope.discovery.methods import ig_activation_scores
from grokscope.discovery.scores import Corruption, prepare, score_edges

N, POS = 4, 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


def _reference(model, c, out_hook, value, pos, steps, read_pos):
    with torch.no_grad():
        _, cc = model.run_with_cache(c.clean, names_filter=[out_hook])
        _, kc = model.run_with_cache(c.corrupt, names_filter=[out_hook])
    clean_v, corrupt_v = cc[out_hook], kc[out_hook]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    grads = []
    for k in range(1, steps + 1):
        a = k / steps
        eps = torch.zeros(N, POS, model.cfg.d_model, requires_grad=True)
        hooks = [(out_hook, lambda t, hook, a=a: corrupt_v + a * (clean_v - corrupt_v)),
                 (last, lambda t, hook, eps=eps: t + eps)]
        with torch.enable_grad():
            logits = model.run_with_hooks(c.clean, fwd_hooks=hooks)[:, read_pos]
            m = logits.gather(1, c.answer[:, None])[:, 0] - logits.gather(1, c.cf_answer[:, None])[:, 0]
            (g,) = torch.autograd.grad(m.sum(), eps)
        grads.append(g[:, pos])
    delta = value(clean_v) - value(corrupt_v)
    return float((delta[:, pos] * torch.stack(grads).mean(0)).sum(-1).mean())


@pytest.mark.parametrize("arch", hf_tiny.ARCHS)
def test_methods_on_hf_architectures(arch, root):
    model = hf_tiny.bridge(hf_tiny.save(arch, root))
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, len(hf_tiny.WORDS), (N, POS), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(1, len(hf_tiny.WORDS), (N,), generator=g)
    c = Corruption(clean, corrupt, *torch.randint(1, len(hf_tiny.WORDS), (2, N), generator=g))
    acts = prepare(model, c)
    graph = acts.graph
    sc = ig_activation_scores(model, c, ig_steps=2, acts=acts)
    names = [graph.edge_name(e) for e in range(graph.n_edges)]
    W_O = model.blocks[0].attn.W_O.detach()
    rp = graph.read_pos
    for out_hook, value, w in [("blocks.1.hook_mlp_out", lambda v: v, "m1"),  # m0 at the last position: unchanged in NeoX
                               ("blocks.0.attn.hook_z", lambda z: z[:, :, 1] @ W_O[1], "a0.h1")]:
        ref = _reference(model, c, out_hook, value, rp, 2, rp)
        assert abs(ref) > 1e-4, (arch, w)
        got = float(sc.scores[names.index(f"{w}->logits@{rp}")])
        assert got == pytest.approx(ref, rel=1e-3, abs=1e-5), (arch, w)
    ig = score_edges(model, c, "eap-ig", ig_steps=2, acts=acts)
    emb = graph.edge_index[:, 2] == 0
    assert torch.allclose(sc.scores[emb], ig.scores[emb], atol=1e-5)
    r = score_edges(model, c, "eap-ig-exact", acts=acts)
    exact = score_edges(model, c, "exact", acts=acts).scores
    assert r.measured.any() and torch.allclose(r.scores[r.measured], exact[r.measured], atol=1e-5)


@pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")  # 4 prompts: a small gap
def test_methods_on_prompts_of_different_lengths(root):
    from grokscope.discovery import discover

    model = hf_tiny.bridge(hf_tiny.save("gpt2", root))
    clean = ["w1 w2 w3", "w4 w5 w6 w7 w8", "w9 w10 w11 w12", "w13 w14"]
    corrupt = ["w1 w20 w3", "w4 w21 w6 w7 w8", "w9 w22 w11 w12", "w23 w14"]
    d = discover(model, clean, corrupt, answer=["w30", "w31", "w32", "w33"], cf_answer=["w40", "w41", "w42", "w43"],
                 method="eap-ig-exact", measure_circuit_edges=0)
    c = d.corruption
    assert c.attention_mask is not None and not bool(c.attention_mask.all())  # right-padded, scored per prompt
    acts = prepare(model, c)
    exact = score_edges(model, c, "exact", acts=acts).scores
    m = d.scores.measured
    assert m.any() and torch.allclose(d.exact[m], exact[m], atol=1e-5)
    sc = ig_activation_scores(model, c, ig_steps=2, acts=acts)
    ig = score_edges(model, c, "eap-ig", ig_steps=2, acts=acts)
    emb = acts.graph.edge_index[:, 2] == 0
    assert torch.allclose(sc.scores[emb], ig.scores[emb], atol=1e-5)
