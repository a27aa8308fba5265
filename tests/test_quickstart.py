"""The ``quickstart`` preset (issue 21, item 6): its fields parse and round-trip; no training here
(the measured runs are in the commit message: test ID >= 0.95 at step 2,150-2,500 on one thread)."""

from __future__ import annotations

from grokscope.runs.config import RunConfig
from grokscope.runs.presets import PRESET_NAMES, preset
from grokscope.tasks import ModularConfig
from grokscope.training.setup import checkpoint_steps


def test_quickstart_fields_parse_and_round_trip():
    cfg = preset("quickstart")
    assert "quickstart" in PRESET_NAMES
    assert cfg.name == "quickstart"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.task, ModularConfig)
    assert (cfg.task.p, cfg.task.train_fraction, cfg.task.n_train) == (59, 0.4, 1392)
    m = cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.act_fn, m.normalization_type, m.init_range) == (
        1, 64, 4, 256, "relu", None, 0.2)
    t = cfg.train
    assert (t.lr, t.betas, t.weight_decay, t.batch_size, t.grad_clip) == (3e-3, (0.9, 0.98), 0.4, 256, 0.0)
    assert t.max_time_s == 170.0 and t.stop_iid_threshold == 0.99 and t.stop_patience == 4
    # overrides as the CLI passes them still parse against the preset's fields
    assert cfg.override({"train.weight_decay": "0.5", "task.p": "61"}).task.p == 61


def test_quickstart_checkpoints_every_evaluation_through_the_transition():
    t = preset("quickstart").train
    steps = checkpoint_steps(t)
    # train saturates by ~350 and test ID reaches 0.95 by ~2,500 in the measured runs:
    # every evaluation step in that window is a checkpoint
    window = [s for s in steps if 300 <= s <= 2600]
    assert window == list(range(300, 2601, t.eval_every))
    assert steps[-1] == t.max_steps and len(steps) < 100  # a run that never groks stays small
