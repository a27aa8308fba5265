"""``grokscope discover --model DIR --prompts prompts.jsonl`` on a model that is not a grokscope run
(a local random-init HF directory): the same JSON and figure as for a run, the same numbers as the
Python call, one-line errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from hf_tiny import bridge, prompts, save

from grokscope.discovery.circuit import discover

pytestmark = pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from grokscope import cli

    monkeypatch.setattr(sys, "argv", ["grokscope", *args])
    monkeypatch.delenv("GROKSCOPE_DEBUG", raising=False)
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save("gpt2", tmp_path_factory.mktemp("hf"))


def test_cli_discover_on_a_local_hf_model_writes_the_run_json_and_figure(model_dir, tmp_path, monkeypatch, capsys):
    clean, corrupt, ans, cf = prompts(6, 7)
    lines = [json.dumps({"clean": a, "corrupt": b, "answer": x, "cf_answer": y}) for a, b, x, y in zip(clean, corrupt, ans, cf)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    out, fig = tmp_path / "d.json", tmp_path / "d.html"
    code, text, err = _cli(monkeypatch, capsys, "discover", "--model", str(model_dir), "--prompts", str(tmp_path / "p.jsonl"),
                           "--json", str(out), "--figure", str(fig), "--device", "cpu", "--method", "eap-ig", "--top", "20")
    assert code == 0, err
    assert "circuit:" in text and "blocks." in text
    doc = json.loads(out.read_text())
    for key in ("model", "step", "method", "metric", "examples", "nodes", "edges", "circuit", "curve", "shares"):
        assert key in doc, key
    assert doc["metric"] == "logit_diff" and doc["step"] is None
    assert doc["examples"]["score_pos"] == [len(p.split()) for p in clean]  # BOS + words, last real token
    assert "plotly" in fig.read_text()[:100000].lower()
    d = discover(bridge(model_dir), clean, corrupt, answer=ans, cf_answer=cf, method="eap-ig", top=20)
    assert torch.allclose(torch.tensor([e["score"] for e in doc["edges"]]), d.scores.scores, atol=1e-5)
    assert doc["circuit"]["recovered"] == pytest.approx(d.circuit.recovered, abs=1e-5)
    # without corrupt prompts: mean ablation and the log-probability
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"clean": a, "answer": x}) for a, x in zip(clean, ans)) + "\n")
    code, text, err = _cli(monkeypatch, capsys, "discover", "--model", str(model_dir), "--prompts", str(tmp_path / "m.jsonl"),
                           "--json", str(out), "--method", "eap", "--positions", "sum", "--batch-size", "2", "--top", "10")
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["corruption"]["ablation"] == "mean" and doc["metric"] == "logprob" and doc["graph"]["summed"]


def test_cli_discover_model_errors_are_one_line(model_dir, tmp_path, monkeypatch, capsys):
    p, good = tmp_path / "p.jsonl", tmp_path / "good.jsonl"
    p.write_text(json.dumps({"clean": "w1 w2", "answer": "w3"}) + "\n" + json.dumps({"clean": "w1"}) + "\n")
    good.write_text(json.dumps({"clean": "w1 w2", "answer": "w3"}) + "\n")
    for args, needle in [
        (["--model", str(model_dir)], "--model and --prompts go together"),
        (["--model", str(model_dir), "--prompts", str(p)], "line 2: needs a \"clean\" string and an \"answer\""),
        (["--model", str(tmp_path / "nothing"), "--prompts", str(good)], "no such directory"),
        ([str(tmp_path), "--model", str(model_dir), "--prompts", str(p)], "not both"),
        (["--model", str(model_dir), "--prompts", str(good), "--positions", "every"], "--positions 'every' is unknown"),
    ]:
        code, _, err = _cli(monkeypatch, capsys, "discover", *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    p.write_text(json.dumps({"clean": "w1 w2", "answer": "w3 w4"}) + "\n")
    code, _, err = _cli(monkeypatch, capsys, "discover", "--model", str(model_dir), "--prompts", str(p), "--device", "cpu")
    assert code == 2 and "is 2 tokens" in err and len(err.strip().splitlines()) == 1, err


def test_cli_discover_run_writes_the_same_figure(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    run = Path(__file__).resolve().parents[1] / "checkpoints" / "composition-small"
    fig, out = tmp_path / "run.html", tmp_path / "run.json"
    code, _, err = _cli(monkeypatch, capsys, "discover", str(run), "--examples", "12", "--method", "eap", "--top", "20",
                        "--figure", str(fig), "--json", str(out))
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert "plotly" in fig.read_text()[:100000].lower() and doc["circuit"]["size"] <= 20
