"""Sweeps on a local Ray (2 CPUs): the same runs and table as the local pool, finished
points skipped and unfinished ones resumed on a re-run, and a killed train process or
Ray worker resumed from its last checkpoint with the very metrics of an unkilled twin.

Without ray only the one-line install error is checked. Two points that train identically (``train.max_time_s`` 1000 or 2000 s, never reached)
make the twins: a run killed and resumed must end exactly like the other one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from grokscope.runs.presets import preset
from grokscope.runs.run import Run
from grokscope.tasks import get_task
from grokscope.training.ray_backend import RayOptions
from grokscope.training.sweep import read_metrics, run_state, run_sweep
from grokscope.training.train import train, train_new

try:
    import psutil
    import ray
except ImportError:  # the tests that need a Ray skip; the missing-ray error is still checked
    ray = psutil = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'grokscope[ray]')")

PRESET = "modular-small"
MICRO = {"task.p": "11", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
         "train.batch_size": "32", "train.max_steps": "60", "train.eval_every": "10",
         "train.dense_every": "20", "train.dense_until": "60", "train.stop_iid_threshold": "none"}
LONG = {**MICRO, "train.max_steps": "2000", "train.eval_every": "50", "train.dense_every": "100",
        "train.dense_until": "2000"}
TWINS = {"train.max_time_s": ["1000", "2000"]}
A, B = "max_time_s=1000", "max_time_s=2000"


def _cli(*args: str, hide_ray: bool = False) -> subprocess.CompletedProcess:
    hide = "sys.modules['ray'] = None; " if hide_ray else ""
    code = f"import sys; {hide}from grokscope.cli import main; sys.argv = ['grokscope', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path):
    res = _cli("sweep", "--preset", PRESET, "--grid", "train.weight_decay=0.1", "--out", str(tmp_path / "s"),
               "--backend", "ray", hide_ray=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "pip install 'grokscope[ray]'" in res.stderr
    assert not (tmp_path / "s").exists()


def test_sweep_flag_errors(tmp_path):
    res = _cli("sweep", "--preset", PRESET, "--grid", "train.weight_decay=0.1", "--out", str(tmp_path / "s"),
               "--address", "auto")
    assert res.returncode == 2 and "apply to --backend ray only" in res.stderr
    res = _cli("sweep", "--preset", PRESET, "--grid", "train.weight_decay=0.1", "--out", str(tmp_path / "s"),
               "--backend", "dask")
    assert res.returncode == 2 and "is not one of: local, ray" in res.stderr


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _records(run_dir):
    """The run's evaluation records without their wall times."""
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_metrics(run_dir / "metrics.jsonl")]


def _same_summary(row):
    return {k: v for k, v in row.items() if k not in ("wall_time", "status")}


@needs_ray
def test_two_point_sweep_on_local_ray_writes_what_the_local_pool_writes(local_ray, tmp_path):
    rows = run_sweep(PRESET, TWINS, tmp_path / "ray", base_overrides=MICRO, backend="ray",
                     ray=RayOptions(cpus_per_run=1))
    assert [(r["run"], r["status"], r["final_step"]) for r in rows] == [(A, "ok", 60), (B, "ok", 60)]
    assert _records(tmp_path / "ray" / A) == _records(tmp_path / "ray" / B)  # the twins train alike
    local = run_sweep(PRESET, {"train.max_time_s": ["1000"]}, tmp_path / "local", base_overrides=MICRO)
    assert _same_summary(local[0]) == _same_summary(rows[0])
    assert _records(tmp_path / "local" / A) == _records(tmp_path / "ray" / A)
    assert sorted(p.name for p in (tmp_path / "local" / A).iterdir()) == sorted(p.name for p in (tmp_path / "ray" / A).iterdir())
    header = (tmp_path / "ray" / "sweep.csv").read_text().splitlines()[0]
    assert header == (tmp_path / "local" / "sweep.csv").read_text().splitlines()[0]
    assert "| run | train.max_time_s | groks |" in (tmp_path / "ray" / "sweep.md").read_text()


@needs_ray
def test_rerun_skips_finished_points_and_resumes_unfinished_ones(local_ray, tmp_path):
    out = tmp_path / "sw"
    train_new(preset(PRESET).override({**MICRO, "train.max_time_s": "1000"}), out / A, quiet=True)
    cfg_b = preset(PRESET).override({**MICRO, "train.max_time_s": "2000"})
    run_b = Run.create(out / B, cfg_b, get_task("modular").generate(cfg_b.task))
    train(run_b, quiet=True, max_steps=20)  # stopped at its step-20 checkpoint
    assert run_state(out / A)[0] == "done" and run_state(out / B)[:2] == ("resumable", 20)
    rows = run_sweep(PRESET, TWINS, out, base_overrides=MICRO, backend="ray")
    assert [r["status"] for r in rows] == ["ok (finished before)", "ok"]
    assert not (out / f"{A}.log").exists()  # nothing ran for the finished point
    assert run_state(out / B)[0] == "done"
    assert _records(out / B) == _records(out / A)  # resumed at 20, ends as the uninterrupted twin
    again = run_sweep(PRESET, TWINS, out, base_overrides=MICRO, backend="ray")
    assert [r["status"] for r in again] == ["ok (finished before)"] * 2


def _train_process(run_dir, deadline):
    while time.time() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            cl = p.info["cmdline"] or []
            if "train" in cl and str(run_dir) in cl:
                return p
        time.sleep(0.2)
    raise AssertionError(f"no train process for {run_dir}")


def _wait_for_step(run_dir, step, deadline):
    while time.time() < deadline:
        recs = read_metrics(run_dir / "metrics.jsonl")
        if recs and recs[-1]["step"] >= step and len(Run.open(run_dir).steps()) >= 3:
            return recs[-1]["step"]
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} did not reach step {step}")


def _sweep_in_thread(out):
    result: dict = {}

    def go():
        try:
            result["rows"] = run_sweep(PRESET, TWINS, out, base_overrides=LONG, backend="ray")
        except BaseException as e:  # surfaced by the test
            result["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, result


def _finish(t, result, out, victim_log_marker):
    t.join(timeout=540)
    assert not t.is_alive(), "the sweep did not finish"
    assert "error" not in result, result.get("error")
    rows = result["rows"]
    assert [(r["status"], r["final_step"]) for r in rows] == [("ok", 2000), ("ok", 2000)]
    steps = [r["step"] for r in read_metrics(out / A / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 2000  # no step recorded twice
    assert _records(out / A) == _records(out / B)  # the killed run lost nothing but time
    assert victim_log_marker in (out / f"{A}.log").read_text()


@needs_ray
@pytest.mark.slow
def test_killed_train_process_resumes_and_the_sweep_finishes(local_ray, tmp_path):
    out = tmp_path / "kill"
    t, result = _sweep_in_thread(out)
    deadline = time.time() + 300
    proc = _train_process((out / A).resolve(), deadline)
    at = _wait_for_step(out / A, 300, deadline)
    proc.kill()  # SIGKILL mid-run
    assert at < 2000
    _finish(t, result, out, "attempt 2")


@needs_ray
@pytest.mark.slow
def test_killed_ray_worker_is_retried_and_resumes(local_ray, tmp_path):
    out = tmp_path / "killworker"
    t, result = _sweep_in_thread(out)
    deadline = time.time() + 300
    proc = _train_process((out / A).resolve(), deadline)
    worker = proc.parent()
    _wait_for_step(out / A, 300, deadline)
    worker.kill()  # the Ray worker running the point's task
    gone, alive = psutil.wait_procs([proc], timeout=30)
    assert not alive, "the train process outlived its worker"
    _finish(t, result, out, "attempt 1")
    assert (out / f"{A}.log").read_text().count("[grokscope sweep] attempt 1") == 2  # Ray ran the task again
