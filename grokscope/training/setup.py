"""Training setup: threads, device, autocast, the checkpoint schedule, the training data and loss, evaluation, the gradient filter."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from grokscope.runs.config import TrainConfig
from grokscope.runs.run import (
    RunError,
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
