"""``grokscope import-hf``: HF GPT-2 checkpoints (the paper's format) -> grokscope runs.

A small ``GPT2LMHeadModel`` is saved beside a tokenizer whose vocabulary holds the task
tokens at shuffled ids among unrelated ones (as GPT-2 plus added tokens); the imported
run's logits must equal the HF model's logits at the task tokens, and nothing may be
unpickled on the way.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokscope.runs.hf_import import (
    IMPORT_FILE,
    HFImportError,
    checkpoint_step,
    import_hf,
    model_config_from_hf,
    read_token_ids,
)
from grokscope.runs.run import Run, RunError
from grokscope.tasks import composition, save_paper_format

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

GROKSCOPE = Path(sys.executable).parent / "grokscope"
FILLERS = ["[UNK]", *(f"w{i}" for i in range(9))]


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("paper") / "data"
    save_paper_format(composition(n_entities=12, n_relations=3, out_degree=3, phi=1.0, seed=0, probe_size=40), d)
    return d


def _task_tokens(task_data: Path) -> list[str]:
    return json.loads((task_data / "vocab.json").read_text())


def _save_tokenizer(d: Path, task_tokens: list[str], fmt: str, seed: int = 0) -> dict[str, int]:
    """A tokenizer with filler words and the task tokens added in shuffled order; returns its vocab."""
    added = list(task_tokens)
    random.Random(seed).shuffle(added)
    if fmt == "fast":  # tokenizer.json, as PreTrainedTokenizerFast.save_pretrained writes it
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(FILLERS)}, unk_token="[UNK]"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
        fast.add_tokens(added)
        fast.save_pretrained(d)
        return fast.get_vocab()
    # GPT2Tokenizer layout: vocab.json (base vocabulary) + added_tokens.json
    base = {w: i for i, w in enumerate(FILLERS)}
    extra = {t: len(base) + i for i, t in enumerate(added)}
    (d / "vocab.json").write_text(json.dumps(base))
    (d / "added_tokens.json").write_text(json.dumps(extra))
    return {**base, **extra}


def _save_hf(d: Path, task_data: Path, *, tie: bool, fmt: str = "fast", seed: int = 0, n_layer: int = 2):
    """Save a random GPT2LMHeadModel (and tokenizer) to ``d``; return (model, HF vocab)."""
    d.mkdir(parents=True, exist_ok=True)
    vocab = _save_tokenizer(d, _task_tokens(task_data), fmt, seed)
    cfg = transformers.GPT2Config(
        vocab_size=len(vocab) + 3, n_positions=16, n_embd=32, n_layer=n_layer, n_head=4, n_inner=64,
        tie_word_embeddings=tie, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every mapped tensor matters
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(d)
    assert (d / "model.safetensors").is_file() and not (d / "pytorch_model.bin").exists()
    return model, vocab


def _assert_logits_match(run: Run, hf_model, hf_vocab: dict[str, int], step: int) -> None:
    ds = run.dataset()
    ours = run.load_model(step)
    hf_ids = torch.tensor([hf_vocab[t] for t in ds.vocab.tokens])
    for name in ("train", "train_inferred"):
        tokens = torch.from_numpy(ds.splits[name].tokens[:32])
        assert len(tokens), name
        with torch.no_grad():
            got = ours(tokens)
            want = hf_model(hf_ids[tokens]).logits[..., hf_ids]
        assert got.shape == want.shape and want.std() > 0.1
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("tie", "fmt"), [(True, "fast"), (False, "slow")], ids=["tied-fast-tokenizer", "untied-gpt2-tokenizer"])
def test_import_matches_hf_logits(task_data, tmp_path, tie, fmt):
    hf_dir = tmp_path / "checkpoint-2500"
    hf_model, hf_vocab = _save_hf(hf_dir, task_data, tie=tie, fmt=fmt, seed=int(tie))
    assert read_token_ids(hf_dir) == hf_vocab  # the same ids the HF tokenizer gives
    run = import_hf(hf_dir, tmp_path / "run", task_data=task_data)
    assert run.steps() == [2500]  # from the checkpoint-N name
    assert run.config.model.tie_embeddings is tie and run.config.model.n_layers == 2
    assert run.data_info["n_ctx"] == 5 and run.model_config["n_ctx"] == 5
    _assert_logits_match(run, hf_model, hf_vocab, 2500)
    doc = json.loads((run.path / IMPORT_FILE).read_text())
    assert doc["token_ids"] == {t: hf_vocab[t] for t in _task_tokens(task_data)}
    if fmt == "fast":  # the HF tokenizer encodes paper-format text to exactly these ids
        fast = transformers.PreTrainedTokenizerFast.from_pretrained(hf_dir)
        text = "<e_3><r_1><r_2>"
        assert fast(text)["input_ids"] == [doc["token_ids"][t] for t in ("<e_3>", "<r_1>", "<r_2>")]


def test_cli_imports_a_series_of_checkpoints(task_data, tmp_path):
    """The authors' layout: checkpoint-N/ directories; each becomes a step of one run."""
    src = tmp_path / "composition_0.1_2"
    models = {}
    for step in (1000, 300):
        models[step] = _save_hf(src / f"checkpoint-{step}", task_data, tie=True, seed=step)
    (src / "checkpoint-1000" / "trainer_state.json").write_text(json.dumps({"global_step": 1000}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [str(GROKSCOPE), "import-hf", str(src), "--out", str(tmp_path / "run"), "--task-data", str(task_data)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "steps 300, 1000" in res.stdout
    run = Run.open(tmp_path / "run")
    assert run.steps() == [300, 1000]
    for step, (model, vocab) in models.items():  # each checkpoint read with its own tokenizer
        _assert_logits_match(run, model, vocab, step)


def test_add_recurrence_becomes_shared_layers(task_data, tmp_path):
    """The authors' add_recurrence (blocks run twice) equals sharing blocks l and l + n."""
    hf_model, vocab = _save_hf(tmp_path / "hf", task_data, tie=True)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "add_recurrence": True}))
    run = import_hf(tmp_path / "hf", tmp_path / "run", task_data=task_data, step=7)
    assert run.steps() == [7]
    assert run.config.model.n_layers == 4 and run.config.model.share_layers
    twice = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**hf_model.config.to_dict(), "n_layer": 4})).eval()
    sd = hf_model.state_dict()
    sd.update({k.replace(f"h.{i}.", f"h.{i + 2}."): v for k, v in hf_model.state_dict().items()
               for i in range(2) if f"h.{i}." in k})
    twice.load_state_dict(sd)
    _assert_logits_match(run, twice, vocab, 7)


# --------------------------------------------------------------------------- formats and refusals


class _Payload:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pytorch_model_bin_is_read_weights_only(task_data, tmp_path):
    hf_model, vocab = _save_hf(tmp_path / "hf", task_data, tie=False)
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    run = import_hf(tmp_path / "hf", tmp_path / "run", task_data=task_data)
    _assert_logits_match(run, hf_model, vocab, 0)  # no step known: 0


@pytest.mark.parametrize("where", ["pytorch_model.bin", "model.safetensors"])
def test_pickle_payload_is_refused_and_never_runs(task_data, tmp_path, where):
    _save_hf(tmp_path / "hf", task_data, tie=True)
    marker = tmp_path / "pwned"
    (tmp_path / "hf" / "model.safetensors").unlink()
    if where == "pytorch_model.bin":
        torch.save({"transformer.wte.weight": _Payload(marker)}, tmp_path / "hf" / where)
        expected = HFImportError, r"pytorch_model\.bin: refused: torch\.load\(weights_only=True\)"
    else:
        (tmp_path / "hf" / where).write_bytes(pickle.dumps({"wte.weight": _Payload(marker)}, protocol=4))
        expected = RunError, r"model\.safetensors: is a pickle"
    with pytest.raises(expected[0], match=expected[1]):
        import_hf(tmp_path / "hf", tmp_path / "run", task_data=task_data)
    assert not marker.exists()
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.import-*"))  # nothing half-made


def test_clear_errors(task_data, tmp_path):
    _save_hf(tmp_path / "hf", task_data, tie=True, fmt="slow")
    with pytest.raises(HFImportError, match="--task-data"):
        import_hf(tmp_path / "hf", tmp_path / "run")  # no data next to it
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(HFImportError, match="not empty"):
        import_hf(tmp_path / "hf", tmp_path / "taken", task_data=task_data)
    added = json.loads((tmp_path / "hf" / "added_tokens.json").read_text())
    del added["<e_5>"]
    (tmp_path / "hf" / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(HFImportError, match=r"lacks 1 task tokens.*<e_5>"):
        import_hf(tmp_path / "hf", tmp_path / "run", task_data=task_data)
    assert not (tmp_path / "run").exists()
    with pytest.raises(HFImportError, match="no_mlp"):
        model_config_from_hf({"n_embd": 32, "n_layer": 2, "n_head": 4, "no_mlp": True})
    with pytest.raises(HFImportError, match="layer_norm_epsilon"):
        model_config_from_hf({"n_embd": 32, "n_layer": 2, "n_head": 4, "layer_norm_epsilon": 1e-6})
    assert checkpoint_step(tmp_path / "hf") is None
