"""Tests for grokscope.patching.tracing: KB counterfactuals (recomputed from the KB),
patching invariants, batched tracing against a one-patch-per-forward reference written
here with plain ``model.run_with_hooks``, and a hand-built model with a known circuit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grokscope.patching.tracing import (
    Counterfactuals,
    Site,
    TraceReadout,
    make_counterfactuals,
    run_patches,
    site_hook_names,
    trace,
)
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model
from grokscope.tasks import comparison, composition
from grokscope.tasks.vocab import parse_token


@pytest.fixture(scope="module")
def comp_ds():
    return composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0, seed=0)


@pytest.fixture(scope="module")
def cmp_ds():
    return comparison(n_entities=20, n_attributes=3, n_values=5, phi=2.0, seed=0, probe_size=50)


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.5
            p.copy_(1.0 + noise if p.ndim == 1 and "ln" in name.lower() and "weight" in name else noise)
    return model.eval()


@pytest.fixture(scope="module")
def comp_model(comp_ds):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64)
    return _randomize(build_model(cfg, len(comp_ds.vocab), comp_ds.n_ctx, seed=0))


def _idx(vocab, tok):
    return parse_token(vocab.tokens[int(tok)])[1][0]


# --------------------------------------------------------------------------- counterfactuals


def test_composition_counterfactuals_change_the_answer_per_the_kb(comp_ds):
    cfs = make_counterfactuals(comp_ds, n=40, seed=3)
    tail, ood, v = comp_ds.kb.tail, comp_ds.kb.ood, comp_ds.vocab
    assert sorted(cfs) == ["h", "r1", "r2"]
    for pert, cf in cfs.items():
        assert cf.n_requested == 40 and len(cf) + cf.n_invalid == 40 and len(cf) > 0
        assert cf.position == {"h": 0, "r1": 1, "r2": 2}[pert]
        for i in range(len(cf)):
            diff = np.flatnonzero((cf.clean[i] != cf.corrupt[i]).numpy())
            assert diff.tolist() == [cf.position]
            h, r1, r2 = (_idx(v, x) for x in cf.clean[i])
            h2, r12, r22 = (_idx(v, x) for x in cf.corrupt[i])
            t, t2 = tail[tail[h, r1], r2], tail[tail[h2, r12], r22]
            assert tail[h2, r12] >= 0 and tail[tail[h2, r12], r22] >= 0
            assert t != t2
            assert v.tokens[int(cf.answer[i])] == f"<e_{t}>"
            assert v.tokens[int(cf.cf_answer[i])] == f"<e_{t2}>"
            assert not ood[h2, r12] and not ood[tail[h2, r12], r22]  # id_only
            if pert == "r1":  # r1' of the same head, its bridge does not lead to t via r2
                assert tail[tail[h, r12], r2] != t
            if pert == "r2":
                assert tail[h2, r12] == tail[h, r1]  # same bridge
        # the clean examples are the split's rows
        split = comp_ds.splits["train_inferred"]
        assert torch.equal(cf.clean, torch.from_numpy(split.input_ids[cf.example_index.numpy()]))


def test_comparison_counterfactuals_flip_the_label(cmp_ds):
    cfs = make_counterfactuals(cmp_ds, n=30, seed=1)
    values, v = cmp_ds.kb.values, cmp_ds.vocab

    def label(a, e1, e2):
        x, y = values[e1, a], values[e2, a]
        return 0 if x < y else 1 if x == y else 2

    for cf in cfs.values():
        assert len(cf) > 0
        for i in range(len(cf)):
            a, _, e1, _, e2 = cf.clean[i].tolist()
            a2, _, f1, _, f2 = cf.corrupt[i].tolist()
            a, e1, e2, a2, f1, f2 = (_idx(v, x) for x in (a, e1, e2, a2, f1, f2))
            assert label(a, e1, e2) != label(a2, f1, f2)
            assert v.tokens[int(cf.answer[i])] == f"<attr_{a}_{label(a, e1, e2)}>"
            assert v.tokens[int(cf.cf_answer[i])] == f"<attr_{a2}_{label(a2, f1, f2)}>"
            assert len({f1, f2}) == 2


def test_counterfactuals_are_seeded_and_invalid_ones_counted(comp_ds):
    a = make_counterfactuals(comp_ds, n=25, seed=7)
    b = make_counterfactuals(comp_ds, n=25, seed=7)
    c = make_counterfactuals(comp_ds, n=25, seed=8)
    assert all(torch.equal(a[p].corrupt, b[p].corrupt) for p in a)
    assert any(not torch.equal(a[p].corrupt, c[p].corrupt) for p in a if len(a[p]) == len(c[p])) or any(
        len(a[p]) != len(c[p]) for p in a
    )
    one_attr = comparison(n_entities=15, n_attributes=1, n_values=5, phi=1.0, seed=0, probe_size=20)
    cfs = make_counterfactuals(one_attr, n=10, perturbations=["attr"])
    assert len(cfs["attr"]) == 0 and cfs["attr"].n_invalid == 10  # no second attribute exists
    with pytest.raises(ValueError, match="roles"):
        make_counterfactuals(comp_ds, "id_atomic")
    with pytest.raises(ValueError, match="unknown perturbations"):
        make_counterfactuals(comp_ds, perturbations=["e1"])
    json.dumps(a["h"].to_dict())


# --------------------------------------------------------------------------- invariants


def test_patching_clean_into_clean_changes_nothing(comp_ds, comp_model):
    cf = make_counterfactuals(comp_ds, n=10, seed=0)["h"]
    with torch.no_grad():
        ref = comp_model(cf.clean)[:, -1]
    sites = [Site(n, p) for kind in ("resid", "attn", "mlp") for n in site_hook_names(kind, 2) for p in range(3)]
    sites += [Site("blocks.1.attn.hook_z", 2, 3)]
    answers = torch.stack([cf.answer, cf.cf_answer], 1)
    for skip in (False, True):
        out = run_patches(
            comp_model, cf.clean, cf.clean, [(s,) for s in sites], answer_ids=answers, batch_size=17,
            skip_unchanged=skip,
        )
        assert out.n_rows_run == (0 if skip else len(sites) * len(cf))  # really ran every hook
        assert torch.equal(out.top1, ref.argmax(-1).expand(len(sites), -1))
        torch.testing.assert_close(out.logits, ref.gather(-1, answers).expand(len(sites), -1, -1), atol=1e-5, rtol=0)
    same = Counterfactuals("h", 0, cf.clean, cf.clean, cf.answer, cf.cf_answer, cf.example_index, cf.roles, n_requested=10)
    res = trace(comp_model, same, site="resid")
    assert float(res.strength.abs().max()) == 0.0


def test_patching_every_position_at_layer0_reproduces_the_counterfactual(comp_ds, comp_model):
    for cf in make_counterfactuals(comp_ds, n=10, seed=0).values():
        with torch.no_grad():
            ref = comp_model(cf.corrupt)[:, -1]
        out = run_patches(
            comp_model, cf.clean, cf.corrupt, [(Site("blocks.0.hook_resid_pre", None),)],
            answer_ids=torch.stack([cf.answer, cf.cf_answer], 1),
        )
        assert torch.equal(out.top1[0], ref.argmax(-1))
        torch.testing.assert_close(out.logits[0], ref.gather(-1, torch.stack([cf.answer, cf.cf_answer], 1)), atol=1e-5, rtol=0)
        # ... and the same site list, one position at a time, does too
        out2 = run_patches(
            comp_model, cf.clean, cf.corrupt, [tuple(Site("blocks.0.hook_resid_pre", p) for p in range(3))]
        )
        assert torch.equal(out2.top1[0], ref.argmax(-1))


# --------------------------------------------------------------------------- batched == naive


def _naive_trace(model, cf, site, readout=None):
    """One patch per forward pass with plain run_with_hooks; independent of run_patches."""
    names = site_hook_names(site, model.cfg.n_layers)
    heads = range(model.cfg.n_heads) if site == "head" else [None]
    with torch.no_grad():
        _, cache = model.run_with_cache(cf.corrupt)
        clean = model(cf.clean)[:, -1]
    ld, top, ranks = [], [], []
    for name in names:
        for head in heads:
            for pos in range(cf.clean.shape[1]):

                def patch(act, hook, name=name, pos=pos, head=head):
                    act = act.clone()
                    if head is None:
                        act[:, pos] = cache[name][:, pos]
                    else:
                        act[:, pos, head] = cache[name][:, pos, head]
                    return act

                store = {}
                hooks = [(name, patch)]
                if readout is not None:
                    hooks.append((readout[0], lambda act, hook, store=store: store.__setitem__("x", act.clone())))
                with torch.no_grad():
                    logits = model.run_with_hooks(cf.clean, fwd_hooks=hooks)[:, -1]
                ld.append(logits.gather(-1, cf.answer[:, None])[:, 0] - logits.gather(-1, cf.cf_answer[:, None])[:, 0])
                top.append(logits.argmax(-1) != clean.argmax(-1))
                if readout is not None:
                    with torch.no_grad():
                        dec = model.unembed(model.ln_final(store["x"][:, readout[1]]))
                    order = dec.argsort(-1, descending=True)
                    ranks.append((order == readout[2][:, None]).float().argmax(-1) + 1)
    shape = (len(names), len(heads), cf.clean.shape[1]) if site == "head" else (len(names), cf.clean.shape[1])
    fold = lambda xs: torch.stack(xs, -1).reshape(len(cf), *shape)  # noqa: E731
    return fold(ld), fold(top), (fold(ranks) if readout is not None else None)


@pytest.mark.parametrize(
    "site,skip", [("resid", True), ("resid", False), ("attn", True), ("mlp", True), ("head", True), ("head", False)]
)
def test_batched_tracing_equals_one_patch_per_forward(comp_ds, comp_model, site, skip):
    cfs = make_counterfactuals(comp_ds, n=9, seed=2)
    readouts = [TraceReadout("bridge@S1r1", 1, "r1", "bridge")]
    # small batches: chunks cut through patches
    res = trace(comp_model, cfs, site=site, readouts=readouts, batch_size=13, skip_unchanged=skip)
    for k, (pert, cf) in enumerate(cfs.items()):
        ld, changed, ranks = _naive_trace(comp_model, cf, site, ("blocks.1.hook_resid_pre", 1, cf.meta["bridge"]))
        torch.testing.assert_close(res.ld_patched[pert], ld, atol=1e-5, rtol=1e-5)
        assert torch.equal(res.changed[pert], changed)
        torch.testing.assert_close(res.strength[k], changed.float().mean(0))
        assert torch.equal(res.readout_ranks["bridge@S1r1"][pert], ranks)
    assert res.strength.shape == ((3, 2, 4, 3) if site == "head" else (3, 3 if site == "resid" else 2, 3))
    d = json.loads(json.dumps(res.to_dict()))
    assert d["hook_names"] == site_hook_names(site, 2)
    assert d["examples"]["h"]["clean"] == cfs["h"].clean.tolist()


def test_trace_baselines_and_normalised_effect(comp_ds, comp_model):
    cfs = make_counterfactuals(comp_ds, n=12, seed=4, perturbations=["r2"])
    res = trace(comp_model, cfs, site="resid", layers=[0, 2], positions=[2])
    cf = cfs["r2"]
    with torch.no_grad():
        lc, lf = comp_model(cf.clean)[:, -1], comp_model(cf.corrupt)[:, -1]
    ld = lambda x: x.gather(-1, cf.answer[:, None])[:, 0] - x.gather(-1, cf.cf_answer[:, None])[:, 0]  # noqa: E731
    torch.testing.assert_close(res.ld_clean["r2"], ld(lc), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.ld_cf["r2"], ld(lf), atol=1e-5, rtol=0)
    assert torch.equal(res.cf_top1["r2"], lf.argmax(-1))
    # patching S[0, r2] and S[L, r2] (the whole path of the only changed token) = the cf run
    torch.testing.assert_close(res.logit_diff[0], torch.ones(2, 1), atol=1e-5, rtol=0)
    assert res.hook_names == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert res.position_roles == ["r2"]


# --------------------------------------------------------------------------- known circuit


def _hand_built_model():
    """Output = the token at position 0, copied to the last position by head 0 of layer 0.

    No norms, layer 1 and every MLP and head 1 write nothing. d_model 20: dims 0..2 hold
    a position indicator (x10), 4..11 the token, 12..19 the copy the unembedding reads.
    """
    cfg = ModelConfig(n_layers=2, d_model=20, n_heads=2, d_mlp=8, normalization_type=None)
    vocab, n_ctx = 12, 3
    m = build_model(cfg, vocab, n_ctx, seed=0)
    sd = {k: torch.zeros_like(v) for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(vocab, 8, generator=g), dim=-1)
    sd["embed.weight"][:, 4:12] = emb
    for p in range(n_ctx):
        sd["pos_embed.weight"][p, p] = 10.0
    sd["blocks.0.attn.q.weight"][0, 2] = 2.0  # head 0 query: "I am the last position"
    sd["blocks.0.attn.k.weight"][0, 0] = 2.0  # head 0 key: "I am position 0"
    for i in range(8):
        sd["blocks.0.attn.v.weight"][i, 4 + i] = 1.0  # value: the token
        sd["blocks.0.attn.o.weight"][12 + i, i] = 1.0  # output: into the copy subspace
    sd["unembed.weight"][:, 12:20] = emb
    m.load_state_dict(sd)
    return m.eval()


def test_tracing_finds_a_hand_built_circuit_and_nothing_else():
    model = _hand_built_model()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 12, (16, 3), generator=g)
    with torch.no_grad():
        assert torch.equal(model(clean)[:, -1].argmax(-1), clean[:, 0])  # the model works as built
    roles = {"a": 0, "b": 1, "c": 2}
    cfs = {}
    for pos in range(3):
        corrupt = clean.clone()
        corrupt[:, pos] = (clean[:, pos] + 1 + torch.arange(16) % 11) % 12
        cf_answer = corrupt[:, 0]
        if pos != 0:  # the answer does not change; any other token serves as the foil
            cf_answer = (clean[:, 0] + 1) % 12
        cfs["abc"[pos]] = Counterfactuals("abc"[pos], pos, clean, corrupt, clean[:, 0], cf_answer, torch.arange(16), roles, n_requested=16)

    resid = trace(model, cfs, site="resid")
    expect = torch.zeros(3, 3, 3)
    expect[0, 0, 0] = 1  # S[0, a]: the token itself
    expect[0, 1:, 2] = 1  # S[1, c], S[2, c]: the copy at the last position
    assert torch.equal(resid.strength, expect)
    torch.testing.assert_close(resid.logit_diff[0], expect[0], atol=1e-4, rtol=0)
    # b and c do not move the answer: the normalised effect is undefined (0 / 0) ...
    assert bool(resid.logit_diff[1:].isnan().all())
    # ... and no patched state moves the logit difference either
    for p in "bc":
        torch.testing.assert_close(resid.ld_patched[p], resid.ld_clean[p][:, None, None].expand(16, 3, 3), atol=1e-4, rtol=0)

    attn = trace(model, cfs, site="attn")
    expect = torch.zeros(3, 2, 3)
    expect[0, 0, 2] = 1  # layer 0's attention output at the last position, nothing else
    assert torch.equal(attn.strength, expect)
    assert float(trace(model, cfs, site="mlp").logit_diff[0].abs().max()) < 1e-4
    heads = trace(model, cfs, site="head")
    expect = torch.zeros(3, 2, 2, 3)
    expect[0, 0, 0, 2] = 1  # head L0H0 at the last position
    assert torch.equal(heads.strength, expect)
    torch.testing.assert_close(heads.logit_diff[0], expect[0], atol=1e-4, rtol=0)
