"""Tests for grokscope.runs.model: HF GPT-2 reference, init, seeding, sharing, tying, save/load."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from grokscope.runs.config import ModelConfig
from grokscope.runs.model import (
    bridge_config,
    bridge_config_dict,
    build_model,
    decay_param_groups,
    dropout,
    load_tensors,
    n_params,
    save_tensors,
    shared_groups,
)

D_VOCAB, N_CTX = 37, 8
SMALL = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=128, init_range=0.2)
SHARED = dataclasses.replace(SMALL, n_layers=4, share_layers=True)


def _tokens(seed: int = 0, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, D_VOCAB, (batch, N_CTX), generator=g)


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


# --------------------------------------------------------------------------- reference


def _hf_gpt2(cfg: ModelConfig):
    """A freshly initialized HF GPT-2 of the same shape (no dropout, eager attention)."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(
        vocab_size=D_VOCAB, n_positions=N_CTX, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=cfg.tie_embeddings, attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(hf_cfg).eval()


def _copy_into_hf(model, hf) -> None:
    """Our nn.Linear weights are [out, in]; HF's Conv1D weights are [in, out], QKV fused."""
    sd = model.state_dict()
    tr = hf.transformer
    with torch.no_grad():
        tr.wte.weight.copy_(sd["embed.weight"])
        tr.wpe.weight.copy_(sd["pos_embed.weight"])
        for i, block in enumerate(tr.h):
            p = f"blocks.{i}."
            block.ln_1.weight.copy_(sd[p + "ln1.weight"])
            block.ln_1.bias.copy_(sd[p + "ln1.bias"])
            w = torch.cat([sd[p + f"attn.{x}.weight"] for x in "qkv"], dim=0)  # [3 d_model, d_model]
            block.attn.c_attn.weight.copy_(w.T)
            block.attn.c_attn.bias.copy_(torch.cat([sd[p + f"attn.{x}.bias"] for x in "qkv"]))
            block.attn.c_proj.weight.copy_(sd[p + "attn.o.weight"].T)
            block.attn.c_proj.bias.copy_(sd[p + "attn.o.bias"])
            block.ln_2.weight.copy_(sd[p + "ln2.weight"])
            block.ln_2.bias.copy_(sd[p + "ln2.bias"])
            block.mlp.c_fc.weight.copy_(sd[p + "mlp.in.weight"].T)
            block.mlp.c_fc.bias.copy_(sd[p + "mlp.in.bias"])
            block.mlp.c_proj.weight.copy_(sd[p + "mlp.out.weight"].T)
            block.mlp.c_proj.bias.copy_(sd[p + "mlp.out.bias"])
        tr.ln_f.weight.copy_(sd["ln_final.weight"])
        tr.ln_f.bias.copy_(sd["ln_final.bias"])
        if hf.lm_head.weight is not tr.wte.weight:
            hf.lm_head.weight.copy_(sd["unembed.weight"])


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_logits_match_hf_gpt2(tie: bool) -> None:
    cfg = dataclasses.replace(SMALL, tie_embeddings=tie)
    model = build_model(cfg, D_VOCAB, N_CTX, seed=3)
    hf = _hf_gpt2(cfg)
    assert (hf.lm_head.weight is hf.transformer.wte.weight) == tie
    tokens = _tokens()
    ours = _logits(model, tokens)
    with torch.no_grad():
        before = hf(tokens).logits
    assert (before - ours).abs().max() > 1e-2  # the copy below is what makes them agree
    _copy_into_hf(model, hf)
    with torch.no_grad():
        theirs = hf(tokens).logits
    assert ours.shape == (4, N_CTX, D_VOCAB)
    assert ours.std() > 0.1  # logits are not trivially small
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if tie:
        assert model.unembed.original_component.weight is model.embed.original_component.weight
        assert torch.equal(model.unembed.b_U, torch.zeros(D_VOCAB))


def test_dropout_hooks_match_hf_gpt2_dropout_placement(monkeypatch) -> None:
    """Our hooks drop where HF GPT-2 does (its four dropout calls per forward pass, all
    through ``F.dropout``): replaying the masks our hooks drew in HF's own call order,
    in HF's training mode, gives the same logits."""
    p = 0.3
    model = build_model(SMALL, D_VOCAB, N_CTX, seed=3)
    hf = _hf_gpt2(SMALL)
    _copy_into_hf(model, hf)
    tokens = _tokens()
    masks: list[torch.Tensor] = []
    record = lambda t, hook: masks.append((t != 0).float()) or t  # noqa: E731  (runs after the drop hook)
    from grokscope.runs.model import dropout_hook_names

    gen = torch.Generator().manual_seed(0)
    with dropout(model, p, gen), model.hooks(fwd_hooks=[(n, record) for n in dropout_hook_names(SMALL.n_layers)]):
        ours = _logits(model, tokens)
    assert len(masks) == 1 + 3 * SMALL.n_layers
    kept = torch.cat([m.flatten() for m in masks if m.ndim == 3]).mean().item()  # residual sites
    assert kept == pytest.approx(1 - p, abs=0.03)
    replay = lambda x, *args, **kwargs: x * masks.pop(0) / (1 - p)  # noqa: E731
    monkeypatch.setattr(torch.nn.functional, "dropout", replay)
    hf.train()
    with torch.no_grad():
        theirs = hf(tokens).logits
    monkeypatch.undo()
    assert not masks  # every mask consumed: same number of dropout sites, same order
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # Outside the context the model is deterministic again, and the same generator
    # state draws the same masks.
    plain = _logits(model, tokens)
    assert (plain - ours).abs().max() > 1e-3
    with dropout(model, p, torch.Generator().manual_seed(0)):
        again = _logits(model, tokens)
    assert torch.equal(again, ours)
    with pytest.raises(ValueError, match="dropout p"):
        with dropout(model, 1.0, gen):
            pass


# --------------------------------------------------------------------------- init and config


def test_init_scheme_follows_init_range() -> None:
    cfg = ModelConfig(n_layers=4, d_model=64, n_heads=4, d_mlp=256, init_range=0.05)
    sd = build_model(cfg, 200, N_CTX, seed=0).state_dict()
    out_std = 0.05 / math.sqrt(2 * 4)
    assert sd["embed.weight"].std().item() == pytest.approx(0.05, rel=0.05)
    assert sd["blocks.1.mlp.in.weight"].std().item() == pytest.approx(0.05, rel=0.05)
    assert sd["blocks.1.mlp.out.weight"].std().item() == pytest.approx(out_std, rel=0.05)
    assert sd["blocks.2.attn.o.weight"].std().item() == pytest.approx(out_std, rel=0.1)
    assert sd["unembed.weight"].std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(sd["blocks.0.ln1.weight"], torch.ones(64))
    for key in ("blocks.0.ln1.bias", "blocks.3.attn.q.bias", "blocks.3.mlp.out.bias", "unembed.bias"):
        assert torch.count_nonzero(sd[key]) == 0, key


def test_bridge_config_dict_is_json_and_rebuilds_config() -> None:
    from transformer_lens.config import TransformerBridgeConfig

    cfg = dataclasses.replace(SMALL, tie_embeddings=True)
    d = json.loads(json.dumps(bridge_config_dict(cfg, D_VOCAB, N_CTX, seed=5)))
    assert "device" not in d and "dtype" not in d
    rebuilt = TransformerBridgeConfig.from_dict(d)
    direct = bridge_config(cfg, D_VOCAB, N_CTX, seed=5)
    for key in ("d_model", "d_head", "n_heads", "d_mlp", "d_vocab", "n_ctx", "act_fn",
                "initializer_range", "init_mode", "seed", "normalization_type", "tie_word_embeddings"):
        assert getattr(rebuilt, key) == getattr(direct, key), key
    assert d["initializer_range"] == 0.2 and d["seed"] == 5 and d["d_head"] == 8


def test_build_model_rejects_bad_dims() -> None:
    with pytest.raises(ValueError, match="d_vocab"):
        build_model(SMALL, 0, N_CTX, seed=0)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a = build_model(SHARED, D_VOCAB, N_CTX, seed=7).state_dict()
    b = build_model(SHARED, D_VOCAB, N_CTX, seed=7).state_dict()
    c = build_model(SHARED, D_VOCAB, N_CTX, seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.q.weight"], c["blocks.0.attn.q.weight"])
    assert not torch.equal(a["embed.weight"], c["embed.weight"])


# --------------------------------------------------------------------------- layer sharing


def test_shared_parameter_count_and_identity() -> None:
    shared = build_model(SHARED, D_VOCAB, N_CTX, seed=0)
    plain = build_model(dataclasses.replace(SHARED, share_layers=False), D_VOCAB, N_CTX, seed=0)
    block = sum(p.numel() for p in plain.blocks[0].parameters())
    assert block == 2 * 64 + 4 * (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    assert n_params(plain) - n_params(shared) == 2 * block
    # n_unique_blocks blocks' worth: everything outside blocks + 2 blocks
    outside = n_params(plain) - 4 * block
    assert n_params(shared) == outside + SHARED.n_unique_blocks * block
    for lo in range(2):
        lower = dict(shared.blocks[lo].named_parameters())
        upper = dict(shared.blocks[lo + 2].named_parameters())
        assert lower.keys() == upper.keys() and len(lower) == 16
        assert all(lower[k] is upper[k] for k in lower)
    assert shared.blocks[0].attn.q.weight is not shared.blocks[1].attn.q.weight
    assert len(shared_groups(shared)) == 2 * 16


def test_shared_blocks_keep_distinct_hooks() -> None:
    model = build_model(SHARED, D_VOCAB, N_CTX, seed=0)
    tokens = _tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        assert (cache["blocks.0.hook_resid_post"] - cache["blocks.2.hook_resid_post"]).abs().max() > 1e-2
        # block 2 is block 0's function applied to block 2's input
        out = model.blocks[0](cache["blocks.2.hook_resid_pre"])
        out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out, cache["blocks.2.hook_resid_post"], atol=1e-6, rtol=0)
    assert model.hook_dict["blocks.0.hook_resid_post"] is not model.hook_dict["blocks.2.hook_resid_post"]


def test_shared_gradient_is_sum_and_step_keeps_sharing() -> None:
    shared = build_model(SHARED, D_VOCAB, N_CTX, seed=1)
    plain = build_model(dataclasses.replace(SHARED, share_layers=False), D_VOCAB, N_CTX, seed=2)
    plain.load_state_dict(save_tensors(shared), strict=True)  # same values, unshared
    tokens = _tokens(1)
    for m in (shared, plain):
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    g_shared = shared.blocks[0].mlp.out.weight.grad
    g_sum = plain.blocks[0].mlp.out.weight.grad + plain.blocks[2].mlp.out.weight.grad
    assert g_shared.abs().max() > 0
    torch.testing.assert_close(g_shared, g_sum, atol=1e-6, rtol=1e-5)

    q_lo, q_hi = shared.blocks[0].attn.q.weight, shared.blocks[2].attn.q.weight
    before = q_lo.detach().clone()
    opt = torch.optim.AdamW(decay_param_groups(shared, 0.1), lr=1e-2)
    opt.step()
    assert shared.blocks[0].attn.q.weight is q_lo and shared.blocks[2].attn.q.weight is q_hi is q_lo
    assert not torch.equal(q_lo.detach(), before)


# --------------------------------------------------------------------------- save / load

VARIANTS = {
    "plain": SMALL,
    "tied": dataclasses.replace(SMALL, tie_embeddings=True),
    "shared": SHARED,
    "shared_tied": dataclasses.replace(SHARED, tie_embeddings=True),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_save_load_round_trip(name: str, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = VARIANTS[name]
    src = build_model(cfg, D_VOCAB, N_CTX, seed=11)
    tensors = save_tensors(src)
    assert all(t.is_contiguous() for t in tensors.values())
    assert len({t.data_ptr() for t in tensors.values()}) == len(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(bridge_config_dict(cfg, D_VOCAB, N_CTX, 11)))
    tokens = _tokens(2)
    expected = _logits(src, tokens)

    dst = build_model(cfg, D_VOCAB, N_CTX, seed=12)
    groups = shared_groups(dst)
    assert not torch.equal(_logits(dst, tokens), expected)
    load_tensors(dst, load_file(tmp_path / "model.safetensors"), strict=True)
    assert torch.equal(_logits(dst, tokens), expected)
    assert shared_groups(dst) == groups
    if cfg.share_layers:
        assert getattr(dst.blocks[1].mlp, "in").weight is getattr(dst.blocks[3].mlp, "in").weight
    if cfg.tie_embeddings:
        assert dst.unembed.original_component.weight is dst.embed.original_component.weight


@pytest.mark.parametrize("name", list(VARIANTS))
def test_plain_transformer_lens_load_path(name: str, tmp_path) -> None:
    """What a user without grokscope does: boot_native from config.json, load_state_dict."""
    from safetensors.torch import load_file, save_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = VARIANTS[name]
    src = build_model(cfg, D_VOCAB, N_CTX, seed=21)
    save_file(save_tensors(src), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(bridge_config_dict(cfg, D_VOCAB, N_CTX, 21)))

    tl_cfg = TransformerBridgeConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    tl_cfg.seed = 99  # make sure the weights come from the file, not the init
    user = TransformerBridge.boot_native(tl_cfg)
    user.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    tokens = _tokens(3)
    assert torch.equal(_logits(user, tokens), _logits(src, tokens))


def test_load_refuses_inconsistent_shared_values() -> None:
    model = build_model(dataclasses.replace(SMALL, tie_embeddings=True), D_VOCAB, N_CTX, seed=0)
    tensors = save_tensors(model)
    tensors["unembed.weight"] = tensors["unembed.weight"] + 1.0
    with pytest.raises(ValueError, match="shared parameter"):
        load_tensors(model, tensors)


def test_load_strict_rejects_missing_key() -> None:
    model = build_model(SMALL, D_VOCAB, N_CTX, seed=0)
    tensors = save_tensors(model)
    del tensors["blocks.1.ln2.bias"]
    with pytest.raises(RuntimeError, match="Missing"):
        load_tensors(model, tensors, strict=True)


# --------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize("name", ["plain", "shared_tied"])
def test_decay_param_groups(name: str) -> None:
    cfg = VARIANTS[name]
    model = build_model(cfg, D_VOCAB, N_CTX, seed=0)
    groups = decay_param_groups(model, 0.3)
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    blk = model.blocks[0]
    for p in (model.embed.original_component.weight, model.pos_embed.original_component.weight,
              model.unembed.original_component.weight, blk.attn.q.weight, blk.attn.o.weight,
              getattr(blk.mlp, "in").weight, blk.mlp.out.weight):
        assert id(p) in decay
    for p in (blk.ln1.weight, blk.ln1.bias, blk.ln2.weight, blk.attn.k.bias, blk.attn.o.bias,
              getattr(blk.mlp, "in").bias, model.ln_final.weight, model.ln_final.bias):
        assert id(p) in no_decay
    n_blocks = cfg.n_unique_blocks
    n_matrices = 2 + 6 * n_blocks + (0 if cfg.tie_embeddings else 1)
    assert len(groups[0]["params"]) == n_matrices
    assert len(groups[1]["params"]) == 10 * n_blocks + 2
