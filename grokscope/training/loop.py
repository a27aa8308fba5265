"""The training loop: AdamW with warmup, loss on the target tokens, evaluation on every
probe split, a grokking-friendly checkpoint schedule, exact resume, optional DDP.

Randomness is explicit: the model's init comes from the run seed, the batch of step
``s`` is drawn from ``numpy.random.default_rng([seed, 1, s])`` and, with
``model.dropout > 0``, step ``s``'s dropout masks from a ``torch.Generator`` seeded with
:func:`dropout_seed` ``(seed, s, rank)``; there is no other randomness. The optional
gradient filter (``train.grad_filter``) keeps its moving average with the optimizer
state. So a run resumed from any checkpoint replays the very same batches and masks
and ends with the same weights and metrics as an uninterrupted one (same device and
thread count; with dropout, also the same number of DDP processes).

Example:
    >>> from grokscope.runs.presets import preset
    >>> from grokscope.training.loop import train_new
    >>> run = train_new(preset("composition-tiny"), "runs/tiny", quiet=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from grokscope.runs.config import RunConfig, TrainConfig
from grokscope.runs.run import (
    METRICS_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    Run,
    RunError,
    atomic_write_bytes,
    read_safetensors,
    write_checkpoint,
)
from grokscope.runs.thinning import latest_resume_step
from grokscope.training.setup import (  # noqa: F401  (re-exported)
    DEFAULT_THREADS,
    GradFilter,
    TrainData,
    autocast_context,
    checkpoint_steps,
    dropout_seed,
    eval_subsets,
    evaluate,
    resolve_device,
    resolve_threads,
    target_loss,
    unique_named_parameters,
)

if TYPE_CHECKING:

    from grokscope.tasks.dataset import TaskDataset

# --------------------------------------------------------------------------- state


@dataclass
class TrainerState:
    """What, besides weights and optimizer moments, a resume needs."""

    step: int = 0
    wall_time: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0
    iid_hit_eval: int | None = None  # evaluation index when test ID first reached the threshold
    n_evals: int = 0
    done: bool = False
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _optimizer_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    names = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    tensors: dict[str, torch.Tensor] = {}
    steps: dict[str, float] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            name = names[id(p)]
            tensors[f"{name}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
            tensors[f"{name}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
            steps[name] = float(st["step"])
    return tensors, {"adam_steps": steps}


def _load_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    params = {}
    for name, p in model.named_parameters():
        params.setdefault(name, p)
    for name, step in info["adam_steps"].items():
        if name not in params:
            raise RunError(f"optimizer state names parameter {name!r}, which the model does not have")
        p = params[name]
        opt.state[p] = {
            "step": torch.tensor(step),
            "exp_avg": tensors[f"{name}::exp_avg"].to(p.device, p.dtype),
            "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].to(p.device, p.dtype),
        }


# --------------------------------------------------------------------------- loop


def _dist_info() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    if not torch.distributed.is_available():
        return 0, 1
    if not torch.distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_new(config: RunConfig, out: str | os.PathLike[str], *, quiet: bool = False) -> Run:
    """Generate the data, create the run directory at ``out`` and train it.

    Raises:
        RunError: ``out`` already holds a run.
    """
    from grokscope.tasks import get_task

    rank, _ = _dist_info()
    dataset = get_task(config.task).generate(config.task)
    if rank == 0:
        run = Run.create(out, config, dataset)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    run = Run.open(out)
    train(run, quiet=quiet, dataset=dataset)
    return run


def train(run: Run, *, quiet: bool = False, dataset: TaskDataset | None = None, max_steps: int | None = None) -> dict[str, Any]:
    """Train ``run`` from its latest resume checkpoint (or from scratch) to a stop condition.

    Args:
        run: an opened run directory.
        quiet: no progress bar.
        dataset: the run's dataset if already in memory (else read from ``RUN/data``).
        max_steps: stop here instead of the config's ``max_steps`` (for tests and
            staged training; the checkpoint schedule still follows the config).

    Returns:
        The final :class:`TrainerState` as a dict (step, wall time, stop reason).
    """
    cfg = run.config
    tc = cfg.train
    rank, world = _dist_info()
    torch.set_num_threads(resolve_threads(tc))
    device = resolve_device(tc)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dataset is None:
        dataset = run.dataset()
    elif dataset.content_hash() != run.data_info.get("content_hash"):
        raise RunError(f"{run.path}: the dataset given differs from the run's data (content hash)")
    stop_at = min(max_steps or tc.max_steps, tc.max_steps)

    from grokscope.runs.model import decay_param_groups, dropout, load_tensors, save_tensors

    model = run.build_model(device=str(device))
    opt = torch.optim.AdamW(decay_param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
    named = unique_named_parameters(model)
    grad_filter = GradFilter(tc.grad_filter_alpha, tc.grad_filter_lambda) if tc.grad_filter == "ema" else None
    state = TrainerState()
    resume_step = latest_resume_step(run)
    if resume_step is not None:
        ck = run.checkpoint_path(resume_step)
        load_tensors(model, read_safetensors(ck / "model.safetensors"))
        info = json.loads((ck / TRAINER_STATE_FILE).read_text())
        opt_tensors = read_safetensors(ck / OPTIMIZER_FILE)
        _load_optimizer(model, opt, opt_tensors, info)
        if grad_filter is not None:
            grad_filter.load_state_tensors(opt_tensors, dict(named))
        state = TrainerState.from_dict(info["trainer"])
        if rank == 0:
            _truncate_metrics(run.path / METRICS_FILE, state.step)
    elif run.steps():
        raise RunError(f"{run.path}: has checkpoints but none with resume state; cannot continue training it")
    elif rank == 0:  # from scratch: drop records of an attempt killed before its first checkpoint
        _truncate_metrics(run.path / METRICS_FILE, -1)
    if state.done and state.step >= stop_at:
        return state.to_dict()
    state.done, state.stop_reason = False, None

    data = TrainData.from_split(dataset.splits["train"], tc, cfg.seed, device)
    probes = eval_subsets(dataset, tc.eval_size, cfg.seed)
    ck_steps = set(checkpoint_steps(tc))
    amp, needs_scaler = autocast_context(tc, device)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    model.train()

    def save(step: int, metrics: dict[str, Any] | None) -> None:
        if rank != 0:
            return
        tensors, opt_info = _optimizer_tensors(model, opt)
        if grad_filter is not None:
            tensors.update(grad_filter.state_tensors())
        trainer = {"trainer": state.to_dict(), **opt_info}
        meta = {"step": step, "wall_time": state.wall_time, "metrics": metrics}
        write_checkpoint(run.path, step, save_tensors(model), meta, resume=(tensors, trainer))

    def do_eval(step: int) -> dict[str, Any]:
        res = evaluate(model, probes, device)
        rec = {
            "step": step,
            "wall_time": round(state.wall_time, 3),
            "lr": _lr_at(tc, step),
            "train_loss": state.loss_sum / state.loss_count if state.loss_count else None,
            **res,
        }
        state.loss_sum, state.loss_count = 0.0, 0
        state.n_evals += 1
        if rank == 0:
            try:
                with open(run.path / METRICS_FILE, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise RunError(
                    f"{run.path / METRICS_FILE}: could not record the step {step} evaluation "
                    f"({e.strerror or e}); the checkpoints already written are intact. Free disk space "
                    f"or make {run.path} writable, then `grokscope train --resume {run.path}`"
                ) from e
        return rec

    from tqdm.auto import tqdm

    bar = tqdm(total=stop_at, initial=state.step, disable=quiet or rank != 0, desc=cfg.name, unit="step", dynamic_ncols=True)
    if state.step == 0 and resume_step is None:
        rec = do_eval(0)
        save(0, rec)
    t_last = time.perf_counter()
    try:
        while state.step < stop_at:
            step = state.step  # the step being taken now (0-based); afterwards state.step = step + 1
            for g in opt.param_groups:
                g["lr"] = _lr_at(tc, step)
            idx = data.batch_indices(step)
            if world > 1:
                idx = np.array_split(idx, world)[rank]
            tok = data.tokens[torch.from_numpy(idx).to(device)]
            pos = data.target_pos[torch.from_numpy(idx).to(device)]
            end = data.answer_end[torch.from_numpy(idx).to(device)] if data.answer_end is not None else None
            width = int(pos.max()) + 3 if end is None else int(end.max()) + 1
            p_drop = cfg.model.dropout
            gen = torch.Generator(device).manual_seed(dropout_seed(cfg.seed, step, rank)) if p_drop else None
            with amp, (dropout(model, p_drop, gen) if gen is not None else nullcontext()):
                logits = model(tok[:, :width])
            loss_sum, count = target_loss(logits, tok[:, :width], pos, end)
            global_count = 2 * tc.batch_size
            if end is not None:  # multi-token answers: the mean over this batch's answer tokens
                if world > 1:
                    count = count.clone()
                    torch.distributed.all_reduce(count)
                global_count = count.clamp(min=1)
            loss = loss_sum / global_count
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if world > 1:
                for p in {id(p): p for p in model.parameters()}.values():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                reduced = loss.detach().clone()
                torch.distributed.all_reduce(reduced)
                loss_value = float(reduced)
            else:
                loss_value = float(loss.detach())
            if scaler:
                scaler.unscale_(opt)
            if grad_filter is not None and step >= tc.grad_filter_start and (scaler is None or _grads_finite(named)):
                grad_filter.apply(named)  # an fp16 step the scaler skips must not poison the average
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}; lower lr or enable grad_clip")
            state.loss_sum += loss_value
            state.loss_count += 1
            state.step = step + 1
            now = time.perf_counter()
            state.wall_time += now - t_last
            t_last = now
            bar.update(1)

            s = state.step
            rec = None
            if s % tc.eval_every == 0 or s == tc.max_steps:
                rec = do_eval(s)
                acc = rec["acc"]
                bar.set_postfix({k.replace("test_inferred_", "").replace("train_inferred", "train"): f"{v:.2f}"
                                 for k, v in acc.items() if "inferred" in k})
                iid = acc.get("test_inferred_iid")
                if tc.stop_iid_threshold is not None and iid is not None:
                    if state.iid_hit_eval is None and iid >= tc.stop_iid_threshold:
                        state.iid_hit_eval = state.n_evals
                    if state.iid_hit_eval is not None and state.n_evals - state.iid_hit_eval >= tc.stop_patience:
                        state.done, state.stop_reason = True, f"test_inferred_iid >= {tc.stop_iid_threshold}"
            if tc.max_time_s is not None and state.wall_time >= tc.max_time_s and not state.done:
                state.done, state.stop_reason = True, f"max_time_s={tc.max_time_s}"
                if rec is None:
                    rec = do_eval(s)
            if s >= tc.max_steps:
                state.done, state.stop_reason = True, "max_steps"
            if world > 1:  # every rank stops together (wall time differs between ranks)
                flag = torch.tensor([1.0 if state.done else 0.0], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                if flag.item() and not state.done:
                    state.done, state.stop_reason = True, "stopped by another rank"
            if s in ck_steps or state.done or s == stop_at:
                save(s, rec)
            if state.done:
                break
    except KeyboardInterrupt:
        save(state.step, None)
        bar.close()
        raise
    finally:
        bar.close()
    if state.stop_reason is None and state.step >= stop_at:
        state.stop_reason = f"max_steps={stop_at}"
    return state.to_dict()


def _grads_finite(named: list[tuple[str, torch.nn.Parameter]]) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for _, p in named if p.grad is not None)


def _lr_at(tc: TrainConfig, step: int) -> float:
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_decay == "cosine":
        span = max(tc.max_steps - tc.warmup_steps, 1)
        done = min(max(step - tc.warmup_steps, 0) / span, 1.0)
        floor = tc.lr * tc.lr_min_ratio
        return floor + (tc.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * done))
    return tc.lr


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (later ones belong to work the resume redoes)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(json.dumps(rec))
    atomic_write_bytes(path, ("\n".join(keep) + "\n").encode() if keep else b"")
