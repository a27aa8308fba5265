"""Import HuggingFace GPT-2 checkpoints (as the paper's authors released them) into a run.

The paper's models are HF ``GPT2LMHeadModel`` checkpoints whose tokenizer is GPT-2's
with the task tokens (``<e_12>``, ``<r_3>``, ``</a>`` ...) added. :func:`import_hf`
turns one such directory, or a directory of ``checkpoint-N/`` subdirectories (the
authors' layout), into an ordinary grokscope run directory, so every grokscope
analysis (logit lens, causal tracing, circuits) works on the paper's own weights:

* the task data comes from a directory in the paper's format (``--task-data``; the
  authors' ``data/<dataset>/``); its ``vocab.json`` gives the task vocabulary, and
  token ``i`` of the run is the HF token whose string is ``vocab[i]`` (looked up in the
  HF tokenizer's own vocabulary files), so the rows of ``wte`` and ``lm_head`` are
  picked by token string;
* GPT-2 weights are mapped to TransformerLens's native keys: HF ``Conv1D`` weights
  ``[in, out]`` are transposed to ``nn.Linear``'s ``[out, in]``, the fused ``c_attn``
  is split into Q, K, V; ``wpe`` keeps the first ``n_ctx`` rows (the task's longest
  sequence; absolute positions beyond it are never used); ``tie_word_embeddings``
  is kept; the authors' ``add_recurrence`` (the blocks run twice, Appendix E.2)
  becomes ``share_layers`` with twice the layers;
* the checkpoint's step is ``trainer_state.json``'s ``global_step``, else the N of a
  ``checkpoint-N`` directory name, else 0 (or ``step=`` for a single checkpoint).

Nothing is unpickled: weights are read from ``model.safetensors`` (sharded or not);
a ``pytorch_model.bin`` (a pickle) is read only with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. Tokenizer and config files are
JSON. Other files of an HF checkpoint (``optimizer.pt``, ``training_args.bin`` ...)
are never opened. The run is built under a temporary name and renamed into place.

Logits of the imported model equal the HF model's logits at the task tokens; a
softmax, argmax or rank over the run's vocabulary is over the task tokens only (the
HF model's other ~50k GPT-2 tokens are dropped).

Example:
    >>> run = import_hf("ckpts/composition.2000.200.18.0_0.1_8",    # doctest: +SKIP
    ...                 "runs/paper-composition", task_data="data/composition.2000.200.18.0")
    >>> run.steps()[:3]                                              # doctest: +SKIP
    [20000, 40000, 60000]
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from grokscope import __version__
from grokscope.runs.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from grokscope.runs.hf_files import (  # noqa: F401  (re-exported)
    HF_CONFIG_FILE,
    HF_PICKLE_FILE,
    HF_SAFETENSORS_FILE,
    HF_SAFETENSORS_INDEX,
    HF_TRAINER_STATE,
    IMPORT_FILE,
    HFCheckpoint,
    HFImportError,
    checkpoint_step,
    find_checkpoints,
    find_task_data,
    load_hf_tensors,
    model_config_from_hf,
    read_hf_config,
    read_token_ids,
)
from grokscope.runs.run import Run, write_checkpoint

if TYPE_CHECKING:
    from jaxtyping import Float

    from grokscope.tasks.dataset import TaskDataset

# --------------------------------------------------------------------------- conversion


def convert_gpt2_tensors(
    hf: dict[str, torch.Tensor],
    cfg: ModelConfig,
    token_ids: list[int],
    n_ctx: int,
    where: str = "weights",
) -> dict[str, Float[torch.Tensor, "..."]]:
    """GPT-2 weights (keys without ``transformer.``) -> TransformerLens native keys.

    Args:
        hf: the HF state dict (``wte.weight``, ``h.0.attn.c_attn.weight``, ...).
        cfg: the model shape (:func:`model_config_from_hf`).
        token_ids: HF id of every run token, in run order (rows of ``wte``/``lm_head``).
        n_ctx: positions to keep (the first rows of ``wpe``).
        where: file name for error messages.

    Returns:
        A state dict for :func:`grokscope.runs.model.load_tensors` (float32, contiguous).

    Raises:
        HFImportError: missing keys or shapes that disagree with ``cfg``.
    """
    d, d_mlp = cfg.d_model, cfg.d_mlp

    def get(key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if key not in hf:
            raise HFImportError(f"{where}: missing tensor {key!r}; not a GPT-2 checkpoint of this config")
        t = hf[key].detach().to("cpu", torch.float32)
        if shape is not None and tuple(t.shape) != shape:
            raise HFImportError(f"{where}: {key} has shape {tuple(t.shape)}, config.json implies {shape}")
        return t

    wte = get("wte.weight")
    if wte.ndim != 2 or wte.shape[1] != d:
        raise HFImportError(f"{where}: wte.weight has shape {tuple(wte.shape)}, config.json implies [vocab, {d}]")
    idx = torch.as_tensor(token_ids, dtype=torch.long)
    if len(idx) and int(idx.max()) >= wte.shape[0]:
        raise HFImportError(
            f"{where}: the tokenizer gives id {int(idx.max())}, but wte.weight has only {wte.shape[0]} rows; "
            "the tokenizer files belong to another model"
        )
    wpe = get("wpe.weight")
    if wpe.ndim != 2 or wpe.shape[1] != d or wpe.shape[0] < n_ctx:
        raise HFImportError(f"{where}: wpe.weight has shape {tuple(wpe.shape)}; need at least [{n_ctx}, {d}]")
    out: dict[str, torch.Tensor] = {"embed.weight": wte[idx], "pos_embed.weight": wpe[:n_ctx]}
    n_stored = cfg.n_unique_blocks
    for layer in range(cfg.n_layers):
        src, dst = f"h.{layer % n_stored}.", f"blocks.{layer}."
        w = get(src + "attn.c_attn.weight", (d, 3 * d))
        b = get(src + "attn.c_attn.bias", (3 * d,))
        for i, name in enumerate("qkv"):
            out[dst + f"attn.{name}.weight"] = w[:, i * d : (i + 1) * d].T
            out[dst + f"attn.{name}.bias"] = b[i * d : (i + 1) * d]
        out[dst + "attn.o.weight"] = get(src + "attn.c_proj.weight", (d, d)).T
        out[dst + "attn.o.bias"] = get(src + "attn.c_proj.bias", (d,))
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[dst + f"{ours}.weight"] = get(src + f"{theirs}.weight", (d,))
            out[dst + f"{ours}.bias"] = get(src + f"{theirs}.bias", (d,))
        out[dst + "mlp.in.weight"] = get(src + "mlp.c_fc.weight", (d, d_mlp)).T
        out[dst + "mlp.in.bias"] = get(src + "mlp.c_fc.bias", (d_mlp,))
        out[dst + "mlp.out.weight"] = get(src + "mlp.c_proj.weight", (d_mlp, d)).T
        out[dst + "mlp.out.bias"] = get(src + "mlp.c_proj.bias", (d,))
    extra = sorted({k.split(".")[1] for k in hf if k.startswith("h.") and int(k.split(".")[1]) >= n_stored})
    if extra:
        raise HFImportError(f"{where}: holds block h.{extra[0]}, but config.json says n_layer={n_stored}")
    out["ln_final.weight"] = get("ln_f.weight", (d,))
    out["ln_final.bias"] = get("ln_f.bias", (d,))
    if cfg.tie_embeddings:
        head = wte
    else:
        head = get("lm_head.weight", tuple(wte.shape))
    out["unembed.weight"] = head[idx]
    out["unembed.bias"] = torch.zeros(len(idx))
    return {k: v.contiguous().clone() for k, v in out.items()}


def task_config_for(dataset: TaskDataset) -> Any:
    """A task config describing a loaded dataset's sizes (descriptive only: the run's
    data is the files, never regenerated): :meth:`grokscope.tasks.Task.describe`."""
    from grokscope.tasks.base import get_task

    return get_task(dataset.task).describe(dataset)


# --------------------------------------------------------------------------- the import


def import_hf(
    hf_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    task_data: str | os.PathLike[str] | None = None,
    *,
    step: int | None = None,
    name: str | None = None,
) -> Run:
    """Convert HF GPT-2 checkpoint(s) into a new grokscope run directory at ``out``.

    Args:
        hf_dir: an HF model directory, or one holding ``checkpoint-N/`` directories.
        out: the new run directory (must not hold anything yet).
        task_data: the paper-format data the model was trained on (default: looked
            for next to ``hf_dir``, see :func:`find_task_data`).
        step: the step of a single checkpoint whose step is unknown (default 0).
        name: the run's name (default ``hf-<directory name>``).

    Returns:
        The opened :class:`~grokscope.runs.run.Run`.

    Raises:
        HFImportError: unreadable or unsupported checkpoints, task tokens the tokenizer
            lacks, or an ``out`` that already exists.
        RunError: a corrupt or pickled ``model.safetensors``.
    """
    from grokscope.tasks.paper_format import load_paper_format

    hf_dir, out = Path(hf_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFImportError(f"{out}: already exists and is not empty; pick a new --out")
    ckpts = find_checkpoints(hf_dir)
    if step is not None:
        if len(ckpts) != 1:
            raise HFImportError(f"{hf_dir}: --step applies to a single checkpoint, found {len(ckpts)}")
        if step < 0:
            raise HFImportError(f"step must be >= 0, got {step}")
        ckpts = [HFCheckpoint(ckpts[0].path, step)]
    steps = [c.step if c.step is not None else 0 for c in ckpts]
    if len(set(steps)) != len(steps):
        raise HFImportError(f"{hf_dir}: several checkpoints share a step ({steps}); import them one by one with --step")
    data_dir = Path(task_data) if task_data is not None else find_task_data(hf_dir)
    try:
        dataset = load_paper_format(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise HFImportError(f"{data_dir}: cannot read the task data: {e}") from None
    vocab, n_ctx = dataset.vocab, dataset.n_ctx

    first_cfg = read_hf_config(ckpts[0].path)
    model_cfg = model_config_from_hf(first_cfg, str(ckpts[0].path / HF_CONFIG_FILE))
    n_positions = int(first_cfg.get("n_positions", first_cfg.get("n_ctx", 1024)))
    if n_positions < n_ctx:
        raise HFImportError(f"{ckpts[0].path / HF_CONFIG_FILE}: n_positions={n_positions} < the task's n_ctx={n_ctx}")

    run_cfg = RunConfig(
        task=task_config_for(dataset), model=model_cfg, train=TrainConfig(), seed=0,
        name=name or f"hf-{hf_dir.resolve().name}",
    )
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    provenance: dict[str, Any] = {
        "grokscope_version": __version__,
        "source": str(hf_dir.resolve()),
        "task_data": str(data_dir.resolve()),
        "hf_config": first_cfg,
        "note": "weights restricted to the task vocabulary; the run config's task and train "
                "sections describe, the data files define (see grokscope.runs.hf_import)",
        "checkpoints": [],
    }
    try:
        Run.create(tmp, run_cfg, dataset)
        for ck, s in zip(ckpts, steps):
            cfg_path = ck.path / HF_CONFIG_FILE
            if model_config_from_hf(read_hf_config(ck.path), str(cfg_path)) != model_cfg:
                raise HFImportError(f"{cfg_path}: model shape differs from {ckpts[0].path / HF_CONFIG_FILE}")
            tok_dir = ck.path if _has_tokenizer(ck.path) else hf_dir
            token_map = read_token_ids(tok_dir)
            missing = [t for t in vocab.tokens if t not in token_map]
            if missing:
                raise HFImportError(
                    f"{tok_dir}: the tokenizer lacks {len(missing)} task tokens of {data_dir / 'vocab.json'} "
                    f"(e.g. {', '.join(missing[:5])}); the data directory does not match this model"
                )
            ids = [token_map[t] for t in vocab.tokens]
            tensors = convert_gpt2_tensors(load_hf_tensors(ck.path), model_cfg, ids, n_ctx, where=str(ck.path))
            meta = {"step": s, "wall_time": None, "metrics": None, "source": str(ck.path.resolve())}
            write_checkpoint(tmp, s, tensors, meta)
            entry = {"step": s, "source": str(ck.path.resolve()), "step_known": ck.step is not None}
            token_ids = dict(zip(vocab.tokens, ids))
            if provenance.setdefault("token_ids", token_ids) != token_ids:  # this tokenizer differs
                entry["token_ids"] = token_ids
            provenance["checkpoints"].append(entry)
        run = Run.open(tmp)
        run.load_model(steps[0])  # the first checkpoint loads strictly into the run's model
        (tmp / IMPORT_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run.open(out)


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "added_tokens.json"))


__all__ = [
    "HFCheckpoint", "HFImportError", "IMPORT_FILE", "checkpoint_step", "convert_gpt2_tensors",
    "find_checkpoints", "find_task_data", "import_hf", "load_hf_tensors", "model_config_from_hf",
    "read_hf_config", "read_token_ids", "task_config_for",
]
