"""The training engine: schedule, loss, resume equality, run directory, plain-TL loading."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from grokscope.runs.config import TrainConfig
from grokscope.runs.presets import preset
from grokscope.runs.run import Run, RunError
from grokscope.training.loop import (
    GradFilter,
    TrainData,
    checkpoint_steps,
    evaluate,
    target_loss,
    train,
    train_new,
)


def _micro(**train_kw):
    """A run small enough to train a few dozen steps in about a second."""
    cfg = preset("composition-tiny").override({
        "task.n_entities": "30", "task.n_relations": "6", "task.out_degree": "4", "task.phi": "3",
        "model.n_layers": "2", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
        "train.batch_size": "32", "train.max_steps": "40", "train.eval_every": "10",
        "train.dense_every": "10", "train.dense_until": "20", "train.log_per_decade": "1",
        "train.warmup_steps": "5", "train.eval_size": "50",
    })
    return cfg.override({f"train.{k}": str(v) for k, v in train_kw.items()})


def test_checkpoint_schedule():
    tc = TrainConfig(max_steps=100_000, eval_every=500, dense_every=1000, dense_until=5000, log_per_decade=4)
    steps = checkpoint_steps(tc)
    assert steps[:7] == [0, 1000, 2000, 3000, 4000, 5000, 9000]
    assert steps[-1] == 100_000 and all(s % 500 == 0 for s in steps)
    assert len(steps) == len(set(steps))


def test_target_loss_matches_hand_computation():
    logits = torch.randn(2, 5, 7)
    tokens = torch.tensor([[1, 2, 3, 4, 4], [1, 2, 5, 6, 4]])
    pos = torch.tensor([1, 2])
    loss, count = target_loss(logits, tokens, pos)
    lp = torch.log_softmax(logits, -1)
    want = -(lp[0, 1, 3] + lp[0, 2, 4] + lp[1, 2, 6] + lp[1, 3, 4])
    assert count.item() == 4
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_grad_filter_matches_closed_form_ema():
    """Grokfast EMA: after gradients g1..gk the filtered gradient is
    gk + lamb * (alpha^(k-1) g1 + sum_{i>=2} (1 - alpha) alpha^(k-i) gi)."""
    alpha, lamb = 0.9, 2.0
    gs = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    p = torch.nn.Parameter(torch.zeros(3))
    f = GradFilter(alpha, lamb)
    for k in range(1, 6):
        p.grad = gs[k - 1].clone()
        f.apply([("w", p)])
        weights = [alpha ** (k - 1)] + [(1 - alpha) * alpha ** (k - i) for i in range(2, k + 1)]
        ema = sum(w * g for w, g in zip(weights, gs[:k]))
        torch.testing.assert_close(p.grad, gs[k - 1] + lamb * ema)
    q = torch.nn.Parameter(torch.zeros(1))  # no gradient: skipped, no state
    f.apply([("q", q)])
    assert set(f.state_tensors()) == {"w::grad_ema"}


def test_configs_without_the_new_keys_still_load(tmp_path):
    """Runs written before dropout and the gradient filter existed open with both off."""
    from grokscope.runs.config import RunConfig

    doc = preset("composition-small").override({"train.grad_filter": "ema", "model.dropout": "0.1"}).to_dict()
    for key in ("grad_filter", "grad_filter_alpha", "grad_filter_lambda"):
        del doc["train"][key]
    del doc["model"]["dropout"]
    cfg = RunConfig.from_dict(doc)
    assert cfg.train.grad_filter is None and cfg.model.dropout == 0.0
    with pytest.raises(ValueError, match="grad_filter must be"):
        preset("composition-tiny").override({"train.grad_filter": "sma"})
    with pytest.raises(ValueError, match="dropout must be in"):
        preset("composition-tiny").override({"model.dropout": "1.0"})
    paper = preset("composition-paper").model
    assert paper.tie_embeddings and paper.dropout == 0.1  # the paper's GPT-2


def test_cosine_lr_against_hand_computed_values():
    from grokscope.training.loop import _lr_at

    tc = TrainConfig(lr=2e-3, warmup_steps=100, max_steps=1100, lr_decay="cosine", lr_min_ratio=0.25)
    assert _lr_at(tc, 49) == pytest.approx(2e-3 * 50 / 100)      # warmup as before
    assert _lr_at(tc, 100) == pytest.approx(2e-3)                # the peak where warmup ends
    assert _lr_at(tc, 600) == pytest.approx((2e-3 + 5e-4) / 2)   # half way down: the mean of peak and floor
    assert _lr_at(tc, 1100) == pytest.approx(5e-4) == _lr_at(tc, 5000)  # the floor, and it stays there
    assert _lr_at(TrainConfig(lr=2e-3, warmup_steps=100, max_steps=1100), 600) == 2e-3  # no decay: constant
    with pytest.raises(ValueError, match="lr_decay must be"):
        TrainConfig(lr_decay="linear")
    with pytest.raises(ValueError, match="lr_min_ratio must be"):
        TrainConfig(lr_min_ratio=1.5)


def test_batches_are_pure_functions_of_step():
    from grokscope.tasks import composition

    ds = composition(30, 6, 4, phi=3.0)
    tc = TrainConfig(batch_size=40, atomic_fraction=0.25)
    data = TrainData.from_split(ds.splits["train"], tc, seed=7, device=torch.device("cpu"))
    a, b = data.batch_indices(12), data.batch_indices(12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.batch_indices(13))
    assert ds.splits["train"].atomic[a].sum() == 10  # 25% of 40 from atomic facts


def test_grad_filter_start_leaves_earlier_steps_plain(tmp_path):
    """Before ``grad_filter_start`` a filtered run is the plain run, bit for bit; after, it is not."""
    plain = train_new(_micro(), tmp_path / "plain", quiet=True)
    late = train_new(_micro(grad_filter="ema", grad_filter_start=20), tmp_path / "late", quiet=True)
    early = train_new(_micro(grad_filter="ema"), tmp_path / "early", quiet=True)
    same = lambda a, b, step: all(  # noqa: E731
        torch.equal(x, y) for x, y in zip(a.load_model(step).state_dict().values(), b.load_model(step).state_dict().values())
    )
    assert same(plain, late, 20)
    assert not same(plain, early, 10)
    assert not same(plain, late, 40)
    with pytest.raises(ValueError, match="grad_filter_start must be"):
        _micro(grad_filter_start=-1)


@pytest.mark.parametrize(
    "extra",
    [{}, {"train.grad_filter": "ema", "model.dropout": "0.1"},
     {"train.grad_filter": "ema", "train.grad_filter_start": "25"},
     {"train.lr_decay": "cosine", "train.lr_min_ratio": "0.1"}],
    ids=["plain", "filter+dropout", "filter-from-step-25", "cosine-lr"],
)
def test_resume_equals_uninterrupted(tmp_path, extra):
    cfg = _micro().override(extra)
    full = train_new(cfg, tmp_path / "full", quiet=True)
    part = Run.create(tmp_path / "part", cfg, full.dataset())
    train(part, quiet=True, max_steps=17)  # stops between checkpoints: saves resume state at 17
    assert 17 in part.steps()
    train(Run.open(tmp_path / "part"), quiet=True)
    a = full.load_model().state_dict()
    b = Run.open(tmp_path / "part").load_model().state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda ms: [{k: v for k, v in m.items() if k != "wall_time"} for m in ms]  # noqa: E731
    assert strip(full.metrics()) == strip(Run.open(tmp_path / "part").metrics())
    # Only the latest checkpoint keeps the optimizer state.
    with_opt = [s for s in full.steps() if (full.checkpoint_path(s) / "optimizer.safetensors").exists()]
    assert with_opt == [40]
    if "train.lr_decay" in extra:  # the resumed half stayed on the curve set by max_steps, not by where it stopped
        lrs = {m["step"]: m["lr"] for m in Run.open(tmp_path / "part").metrics()}
        lr = cfg.train.lr
        assert lrs[20] == pytest.approx(lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 35))))
        assert lrs[40] == pytest.approx(0.1 * lr)
    elif extra:  # the filter's moving average travels with the optimizer state
        from grokscope.runs.run import read_safetensors

        opt = read_safetensors(full.checkpoint_path(40) / "optimizer.safetensors")
        assert any(k.endswith("::grad_ema") for k in opt)
        # ... and it matters: the same run without the filter or dropout ends elsewhere.
        plain = train_new(_micro(), tmp_path / "plain", quiet=True).load_model().state_dict()
        assert not torch.equal(plain["embed.weight"], a["embed.weight"])


def test_training_from_scratch_drops_records_of_an_attempt_killed_before_its_first_checkpoint(tmp_path):
    cfg = _micro(max_steps=10)
    full = train_new(cfg, tmp_path / "full", quiet=True)
    run = Run.create(tmp_path / "again", cfg, full.dataset())
    (run.path / "metrics.jsonl").write_text('{"step": 0, "acc": {}}\n{"step": 10, "acc": {}}\n')  # no checkpoint
    train(run, quiet=True)
    assert [m["step"] for m in Run.open(run.path).metrics()] == [m["step"] for m in full.metrics()] == [0, 10]


def test_run_directory_is_self_describing(tmp_path):
    run = train_new(_micro(), tmp_path / "r", quiet=True)
    doc = json.loads((run.path / "config.json").read_text())
    assert doc["schema_version"] == 1 and doc["run"]["name"] == "composition-tiny"
    assert doc["data"]["content_hash"] == run.dataset().content_hash()
    assert run.steps() == [0, 10, 20, 40]
    meta = run.checkpoint_meta(20)
    assert meta["step"] == 20 and "test_inferred_iid" in meta["metrics"]["acc"]
    # Recorded accuracies are re-evaluated exactly from the checkpoint.
    from grokscope.training.loop import eval_subsets

    res = evaluate(run.load_model(40), eval_subsets(run.dataset(), 50, run.config.seed))
    assert res["acc"] == run.metrics()[-1]["acc"]


def test_plain_transformer_lens_loads_checkpoint(tmp_path):
    """Load a checkpoint with TransformerLens + safetensors only (no grokscope import)."""
    run = train_new(_micro(), tmp_path / "r", quiet=True)
    tokens = run.dataset().splits["train_inferred"].input_ids[:8]
    ours = run.load_model(40)(torch.from_numpy(tokens)).detach()
    np.save(tmp_path / "tokens.npy", tokens)
    script = f"""
import json, sys, numpy as np, torch, safetensors.torch
assert "grokscope" not in sys.modules
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
import transformer_lens.model_bridge.sources  # registers boot_native
cfg = json.load(open(r"{run.path / 'config.json'}"))["model"]
m = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg))
m.load_state_dict(safetensors.torch.load_file(r"{run.checkpoint_path(40) / 'model.safetensors'}"), strict=True)
out = m(torch.from_numpy(np.load(r"{tmp_path / 'tokens.npy'}"))).detach()
torch.save(out, r"{tmp_path / 'out.pt'}")
assert "grokscope" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(ours, theirs)


def test_run_errors(tmp_path):
    run = train_new(_micro(max_steps=10), tmp_path / "r", quiet=True)
    with pytest.raises(RunError, match="already holds a run"):
        Run.create(tmp_path / "r", run.config, run.dataset())
    with pytest.raises(RunError, match="no checkpoint at step 7"):
        run.load_model(7)
    doc = json.loads((run.path / "config.json").read_text())
    doc["schema_version"] = 99
    (run.path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(RunError, match="schema_version 99"):
        Run.open(run.path)
    with pytest.raises(RunError, match="not a grokscope run"):
        Run.open(tmp_path)


@pytest.mark.slow
def test_composition_tiny_learns(tmp_path):
    """Acceptance: the tiny preset learns its atomic facts and generalises in-distribution."""
    run = train_new(preset("composition-tiny"), tmp_path / "tiny", quiet=True)
    acc = run.metrics()[-1]["acc"]
    assert acc["id_atomic"] > 0.9
    assert acc["train_inferred"] > 0.75
    assert acc["test_inferred_iid"] > 0.25  # chance is 1/50


MICRO_CLI = [
    "task.n_entities=30", "task.n_relations=6", "task.out_degree=4", "task.phi=3",
    "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_mlp=64",
    "train.batch_size=32", "train.eval_every=10", "train.dense_every=10", "train.dense_until=20",
    "train.log_per_decade=1", "train.warmup_steps=5", "train.eval_size=50", "train.max_steps=20",
]


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch = 1 process."""
    base = [sys.executable, "-m", "grokscope.cli", "train", "--preset", "composition-tiny", "-q", *MICRO_CLI]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*base, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "grokscope.cli", "train", "--preset", "composition-tiny", "-q", *MICRO_CLI, "--out", str(tmp_path / "two")]
    res = subprocess.run(ddp, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a = Run.open(tmp_path / "one").load_model().state_dict()
    b = Run.open(tmp_path / "two").load_model().state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    la = [m["train_loss"] for m in Run.open(tmp_path / "one").metrics()[1:]]
    lb = [m["train_loss"] for m in Run.open(tmp_path / "two").metrics()[1:]]
    assert la == pytest.approx(lb, rel=1e-4)
