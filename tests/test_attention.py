"""grokscope.lens.attention against references written here: the pattern recomputed from
the model's own queries and keys (softmax of q.k / sqrt(d_head) under the causal mask),
and attention_mass / top_keys against plain loops over that pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokscope.lens.attention import attention_mass, attention_patterns, top_keys
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model


@pytest.fixture(scope="module")
def model_tokens():
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64), 11, 12, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    tokens = torch.randint(0, 11, (5, 9), generator=g)
    return model.eval(), tokens


def _reference_pattern(model, tokens):
    names = [f"blocks.{layer}.attn.hook_{x}" for layer in range(model.cfg.n_layers) for x in ("q", "k")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    out = []
    n_pos = tokens.shape[1]
    mask = torch.ones(n_pos, n_pos).triu(1).bool()
    for layer in range(model.cfg.n_layers):
        q, k = cache[f"blocks.{layer}.attn.hook_q"], cache[f"blocks.{layer}.attn.hook_k"]  # [b, pos, head, d_head]
        heads = []
        for h in range(model.cfg.n_heads):
            scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) / q.shape[-1] ** 0.5
            heads.append(scores.masked_fill(mask, float("-inf")).softmax(-1))
        out.append(torch.stack(heads))
    return torch.stack(out)  # [layer, head, example, query, key]


def test_patterns_are_softmax_of_the_models_queries_and_keys(model_tokens):
    model, tokens = model_tokens
    pat = attention_patterns(model, tokens)
    assert pat.shape == (2, 4, 5, 9, 9)
    torch.testing.assert_close(pat, _reference_pattern(model, tokens), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pat.sum(-1), torch.ones(2, 4, 5, 9))
    assert torch.equal(attention_patterns(model, tokens, layers=[1])[0], pat[1])


def test_mass_and_top_keys_against_plain_loops(model_tokens):
    model, tokens = model_tokens
    ref = _reference_pattern(model, tokens)
    q = np.array([8, 3, 5, 8, 2])
    keys = np.array([[[0, 1], [2, -1], [-1, -1]]] * 5)
    keys[1, 0] = [3, 0]
    m = attention_mass(model, tokens, q, keys)
    assert m.shape == (2, 4, 5, 3)
    for layer in range(2):
        for h in range(4):
            for i in range(5):
                row = ref[layer, h, i, q[i]]
                assert float(m[layer, h, i, 0]) == pytest.approx(float(row[keys[i, 0]].sum()), abs=1e-5)
                assert float(m[layer, h, i, 1]) == pytest.approx(float(row[2]), abs=1e-5)
                assert np.isnan(float(m[layer, h, i, 2]))
    top = top_keys(model, tokens, q)
    assert torch.equal(top, ref[:, :, torch.arange(5), torch.as_tensor(q)].argmax(-1))
    with pytest.raises(ValueError, match="key_pos"):
        attention_mass(model, tokens, 0, [[9]] * 5)
    with pytest.raises(ValueError, match="query_pos"):
        top_keys(model, tokens, 9)
