"""Reliability (issue 7): no unpickling, one-line CLI errors, crash and disk-full safety.

* A checkpoint holding a pickle is refused before anything is unpickled (the payloads
  here would create a file when unpickled; the file must never appear).
* Corrupt weights, mismatched config or vocabulary, unknown schema, missing step: one
  ``error: ...`` line naming the file, exit code 2, no traceback (``--debug`` shows it).
* ``kill -9`` at random moments (also during checkpoint writes) leaves a loadable run
  that ``grokscope train --resume`` finishes with the weights of an uninterrupted run.
* A write that fails (disk full, read-only) raises a clear error; the run so far
  stays intact and resumable.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grokscope.runs.presets import preset
from grokscope.runs.run import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    Run,
    RunError,
    step_dir_name,
)
from grokscope.training.loop import train, train_new

GROKSCOPE = Path(sys.executable).parent / "grokscope"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
ENV.pop("GROKSCOPE_DEBUG", None)


class _Payload:
    """Unpickling this calls ``open(path, "w")``: it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_bytes(marker: Path, kind: str) -> bytes:
    if kind == "pickle":
        return pickle.dumps({"embed.weight": _Payload(marker)}, protocol=4)
    path = marker.with_suffix(".torchsave")
    torch.save({"embed.weight": _Payload(marker)}, path)  # zip archive, as torch.save writes
    data = path.read_bytes()
    path.unlink()
    return data


def test_payload_is_live(tmp_path):
    """The payload really creates its file when unpickled (so the tests below mean something)."""
    marker = tmp_path / "pwned"
    pickle.loads(_pickle_bytes(marker, "pickle"))
    assert marker.exists()


# --------------------------------------------------------------------------- a small run


OVERRIDES = {
    "task.n_entities": "30", "task.n_relations": "6", "task.out_degree": "4", "task.phi": "3",
    "model.n_layers": "2", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
    "train.batch_size": "32", "train.max_steps": "30", "train.eval_every": "10",
    "train.dense_every": "10", "train.dense_until": "30", "train.log_per_decade": "1",
    "train.warmup_steps": "5", "train.eval_size": "50",
}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Run:
    """An uninterrupted 30-step run with checkpoints at 0, 10, 20, 30."""
    return train_new(preset("composition-tiny").override(OVERRIDES), tmp_path_factory.mktemp("full") / "run", quiet=True)


@pytest.fixture
def run_copy(full_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(full_run.path, dst)
    return dst


def _assert_same_weights(a: Run, b: Run) -> None:
    sa, sb = a.load_model().state_dict(), b.load_model().state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_as_model_safetensors_is_refused(run_copy, tmp_path, kind):
    marker = tmp_path / "pwned"
    (run_copy / CHECKPOINTS_DIR / step_dir_name(10) / MODEL_FILE).write_bytes(_pickle_bytes(marker, kind))
    run = Run.open(run_copy)
    with pytest.raises(RunError, match=r"model\.safetensors: is a pickle.*never unpickles"):
        run.load_model(10)
    assert not marker.exists()


@pytest.mark.parametrize("only_pickle", [False, True], ids=["beside-weights", "instead-of-weights"])
def test_pickle_file_in_checkpoint_dir_is_refused(run_copy, tmp_path, only_pickle):
    marker = tmp_path / "pwned"
    ck = run_copy / CHECKPOINTS_DIR / step_dir_name(20)
    if only_pickle:
        (ck / MODEL_FILE).unlink()
    (ck / "model.pt").write_bytes(_pickle_bytes(marker, "torch.save"))
    run = Run.open(run_copy)
    with pytest.raises(RunError, match=r"step_00000020/model\.pt: a pickle file.*refused.*Delete it"):
        run.load_model(20)
    assert not marker.exists()
    run.load_model(10)  # other checkpoints are unaffected


# --------------------------------------------------------------------------- CLI errors


def _damage(run: Path, kind: str, tmp_path: Path) -> tuple[str, str]:
    """Break ``run`` one way; return (the path the error must name, a word of advice it must hold)."""
    ck = run / CHECKPOINTS_DIR / step_dir_name(20)
    weights = ck / MODEL_FILE
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
        return str(weights), "restore"
    if kind == "garbage":
        weights.write_bytes(b"\x00\x01 not a safetensors file" * 10)
        return str(weights), "restore"
    if kind == "pickle":
        weights.write_bytes(_pickle_bytes(tmp_path / "pwned", "torch.save"))
        return str(weights), "never unpickles"
    doc = json.loads((run / CONFIG_FILE).read_text())
    if kind == "config-shape":
        # run.model, the architecture's one source, no longer matches the TransformerLens
        # section written from it (nor the weights): refused when the run is opened
        doc["run"]["model"]["d_mlp"] = 128
        (run / CONFIG_FILE).write_text(json.dumps(doc))
        return str(run / CONFIG_FILE), "(run.model gives 128); restore"
    if kind == "schema":
        doc["schema_version"] = 99
        (run / CONFIG_FILE).write_text(json.dumps(doc))
        return str(run / CONFIG_FILE), "use a matching grokscope"
    if kind == "vocab":
        vocab = json.loads((run / "data" / "vocab.json").read_text())
        (run / "data" / "vocab.json").write_text(json.dumps([*vocab, "<r_6>"]))
        return str(run / "data" / "vocab.json"), "restore"
    raise AssertionError(kind)


def _main_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run ``grokscope.cli.main`` (the console entry point) here: exit code and stderr."""
    from grokscope import cli

    monkeypatch.setattr(sys, "argv", ["grokscope", *args])
    monkeypatch.delenv("GROKSCOPE_DEBUG", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["truncated", "garbage", "pickle", "config-shape", "vocab", "schema", "missing-step"])
def test_eval_errors_are_one_line(run_copy, tmp_path, monkeypatch, capsys, kind):
    """Every kind of damage, through the CLI's entry point (in process: no import cost)."""
    if kind == "missing-step":
        names, advice, step = str(run_copy), "--step", "7"
    else:
        (names, advice), step = _damage(run_copy, kind, tmp_path), "20"
    code, err = _main_in_process(monkeypatch, capsys, "eval", str(run_copy), "--step", step)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0] and advice in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()


def test_cli_subprocess_one_line_exit_2_and_debug_traceback(full_run, tmp_path):
    """The real ``grokscope`` executable: one line and exit 2; ``--debug`` shows the traceback."""
    runs = {}
    for name in ("truncated", "debug"):
        runs[name] = tmp_path / name
        shutil.copytree(full_run.path, runs[name])
        _damage(runs[name], "truncated" if name == "debug" else name, tmp_path / name)
    procs = {
        name: subprocess.Popen(
            [str(GROKSCOPE), *(["--debug"] if name == "debug" else []), "eval", str(path), "--step", "20"],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, path in runs.items()
    }
    out = {name: p.communicate(timeout=120) for name, p in procs.items()}
    err = out["truncated"][1]
    assert procs["truncated"].returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert str(runs["truncated"] / CHECKPOINTS_DIR / step_dir_name(20) / MODEL_FILE) in err
    assert "Traceback" not in err
    err = out["debug"][1]
    assert procs["debug"].returncode != 0 and "Traceback" in err and "RunError" in err


# --------------------------------------------------------------------------- write failures


def _failing_replace(monkeypatch, err: int, from_step: int) -> None:
    """os.replace raises OSError(err) when it moves checkpoint ``from_step`` or later into place."""
    real = os.replace

    def fake(src, dst, *a, **kw):
        name = Path(dst).name
        if name.startswith("step_") and int(name[5:]) >= from_step:
            raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", fake)


def _failing_metrics(monkeypatch, err: int, allowed: int) -> None:
    """``open`` in grokscope.training.loop raises OSError(err) after ``allowed`` metrics appends."""
    import builtins

    calls = {"n": 0}

    def fake(file, mode="r", *a, **kw):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            calls["n"] += 1
            if calls["n"] > allowed:
                raise OSError(err, os.strerror(err), str(file))
        return builtins.open(file, mode, *a, **kw)

    monkeypatch.setattr("grokscope.training.loop.open", fake, raising=False)


@pytest.mark.parametrize(
    ("err", "where"),
    [(errno.ENOSPC, "checkpoint"), (errno.EROFS, "checkpoint"), (errno.ENOSPC, "metrics")],
    ids=["disk-full-checkpoint", "read-only-checkpoint", "disk-full-metrics"],
)
def test_write_failure_is_clear_and_keeps_the_run(full_run, tmp_path, monkeypatch, err, where):
    path = tmp_path / "run"
    run = Run.create(path, full_run.config, full_run.dataset())
    with monkeypatch.context() as m:
        if where == "checkpoint":
            _failing_replace(m, err, from_step=20)
        else:
            _failing_metrics(m, err, allowed=2)  # evaluations at 0 and 10 succeed, 20 fails
        with pytest.raises(RunError) as info:
            train(run, quiet=True)
    msg = str(info.value)
    assert os.strerror(err) in msg and f"grokscope train --resume {path}" in msg
    assert ("step_00000020" if where == "checkpoint" else "metrics.jsonl") in msg
    reopened = Run.open(path)
    assert reopened.steps() == [0, 10]
    reopened.load_model(10)
    assert not [p for p in (path / CHECKPOINTS_DIR).iterdir() if p.name.startswith(".")]  # no half-written dirs
    train(Run.open(path), quiet=True)  # space is back: resume finishes the run exactly
    _assert_same_weights(full_run, Run.open(path))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_directory(full_run, tmp_path):
    path = tmp_path / "run"
    run = Run.create(path, full_run.config, full_run.dataset())
    (path / CHECKPOINTS_DIR).chmod(0o555)
    try:
        with pytest.raises(RunError, match="could not write"):
            train(run, quiet=True)
    finally:
        (path / CHECKPOINTS_DIR).chmod(0o755)
    assert Run.open(path).steps() == []


# --------------------------------------------------------------------------- kill -9


KILL_OVERRIDES = [
    "model.d_model=32", "model.n_layers=2", "train.batch_size=32", "train.max_steps=120",
    "train.eval_every=10", "train.dense_every=10", "train.dense_until=120", "task.n_entities=30",
    "task.n_relations=6", "task.out_degree=4", "task.phi=3", "train.eval_size=50",
]


def _kill_when(proc: subprocess.Popen, ck_dir: Path, mode: str, delay: float, deadline: float) -> bool:
    """SIGKILL ``proc``: as a checkpoint is being written (``mode="write"``) or ``delay``
    seconds after its first new checkpoint (``"random"``). Returns True if it was killed
    (False: it finished first)."""
    def listing() -> set[str]:
        try:
            return set(os.listdir(ck_dir))
        except FileNotFoundError:
            return set()

    before = {n for n in listing() if n.startswith("step_")}
    armed_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        names = listing()
        if mode == "write" and before and any(n.endswith(f".tmp-{proc.pid}") for n in names):
            proc.send_signal(signal.SIGKILL)
            break
        if mode == "random":
            if armed_at is None and {n for n in names if n.startswith("step_")} - before:
                armed_at = time.monotonic()
            if armed_at is not None and time.monotonic() - armed_at >= delay:
                proc.send_signal(signal.SIGKILL)
                break
        before = before or {n for n in names if n.startswith("step_")}
        time.sleep(0.0005)
    proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    rng = random.Random(7)
    path = tmp_path / "run"
    start = time.monotonic()
    first = [str(GROKSCOPE), "train", "--preset", "composition-tiny", "--out", str(path), "-q", *KILL_OVERRIDES]
    again = [str(GROKSCOPE), "train", "--resume", str(path), "-q"]
    plan = ["write", "random", "write"]
    kills, mid_write = 0, 0
    for i, mode in enumerate(plan):
        proc = subprocess.Popen(first if i == 0 else again, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        killed = _kill_when(proc, path / CHECKPOINTS_DIR, mode, rng.uniform(0.0, 1.5), start + 150)
        if not killed:
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        kills += 1
        mid_write += any(n.endswith(f".tmp-{proc.pid}") for n in os.listdir(path / CHECKPOINTS_DIR))
        run = Run.open(path)  # loadable after every kill
        run.load_model(run.steps()[-1])
    else:
        res = subprocess.run(again, env=ENV, capture_output=True, text=True, timeout=150)
        assert res.returncode == 0, res.stderr
    assert kills >= 3 and mid_write >= 1, (kills, mid_write)

    resumed = Run.open(path)
    cfg = preset("composition-tiny").override(dict(o.split("=") for o in KILL_OVERRIDES))
    assert resumed.config == cfg
    reference = train_new(cfg, tmp_path / "reference", quiet=True)
    assert resumed.steps() == reference.steps() and resumed.steps()[-1] == 120
    _assert_same_weights(reference, resumed)
    strip = lambda ms: [m["step"] for m in ms]  # noqa: E731
    assert strip(resumed.metrics()) == strip(reference.metrics())
