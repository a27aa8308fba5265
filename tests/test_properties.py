"""Property-based tests (hypothesis): inputs give a valid result or a clear ValueError.

* Task generators over sizes, fractions, phi, seeds: a dataset that is internally
  consistent (its paper-format files load back to the same content hash, which
  re-derives every inferred fact from the atomic facts) or a ValueError; never
  another exception.
* Token sequences fed to the analysis (logit lens, direct logit attribution, the
  patching engine and causal tracing) on a tiny random model: unknown token ids,
  sequences longer than ``n_ctx`` or empty, empty batches, non-integer or ragged
  inputs give a ValueError or a valid result, never an error deep inside torch; and
  every valid input is accepted.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grokscope.lens.attribution import direct_logit_attribution
from grokscope.lens.logit import (
    LensTarget,
    logit_lens,
    resid_hook_names,
)
from grokscope.patching.tracing import Counterfactuals, Site, run_patches, trace
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model
from grokscope.tasks import (
    SPLITS,
    comparison,
    complex_reasoning,
    composition,
    load_paper_format,
    save_paper_format,
)
from grokscope.tasks.vocab import END

SETTINGS = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

WILD_FRACTIONS = st.one_of(st.floats(-0.2, 1.2), st.sampled_from([0.0, 1.0, math.nan, math.inf]))
WILD_PHI = st.one_of(st.floats(-1.0, 12.0), st.sampled_from([math.nan, math.inf, 1e9]))


def _pick(draw, valid, wild):
    """Mostly plausible values (so valid datasets are common), sometimes anything."""
    return draw(wild) if draw(st.integers(0, 3)) == 0 else draw(valid)


@st.composite
def composition_args(draw):
    n_r = _pick(draw, st.integers(1, 8), st.integers(-1, 8))
    return dict(
        n_entities=_pick(draw, st.integers(2, 40), st.integers(-1, 40)), n_relations=n_r,
        out_degree=_pick(draw, st.integers(1, max(1, n_r)), st.integers(-1, 9)),
        ood_fraction=_pick(draw, st.floats(0.01, 0.6), WILD_FRACTIONS),
        phi=_pick(draw, st.floats(0.0, 6.0), WILD_PHI), seed=draw(st.integers(-1, 2**40)),
        test_fraction=_pick(draw, st.floats(0.0, 0.5), WILD_FRACTIONS),
        probe_size=_pick(draw, st.integers(1, 60), st.integers(-1, 60)),
    )


@st.composite
def comparison_args(draw, complex_task: bool = False):
    out = dict(
        n_entities=_pick(draw, st.integers(4, 24), st.integers(-1, 24)),
        n_attributes=_pick(draw, st.integers(1, 3), st.integers(-1, 3)),
        n_values=_pick(draw, st.integers(2, 6), st.integers(-1, 6)),
        ood_fraction=_pick(draw, st.floats(0.01, 0.6), WILD_FRACTIONS), seed=draw(st.integers(-1, 2**40)),
        probe_size=_pick(draw, st.integers(1, 200), st.integers(-1, 60)),
    )
    if complex_task:
        out.update(
            id_id_fraction=_pick(draw, st.floats(0.01, 0.9), WILD_FRACTIONS),
            id_ood_fraction=_pick(draw, st.floats(0.01, 0.9), WILD_FRACTIONS),
            n_test_per_label=_pick(draw, st.integers(1, 20), st.integers(-1, 20)),
        )
    else:
        out.update(phi=_pick(draw, st.floats(0.0, 6.0), WILD_PHI),
                   test_fraction=_pick(draw, st.floats(0.0, 0.5), WILD_FRACTIONS))
    return out


def _check_dataset(ds) -> None:
    """Structural validity, and a paper-format round trip (the loader re-derives every fact)."""
    n_vocab = len(ds.vocab)
    assert set(ds.splits) == set(SPLITS)
    for name, s in ds.splits.items():
        assert s.tokens.ndim == 2 and len(s.target_pos) == len(s) == len(s.atomic)
        if len(s):
            assert s.tokens.min() >= 0 and s.tokens.max() < n_vocab, name
            rows = np.arange(len(s))
            assert (s.tokens[rows, s.target_pos + 2] == ds.vocab[END]).all(), name
    assert len(ds.splits["train"]) > 0
    with tempfile.TemporaryDirectory() as d:
        save_paper_format(ds, d)
        assert load_paper_format(d).content_hash() == ds.content_hash()


def _valid_or_value_error(make, kwargs) -> None:
    try:
        ds = make(**kwargs)
    except ValueError as e:
        assert str(e), "a ValueError must say what is wrong"
        return
    _check_dataset(ds)


@SETTINGS
@given(kwargs=composition_args())
def test_composition_generator(kwargs):
    _valid_or_value_error(composition, kwargs)


@SETTINGS
@given(kwargs=comparison_args())
def test_comparison_generator(kwargs):
    _valid_or_value_error(comparison, kwargs)


@SETTINGS
@given(kwargs=comparison_args(complex_task=True))
def test_complex_reasoning_generator(kwargs):
    _valid_or_value_error(complex_reasoning, kwargs)


# --------------------------------------------------------------------------- analysis inputs

D_VOCAB, N_CTX, N_LAYERS = 13, 4, 2


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(n_layers=N_LAYERS, d_model=16, n_heads=2, d_mlp=32), D_VOCAB, N_CTX, seed=0).eval()


@st.composite
def token_inputs(draw):
    """(tokens as given, whether they are valid ids for the model, batch, length)."""
    batch = draw(st.integers(0, 3))
    length = draw(st.integers(0, N_CTX + 2))
    ids = st.integers(0, D_VOCAB - 1) if draw(st.booleans()) else st.integers(-3, D_VOCAB + 3)
    rows = [[draw(ids) for _ in range(length)] for _ in range(batch)]
    form = draw(st.sampled_from(["tensor", "list", "numpy", "float", "ragged"]))
    ok = 1 <= length <= N_CTX and all(0 <= t < D_VOCAB for r in rows for t in r)
    if form == "float":
        return torch.tensor(rows, dtype=torch.float32).reshape(batch, length), False, batch, length
    if form == "ragged" and batch >= 2:
        rows[-1] = rows[-1] + [0]
        return rows, False, batch, length
    if form == "list":  # an empty list has no shape [0, length]
        return rows, ok and batch > 0, batch, length
    arr = np.array(rows, dtype=np.int64).reshape(batch, length)
    return (arr if form == "numpy" else torch.from_numpy(arr)), ok, batch, length


def _expect(call, valid: bool):
    """Run ``call``: a valid input must succeed; an invalid one must raise ValueError."""
    if valid:
        return call()
    with pytest.raises(ValueError):
        call()
    return None


@SETTINGS
@given(inp=token_inputs(), pos=st.integers(-1, N_CTX + 1), tok=st.integers(-1, D_VOCAB),
       allowed=st.none() | st.lists(st.integers(-1, D_VOCAB), min_size=1, max_size=4))
def test_logit_lens_inputs(model, inp, pos, tok, allowed):
    tokens, ok, batch, length = inp
    allowed_ok = allowed is None or all(0 <= a < D_VOCAB for a in allowed)
    target_ok = batch == 0 or (0 <= pos < length and 0 <= tok < D_VOCAB and (allowed is None or tok in allowed))
    res = _expect(lambda: logit_lens(model, tokens, [LensTarget("t", pos, tok, allowed)]), ok and allowed_ok and target_ok)
    if res is not None:
        ranks = res.ranks["t"]
        assert ranks.shape == (N_LAYERS + 1, batch) and res.hook_names == resid_hook_names(N_LAYERS)
        assert batch == 0 or (ranks.min() >= 1 and ranks.max() <= D_VOCAB)


@SETTINGS
@given(inp=token_inputs(), pos=st.integers(-1, N_CTX + 1), tok=st.integers(-1, D_VOCAB),
       base=st.none() | st.integers(-1, D_VOCAB))
def test_direct_logit_attribution_inputs(model, inp, pos, tok, base):
    tokens, ok, batch, length = inp
    ids_ok = 0 <= tok < D_VOCAB and (base is None or 0 <= base < D_VOCAB)
    valid = ok and batch >= 1 and 0 <= pos < length and ids_ok
    res = _expect(lambda: direct_logit_attribution(model, tokens, pos, tok, base, per_head=True), valid)
    if res is not None:
        torch.testing.assert_close(res.values.sum(0) + res.bias, res.logit, atol=1e-4, rtol=1e-4)


@SETTINGS
@given(inp=token_inputs(), site_pos=st.integers(-1, N_CTX + 1), hook=st.sampled_from(resid_hook_names(N_LAYERS)),
       answers=st.lists(st.integers(-1, D_VOCAB), min_size=2, max_size=2))
def test_patching_and_tracing_inputs(model, inp, site_pos, hook, answers):
    tokens, ok, batch, length = inp
    answers_ok = all(0 <= a < D_VOCAB for a in answers)
    site_ok = 0 <= site_pos < length
    valid = ok and site_ok and (batch == 0 or answers_ok)
    ans = torch.tensor([answers] * batch, dtype=torch.long).reshape(batch, 2)

    def patch():
        t = tokens if not isinstance(tokens, torch.Tensor) else tokens.clone()
        return run_patches(model, tokens, t, [(Site(hook, site_pos),)], answer_ids=ans)

    out = _expect(patch, valid)
    if out is not None:
        assert out.top1.shape == (1, batch) and out.logits.shape == (1, batch, 2)
    if not ok or not isinstance(tokens, torch.Tensor):
        return
    clean = tokens.long()
    cf = Counterfactuals(
        perturbation="x", position=min(max(site_pos, 0), length - 1), clean=clean, corrupt=clean.flip(0),
        answer=ans[:, 0], cf_answer=ans[:, 1], example_index=torch.arange(batch), roles={},
    )
    res = _expect(lambda: trace(model, cf, site="resid"), batch == 0 or answers_ok)
    if res is not None:
        assert res.strength.shape == (1, N_LAYERS + 1, length)
