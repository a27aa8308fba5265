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
    >>> from grokscope.config import preset
    >>> from grokscope.train import train_new
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
import torch.nn.functional as F

from grokscope.config import RunConfig, TrainConfig
from grokscope.run import (
    METRICS_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    Run,
    RunError,
    atomic_write_bytes,
    latest_resume_step,
    read_safetensors,
    write_checkpoint,
)
from grokscope.tasks.dataset import Split

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

DEFAULT_THREADS = 1
"""CPU threads when neither the config nor OMP_NUM_THREADS says. Measured with
``benchmarks/threads.py`` (composition-small shape, batch 256) on the 2-core machine:
idle, 2 threads ran 1.55x faster than 1 (18.5 vs 11.9 steps/s); with the other core
busy, 2 threads ran at 0.52x (6.0 vs 11.4 steps/s). One thread is the default because
it never collapses (sweeps, tests and notebooks share the machine); pass
``--threads 2`` on an idle machine."""


# --------------------------------------------------------------------------- setup


def resolve_threads(tc: TrainConfig) -> int:
    if tc.threads is not None:
        return tc.threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else DEFAULT_THREADS


def resolve_device(tc: TrainConfig) -> torch.device:
    if tc.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(tc.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {tc.device!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def autocast_context(tc: TrainConfig, device: torch.device) -> tuple[Any, bool]:
    """(autocast context, whether fp16 gradient scaling is needed)."""
    if device.type != "cuda" or tc.autocast == "off":
        return nullcontext(), False
    kind = tc.autocast
    if kind == "auto":
        kind = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if kind == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype), kind == "fp16"


def checkpoint_steps(tc: TrainConfig) -> list[int]:
    """Checkpoint steps: 0, every ``dense_every`` up to ``dense_until``, then
    ``log_per_decade`` log-spaced steps per decade (rounded to evaluation steps), and
    ``max_steps``.

    Example:
        >>> checkpoint_steps(TrainConfig(max_steps=1000, eval_every=50, dense_every=100,
        ...                              dense_until=300, log_per_decade=2, warmup_steps=0))
        [0, 100, 200, 300, 950, 1000]
    """
    steps = {0, tc.max_steps}
    steps.update(range(tc.dense_every, min(tc.dense_until, tc.max_steps) + 1, tc.dense_every))
    if tc.log_per_decade > 0:
        start = max(tc.dense_until, tc.eval_every)
        i = 1
        while True:
            s = start * 10 ** (i / tc.log_per_decade)
            if s > tc.max_steps:
                break
            steps.add(min(tc.max_steps, int(round(s / tc.eval_every)) * tc.eval_every))
            i += 1
    return sorted(steps)


# --------------------------------------------------------------------------- data


@dataclass
class TrainData:
    """Training tensors on the device and the per-step batch sampler."""

    tokens: torch.Tensor  # (N, T)
    target_pos: torch.Tensor  # (N,)
    answer_end: torch.Tensor | None  # (N,) the closing </a> of multi-token answers; None: one token each
    atomic_idx: np.ndarray
    inferred_idx: np.ndarray
    seed: int
    batch_size: int
    atomic_fraction: float | None

    @classmethod
    def from_split(cls, split: Split, tc: TrainConfig, seed: int, device: torch.device) -> TrainData:
        return cls(
            tokens=torch.from_numpy(split.tokens).to(device),
            target_pos=torch.from_numpy(split.target_pos).to(device),
            answer_end=_multi_token_end(split, device),
            atomic_idx=np.flatnonzero(split.atomic),
            inferred_idx=np.flatnonzero(~split.atomic),
            seed=seed,
            batch_size=tc.batch_size,
            atomic_fraction=tc.atomic_fraction,
        )

    def batch_indices(self, step: int) -> np.ndarray:
        """Row indices of the global batch of ``step`` (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, 1, step])
        n = self.batch_size
        if self.atomic_fraction is None or not len(self.atomic_idx) or not len(self.inferred_idx):
            return rng.integers(0, len(self.tokens), size=n)
        n_atomic = int(round(self.atomic_fraction * n))
        a = self.atomic_idx[rng.integers(0, len(self.atomic_idx), size=n_atomic)]
        b = self.inferred_idx[rng.integers(0, len(self.inferred_idx), size=n - n_atomic)]
        return np.concatenate([a, b])


def _multi_token_end(split: Split, device: torch.device) -> torch.Tensor | None:
    """The ``</a>`` position of every row when some answer is several tokens (tree paths), else None."""
    end = split.answer_end
    if not len(end) or (end == split.target_pos + 2).all():
        return None
    return torch.from_numpy(end).to(device)


def target_loss(
    logits: Float[torch.Tensor, "batch pos d_vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
    target_pos: Int[torch.Tensor, " batch"],
    answer_end: Int[torch.Tensor, " batch"] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy on the answer and ``</a>`` tokens, and the token count.

    With ``answer_end`` (answers of several tokens) every token after ``target_pos`` up
    to and including the ``</a>`` at ``answer_end`` is in the loss.
    """
    if answer_end is not None:
        cols = torch.arange(tokens.shape[1] - 1, device=tokens.device)[None, :]
        mask = (cols >= target_pos[:, None]) & (cols < answer_end[:, None])  # predicting positions
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1),
                             reduction="none").reshape(mask.shape)
        return (ce * mask).sum(), mask.sum()
    rows = torch.arange(len(tokens), device=tokens.device)
    pos = torch.stack([target_pos, target_pos + 1], dim=1)  # predicting positions
    pred = logits[rows[:, None], pos]  # (batch, 2, d_vocab)
    gold = tokens[rows[:, None], pos + 1]  # (batch, 2)
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), gold.reshape(-1), reduction="sum")
    return loss, torch.tensor(gold.numel(), device=tokens.device)


# --------------------------------------------------------------------------- evaluation


def eval_subsets(dataset: TaskDataset, eval_size: int | None, seed: int) -> dict[str, Split]:
    """A fixed random subset (at most ``eval_size``) of every probe split."""
    out = {}
    for i, name in enumerate(dataset.probe_splits):
        s = dataset.splits[name]
        if eval_size is not None and len(s) > eval_size:
            idx = np.sort(np.random.default_rng([seed, 2, i]).choice(len(s), eval_size, replace=False))
            s = s.subset(idx)
        out[name] = s
    return out


@torch.no_grad()
def evaluate(
    model: TransformerBridge,
    splits: dict[str, Split],
    device: torch.device | str = "cpu",
    batch_size: int = 2048,
) -> dict[str, dict[str, float]]:
    """Accuracy (argmax at the answer position equals the answer) and mean loss there.

    A split whose answers are several tokens (tree paths) is scored per sequence: ``acc``
    is the share of examples whose teacher-forced argmax is right at every answer position
    and at ``</a>`` (exactly when greedy decoding gives the whole answer), ``loss`` the mean
    cross-entropy per answer token, and ``token_acc`` (only then) the per-token accuracy.

    Returns:
        ``{"acc": {split: float}, "loss": {split: float}}`` (plus ``token_acc`` for
        multi-token splits); splits with no examples are omitted.
    """
    was_training = model.training
    model.eval()
    acc: dict[str, float] = {}
    loss: dict[str, float] = {}
    token_acc: dict[str, float] = {}
    for name, s in splits.items():
        if not len(s):
            continue
        if not (s.answer_end == s.target_pos + 2).all():
            acc[name], loss[name], token_acc[name] = _sequence_scores(model, s, device, batch_size)
            continue
        correct, total_loss = 0, 0.0
        for lo in range(0, len(s), batch_size):
            tok = torch.from_numpy(s.tokens[lo : lo + batch_size]).to(device)
            pos = torch.from_numpy(s.target_pos[lo : lo + batch_size]).to(device)
            width = int(pos.max()) + 1
            logits = model(tok[:, :width])
            rows = torch.arange(len(tok), device=tok.device)
            final = logits[rows, pos].float()
            gold = tok[rows, pos + 1]
            correct += int((final.argmax(-1) == gold).sum())
            total_loss += float(F.cross_entropy(final, gold, reduction="sum"))
        acc[name] = correct / len(s)
        loss[name] = total_loss / len(s)
    model.train(was_training)
    return {"acc": acc, "loss": loss, **({"token_acc": token_acc} if token_acc else {})}


def _sequence_scores(model: TransformerBridge, s: Split, device: torch.device | str, batch_size: int) -> tuple[float, float, float]:
    """(exact-sequence accuracy, mean loss per answer token, per-token accuracy) of a split
    with multi-token answers, teacher-forced over every answer token and the closing ``</a>``."""
    end_all = s.answer_end
    exact, n_tok, n_right, total_loss = 0, 0, 0, 0.0
    for lo in range(0, len(s), batch_size):
        end_np = end_all[lo : lo + batch_size]
        tok = torch.from_numpy(s.tokens[lo : lo + batch_size, : int(end_np.max()) + 1]).to(device)
        pos = torch.from_numpy(s.target_pos[lo : lo + batch_size]).to(device)
        end = torch.from_numpy(end_np).to(device)
        logits = model(tok[:, :-1]).float()
        cols = torch.arange(tok.shape[1] - 1, device=tok.device)[None, :]
        mask = (cols >= pos[:, None]) & (cols < end[:, None])
        gold = tok[:, 1:]
        right = (logits.argmax(-1) == gold) | ~mask
        exact += int(right.all(dim=1).sum())
        n_right += int(((logits.argmax(-1) == gold) & mask).sum())
        n_tok += int(mask.sum())
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), reduction="none")
        total_loss += float((ce.reshape(mask.shape) * mask).sum())
    return exact / len(s), total_loss / max(n_tok, 1), n_right / max(n_tok, 1)


# --------------------------------------------------------------------------- gradient filter


class GradFilter:
    """Grokfast's EMA gradient filter (Lee et al. 2024): ``g <- g + lamb * ema(g)``.

    ``ema <- alpha * ema + (1 - alpha) * g`` per parameter, starting at the first
    gradient seen (as Grokfast's reference implementation). Amplifies the slowly
    varying part of the gradient, which the authors find drives generalisation.
    The state is one tensor per parameter name, saved beside the optimizer's moments.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> f = GradFilter(alpha=0.5, lamb=2.0)
        >>> p.grad = torch.tensor([1.0, 0.0]); f.apply([("w", p)]); p.grad.tolist()
        [3.0, 0.0]
        >>> p.grad = torch.tensor([0.0, 1.0]); f.apply([("w", p)]); p.grad.tolist()
        [1.0, 2.0]
    """

    STATE_SUFFIX = "::grad_ema"

    def __init__(self, alpha: float, lamb: float) -> None:
        self.alpha, self.lamb = float(alpha), float(lamb)
        self.ema: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, named_params: list[tuple[str, torch.nn.Parameter]]) -> None:
        """Filter every ``p.grad`` in place (parameters without a gradient are skipped)."""
        for name, p in named_params:
            if p.grad is None:
                continue
            ema = self.ema.get(name)
            if ema is None:
                self.ema[name] = ema = p.grad.detach().clone()
            else:
                ema.mul_(self.alpha).add_(p.grad, alpha=1 - self.alpha)
            p.grad.add_(ema, alpha=self.lamb)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{n}{self.STATE_SUFFIX}": t.detach().cpu().contiguous() for n, t in self.ema.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
        for key, t in tensors.items():
            if key.endswith(self.STATE_SUFFIX):
                name = key[: -len(self.STATE_SUFFIX)]
                if name not in params:
                    raise RunError(f"gradient filter state names parameter {name!r}, which the model does not have")
                self.ema[name] = t.to(params[name].device, params[name].dtype)


def dropout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of step ``step``'s dropout masks: a pure function of run seed, step and rank.

    Example:
        >>> dropout_seed(0, 5) == dropout_seed(0, 5) != dropout_seed(0, 6)
        True
    """
    return int(np.random.SeedSequence([seed, 3, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def unique_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Each parameter once, under the first name the model gives it (tied/shared ones once)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


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

    from grokscope.model import decay_param_groups, dropout, load_tensors, save_tensors

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
