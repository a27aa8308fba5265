"""Hugging Face checkpoint directories: finding checkpoints and task data, reading configs, token ids and weights (safetensors; pickles only with weights_only)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from grokscope.runs.config import (
    ModelConfig,
)
from grokscope.runs.run import read_safetensors
from grokscope.tasks.paper_format import SPLIT_FILES

if TYPE_CHECKING:

    pass


HF_CONFIG_FILE = "config.json"
HF_SAFETENSORS_FILE = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_PICKLE_FILE = "pytorch_model.bin"
HF_TRAINER_STATE = "trainer_state.json"
IMPORT_FILE = "import.json"
"""Written into the run directory: where every checkpoint came from and the token map."""

_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_UNSUPPORTED_FLAGS = ("no_ln", "no_mlp", "share_mlp", "add_memory", "re_embed", "relation_mean_shift")
"""Switches of the authors' modified GPT-2 that change the architecture beyond what
grokscope's model expresses; a checkpoint with any of them on is refused."""
_TL_LN_EPS = 1e-5
_MIN_TORCH_WEIGHTS_ONLY = (2, 6)
"""torch before 2.6 could run code through ``torch.load(weights_only=True)`` (CVE-2025-32434)."""


class HFImportError(ValueError):
    """A HuggingFace checkpoint that cannot be imported; the message says why."""


@dataclass(frozen=True)
class HFCheckpoint:
    """One HF checkpoint directory and its training step (None when unknown)."""

    path: Path
    step: int | None


# --------------------------------------------------------------------------- finding checkpoints


def checkpoint_step(directory: str | os.PathLike[str]) -> int | None:
    """The training step of an HF checkpoint directory, or None when unknown.

    ``trainer_state.json``'s ``global_step`` if present, else the N of a
    ``checkpoint-N`` directory name.

    Example:
        >>> checkpoint_step("/nonexistent/checkpoint-40000")
        40000
    """
    d = Path(directory)
    state = d / HF_TRAINER_STATE
    if state.is_file():
        try:
            step = json.loads(state.read_text()).get("global_step")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            step = None
        if isinstance(step, int) and step >= 0:
            return step
    m = _CHECKPOINT_DIR_RE.match(d.name)
    return int(m.group(1)) if m else None


def find_checkpoints(hf_dir: str | os.PathLike[str]) -> list[HFCheckpoint]:
    """The checkpoints under ``hf_dir``: itself if it holds ``config.json``, else its
    ``checkpoint-N/`` subdirectories (ascending step).

    Raises:
        HFImportError: no such directory, or no checkpoint in it.
    """
    d = Path(hf_dir)
    if not d.is_dir():
        raise HFImportError(f"{d}: no such directory; give a HuggingFace model directory")
    if (d / HF_CONFIG_FILE).is_file():
        return [HFCheckpoint(d, checkpoint_step(d))]
    found = [
        HFCheckpoint(p, checkpoint_step(p))
        for p in d.iterdir()
        if p.is_dir() and _CHECKPOINT_DIR_RE.match(p.name) and (p / HF_CONFIG_FILE).is_file()
    ]
    if not found:
        raise HFImportError(
            f"{d}: neither {HF_CONFIG_FILE} nor checkpoint-N/ subdirectories holding one; "
            "give a HuggingFace model directory (save_pretrained output)"
        )
    return sorted(found, key=lambda c: (c.step is None, c.step or 0, c.path.name))


def find_task_data(hf_dir: str | os.PathLike[str]) -> Path:
    """A paper-format data directory next to an HF checkpoint (itself or its parents).

    Raises:
        HFImportError: none found (pass ``task_data`` / ``--task-data``).
    """
    d = Path(hf_dir).resolve()
    for cand in (d, d / "data", d.parent, d.parent / "data"):
        vocab = cand / "vocab.json"
        if all(cand.joinpath(f).is_file() or cand.joinpath(f + ".gz").is_file() for f in SPLIT_FILES) and vocab.is_file():
            try:
                if isinstance(json.loads(vocab.read_text()), list):  # HF's vocab.json is a dict
                    return cand
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    raise HFImportError(
        f"{hf_dir}: no task data in the paper's format (train/valid/test/vocab.json) next to it; "
        "give the data directory the model was trained on with --task-data DIR"
    )


# --------------------------------------------------------------------------- reading HF files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HFImportError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFImportError(f"{path}: not valid JSON ({e}); re-download the checkpoint") from None


def read_hf_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a GPT-2 checkpoint.

    Raises:
        HFImportError: missing/invalid, or not a GPT-2 config.
    """
    path = Path(directory) / HF_CONFIG_FILE
    cfg = _read_json(path)
    if not isinstance(cfg, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "gpt2" and "GPT2LMHeadModel" not in archs:
        raise HFImportError(
            f"{path}: model_type {cfg.get('model_type')!r} (architectures {archs}); only GPT-2 "
            "(GPT2LMHeadModel) checkpoints can be imported"
        )
    return cfg


def model_config_from_hf(cfg: dict[str, Any], where: str = HF_CONFIG_FILE) -> ModelConfig:
    """The :class:`ModelConfig` of a GPT-2 ``config.json`` dict.

    ``add_recurrence`` (blocks run twice) becomes ``share_layers`` with ``2 * n_layer``.

    Raises:
        HFImportError: a setting grokscope's model cannot express.

    Example:
        >>> model_config_from_hf({"n_embd": 64, "n_layer": 2, "n_head": 4}).d_mlp
        256
    """
    on = [k for k in _UNSUPPORTED_FLAGS if cfg.get(k)]
    if on:
        raise HFImportError(f"{where}: uses {', '.join(on)}, which grokscope's model does not implement")
    act = cfg.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise HFImportError(f"{where}: activation_function {act!r} is not supported ({', '.join(_ACTIVATIONS)})")
    eps = float(cfg.get("layer_norm_epsilon", 1e-5))
    if not math.isclose(eps, _TL_LN_EPS, rel_tol=1e-6):
        raise HFImportError(f"{where}: layer_norm_epsilon={eps}; grokscope's model uses {_TL_LN_EPS}")
    if cfg.get("scale_attn_weights", True) is False or cfg.get("scale_attn_by_inverse_layer_idx"):
        raise HFImportError(f"{where}: non-standard attention scaling is not supported")
    if cfg.get("add_cross_attention"):
        raise HFImportError(f"{where}: cross-attention is not supported")
    try:
        d_model, n_layer, n_head = int(cfg["n_embd"]), int(cfg["n_layer"]), int(cfg["n_head"])
    except (KeyError, TypeError, ValueError) as e:
        raise HFImportError(f"{where}: needs integer n_embd, n_layer and n_head ({e})") from None
    recur = bool(cfg.get("add_recurrence"))
    try:
        return ModelConfig(
            n_layers=2 * n_layer if recur else n_layer,
            d_model=d_model,
            n_heads=n_head,
            d_mlp=int(cfg.get("n_inner") or 4 * d_model),
            act_fn=_ACTIVATIONS[act],
            normalization_type="LN",
            positional_embedding_type="standard",
            share_layers=recur,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            init_range=float(cfg.get("initializer_range", 0.02)),
        )
    except ValueError as e:
        raise HFImportError(f"{where}: {e}") from None


def read_token_ids(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Token string -> id of an HF tokenizer, from its JSON files (no tokenizer code runs).

    Reads ``tokenizer.json`` (fast tokenizers: the model's vocab and ``added_tokens``),
    else ``vocab.json`` + ``added_tokens.json`` (GPT2Tokenizer), and the
    ``added_tokens_decoder`` of ``tokenizer_config.json``; all that exist are merged.

    Raises:
        HFImportError: no tokenizer files, or files that give one token two ids.
    """
    d = Path(directory)
    pairs: list[tuple[str, int, str]] = []
    fast = d / "tokenizer.json"
    if fast.is_file():
        doc = _read_json(fast)
        vocab = (doc.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            pairs += [(t, int(i), fast.name) for t, i in vocab.items()]
        elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
            pairs += [(row[0], i, fast.name) for i, row in enumerate(vocab)]
        pairs += [(a["content"], int(a["id"]), fast.name) for a in doc.get("added_tokens") or []]
    slow = d / "vocab.json"
    if slow.is_file() and not fast.is_file():
        vocab = _read_json(slow)
        if not isinstance(vocab, dict):
            raise HFImportError(f"{slow}: expected the tokenizer's {{token: id}} object")
        pairs += [(t, int(i), slow.name) for t, i in vocab.items()]
    added = d / "added_tokens.json"
    if added.is_file():
        pairs += [(t, int(i), added.name) for t, i in _read_json(added).items()]
    tok_cfg = d / "tokenizer_config.json"
    if tok_cfg.is_file():
        dec = _read_json(tok_cfg).get("added_tokens_decoder") or {}
        pairs += [(v["content"], int(k), tok_cfg.name) for k, v in dec.items() if isinstance(v, dict)]
    if not pairs:
        raise HFImportError(
            f"{d}: no tokenizer files (tokenizer.json, or vocab.json + added_tokens.json); the task "
            "tokens cannot be located in the embedding without them"
        )
    out: dict[str, int] = {}
    for tok, i, src in pairs:
        if out.setdefault(tok, i) != i:
            raise HFImportError(f"{d / src}: token {tok!r} has id {i} here but {out[tok]} in another tokenizer file")
    return out


def load_hf_tensors(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The weights of an HF checkpoint, never unpickling arbitrary objects.

    ``model.safetensors`` (or the shards of ``model.safetensors.index.json``) first;
    else ``pytorch_model.bin`` through ``torch.load(weights_only=True)``. Keys lose a
    leading ``transformer.``; GPT-2's attention-mask buffers are dropped.

    Raises:
        HFImportError / RunError: no weights, a pickle posing as safetensors, a
            ``pytorch_model.bin`` holding anything but tensors, or a corrupt file.
    """
    d = Path(directory)
    tensors: dict[str, Any]
    if (d / HF_SAFETENSORS_FILE).is_file():
        tensors = read_safetensors(d / HF_SAFETENSORS_FILE)
    elif (d / HF_SAFETENSORS_INDEX).is_file():
        index = _read_json(d / HF_SAFETENSORS_INDEX)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards or any(not s.endswith(".safetensors") or "/" in s or "\\" in s for s in shards):
            raise HFImportError(f"{d / HF_SAFETENSORS_INDEX}: weight_map must name .safetensors files in {d}")
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(d / shard))
    elif (d / HF_PICKLE_FILE).is_file():
        tensors = _torch_load_weights_only(d / HF_PICKLE_FILE)
    else:
        raise HFImportError(f"{d}: no {HF_SAFETENSORS_FILE}, {HF_SAFETENSORS_INDEX} or {HF_PICKLE_FILE}")
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers
            continue
        out[key] = value
    return out


def _torch_load_weights_only(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    version = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if version < _MIN_TORCH_WEIGHTS_ONLY:
        raise HFImportError(
            f"{path}: refused: torch {torch.__version__} has a known bypass of torch.load(weights_only=True) "
            "(CVE-2025-32434, fixed in 2.6); upgrade torch, or convert the file to model.safetensors "
            "in a sandbox"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, AttributeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HFImportError(
            f"{path}: refused: torch.load(weights_only=True) cannot read it as plain tensors ({first}); "
            "it may hold arbitrary code, or be corrupt. Convert it to model.safetensors only if you "
            "trust its source"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HFImportError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj
