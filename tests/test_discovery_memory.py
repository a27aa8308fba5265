"""``batch_size``: examples in slices, the same numbers, memory that does not grow with the examples.

* every score, exact effect and recovered fraction is the same with ``batch_size=2`` as with
  every example held (counterfactual and mean ablation, per-position and summed graphs);
* peak memory (the process's high-water resident set, VmHWM, in a fresh interpreter) grows by less
  than 4 MB from 32 to 128 examples with ``batch_size=8``, while holding every example
  (``batch_size=None``) grows it by more than 40 MB: the measurement can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_tiny import bridge, prompts, save

from grokscope.discovery.faithfulness import recovered, select
from grokscope.discovery.inputs import encode
from grokscope.discovery.scores import exact_effects, prepare, score_edges

pytestmark = pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return bridge(save("gpt2", tmp_path_factory.mktemp("hf")))


@pytest.mark.parametrize("ablation,positions", [("counterfactual", "last"), ("mean", "last"), ("mean", "sum")])
def test_slices_give_the_same_numbers_as_holding_every_example(gpt2, ablation, positions):
    clean, corrupt, ans, cf = prompts(7, 5)
    c = encode(gpt2, clean, corrupt if ablation == "counterfactual" else None, answer=ans, cf_answer=cf, ablation=ablation)
    held = prepare(gpt2, c, positions=positions)
    sliced = prepare(gpt2, c, positions=positions, batch_size=2)
    assert sliced.clean_writers is None and len(list(sliced.chunks(gpt2))) == 4
    assert torch.allclose(held.clean_metric, sliced.clean_metric, atol=1e-5)
    assert torch.allclose(held.corrupt_metric, sliced.corrupt_metric, atol=1e-5)
    for method in ("eap", "eap-ig"):
        a, b = score_edges(gpt2, c, method, acts=held), score_edges(gpt2, c, method, acts=sliced)
        assert a.scores.abs().max() > 1e-3 and torch.allclose(a.scores, b.scores, atol=1e-5), method
    pick = a.order()[:12].tolist()
    assert torch.allclose(exact_effects(gpt2, held, pick), exact_effects(gpt2, sliced, pick), atol=1e-5)
    keep = torch.stack([select(a, k) for k in (5, 40)])
    assert torch.allclose(recovered(gpt2, held, keep)[0], recovered(gpt2, sliced, keep)[0], atol=1e-4)


SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)

def peak_mb():
    # this process's own high-water resident set (ru_maxrss would start at the parent's, inherited at exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model
from grokscope.discovery.faithfulness import recovered, select
from grokscope.discovery.scores import Corruption, prepare, score_edges

model = build_model(ModelConfig(n_layers=2, d_model=128, n_heads=4, d_mlp=128), d_vocab=50, n_ctx=32, seed=0).eval()

def run(n, batch_size):
    g = torch.Generator().manual_seed(n)
    clean = torch.randint(0, 50, (n, 32), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = (clean[:, 3] + 1) % 50
    c = Corruption(clean, corrupt, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long))
    acts = prepare(model, c, batch_size=batch_size)
    sc = score_edges(model, c, "eap-ig", ig_steps=2, acts=acts)
    recovered(model, acts, select(sc, 50))
    return peak_mb()

out = {"warm": run(32, 8), "small": run(32, 8), "large": run(128, 8), "held": run(128, None)}
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_peak_memory_does_not_grow_with_the_examples():
    root = Path(__file__).resolve().parents[1]
    # a fixed mmap threshold: every large tensor is its own mapping, returned when freed, so the
    # resident-set peak is the tensors' peak and not glibc's heap growth
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    mb = json.loads(res.stdout.strip().splitlines()[-1])
    assert mb["large"] - mb["small"] < 4, mb  # 4x the examples, sliced: the same peak
    assert mb["held"] - mb["large"] > 40, mb  # every example held: ~46 MB of writers alone
