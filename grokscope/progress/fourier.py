"""Progress measures for grokking (Nanda et al., ICLR 2023) and a forecast of grokking.

Modular addition (``grokscope.tasks.builtin.modular``): the model's logits at ``=`` over all
``p^2`` pairs and its residue embedding, read in the Fourier basis of ``Z_p``:

* :func:`fourier_basis`: the orthonormal basis (constant, ``cos``/``sin`` of every
  frequency ``k = 1 .. p//2``) as rows;
* :func:`frequency_power`: the squared norm of a ``[p, ...]`` table per frequency (the
  embedding's, Nanda's Figure "norm of the embedding by frequency");
* :func:`key_frequencies`: found automatically: the frequencies whose embedding power
  is at least :data:`KEY_POWER_RATIO` times the median frequency's;
* :func:`restricted_logits` / :func:`excluded_logits`: the logits over ``(a, b)`` in the
  2-D Fourier basis (``phi_i(a) phi_j(b)``); restricted to the key frequencies keeps the
  components whose two frequencies are both key (or constant), excluded removes them
  (the constant kept). With every frequency kept, restricted logits are the logits;
  with none excluded, excluded logits are the logits. Nanda keeps only the
  ``cos/sin(w (a + b))`` directions of the key blocks; the blocks kept here also hold
  ``w (a - b)`` and single-input terms of the key frequencies, which are small in a
  grokked model;
* restricted and excluded loss on the training pairs, the Gini coefficient of the
  embedding's Fourier norms and of the logits' frequency power, the weight norm.

:func:`fourier_progress` computes them on one checkpoint (registered as the ``fourier``
diagnosis, which the modular task declares); :func:`progress_series` over a run with
one key-frequency set (the last checkpoint's) for every step, cached; :func:`locate_phases`
places memorisation, circuit formation and cleanup; :func:`forecast` asks, for any run,
which cheap measure (one that needs no held-out data) starts moving before test accuracy,
with one onset definition (:func:`onset`) for all; :func:`report_data` is what the report
shows. :func:`pair_activations`, :func:`neuron_frequencies` and :func:`head_frequencies`
read attention and neurons as periodic functions of ``(a, b)``.

Example:
    >>> b, freqs = fourier_basis(5)
    >>> bool(torch.allclose(b @ b.T, torch.eye(5, dtype=b.dtype))), freqs.tolist()
    (True, [0, 1, 1, 2, 2])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from grokscope.display import Summarized
from grokscope.progress.diagnoses import register_diagnosis

if TYPE_CHECKING:
    from jaxtyping import Float
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.runs.run import Run
    from grokscope.tasks.dataset import TaskDataset

KEY_POWER_RATIO = 10.0
"""A frequency is key when its embedding power is at least this many times the median
frequency's (a random embedding: every ratio near 1; Nanda's grokked model: ~5 frequencies
hundreds of times the rest)."""

# --------------------------------------------------------------------------- Fourier basis


def fourier_basis(p: int) -> tuple[Float[torch.Tensor, "basis p"], torch.Tensor]:
    """The orthonormal Fourier basis of functions on ``Z_p``, one basis vector per row.

    Row 0 is the constant ``1 / sqrt(p)``; then for ``k = 1 .. p // 2`` the rows
    ``cos(2 pi k x / p)`` and ``sin(2 pi k x / p)`` normalised (for even ``p`` the
    frequency ``p / 2`` has only its cosine).

    Returns:
        ``(basis [p, p] float64, freqs [p])``: ``freqs[i]`` is row ``i``'s frequency.

    Example:
        >>> b, f = fourier_basis(113)
        >>> b.shape, int(f.max())
        (torch.Size([113, 113]), 56)
    """
    if p < 2:
        raise ValueError(f"p must be >= 2, got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows, freqs = [torch.ones(p, dtype=torch.float64)], [0]
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p))
        freqs.append(k)
        if 2 * k != p:
            rows.append(torch.sin(2 * math.pi * k * x / p))
            freqs.append(k)
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), torch.tensor(freqs)


def frequency_power(table: Float[torch.Tensor, "p ..."]) -> Float[torch.Tensor, " freq"]:
    """Squared norm of ``table`` (a function of the residue along dim 0) per frequency.

    Returns:
        ``[p // 2 + 1]``: index 0 the constant, ``k`` the cos and sin of frequency ``k``;
        the sum is ``table``'s squared Frobenius norm (the basis is orthonormal).

    Example:
        >>> x = torch.arange(7, dtype=torch.float64)
        >>> frequency_power(torch.cos(2 * math.pi * 3 * x / 7)[:, None]).argmax().item()
        3
    """
    p = table.shape[0]
    basis, freqs = fourier_basis(p)
    coef = basis @ table.double().reshape(p, -1)
    per_row = coef.pow(2).sum(-1)
    return torch.zeros(p // 2 + 1, dtype=torch.float64).index_add_(0, freqs, per_row)


def key_frequencies(power: Sequence[float] | torch.Tensor, ratio: float = KEY_POWER_RATIO) -> list[int]:
    """Frequencies ``k >= 1`` whose power is at least ``ratio`` x the median over ``k >= 1``.

    Example:
        >>> key_frequencies([9.0, 1.0, 1.2, 50.0, 0.9, 30.0])
        [3, 5]
    """
    pw = torch.as_tensor(power, dtype=torch.float64)[1:]
    if not len(pw):
        return []
    med = float(pw.median())
    return [int(k) + 1 for k in torch.nonzero(pw >= ratio * max(med, 1e-30)).flatten().tolist()]


def gini(values: Sequence[float] | torch.Tensor) -> float:
    """Gini coefficient of non-negative values: 0 evenly spread, -> 1 on one entry.

    Example:
        >>> gini([1, 1, 1, 1]), round(gini([0, 0, 0, 4]), 2)
        (0.0, 0.75)
    """
    x = torch.sort(torch.as_tensor(values, dtype=torch.float64).abs().flatten()).values
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


# --------------------------------------------------------------------------- logits over (a, b)


def _grid_mask(p: int, keep: set[int]) -> Float[torch.Tensor, "basis basis"]:
    """``[p, p]`` 1.0 where both 2-D Fourier components' frequencies are in ``keep``."""
    _, freqs = fourier_basis(p)
    inside = torch.tensor([int(f) in keep for f in freqs.tolist()], dtype=torch.float64)
    return inside[:, None] * inside[None, :]


def _coefficients(logits: Float[torch.Tensor, "a b c"]) -> Float[torch.Tensor, "i j c"]:
    """2-D Fourier coefficients over ``(a, b)``: ``coef[i, j, c] = sum_ab phi_i(a) phi_j(b) logits[a, b, c]``."""
    basis, _ = fourier_basis(logits.shape[0])
    return torch.einsum("ia,jb,abc->ijc", basis, basis, logits.double())


def _inverse(coef: Float[torch.Tensor, "i j c"]) -> Float[torch.Tensor, "a b c"]:
    basis, _ = fourier_basis(coef.shape[0])
    return torch.einsum("ia,jb,ijc->abc", basis, basis, coef)


def _project(logits: Float[torch.Tensor, "a b c"], mask: torch.Tensor, coef: torch.Tensor | None = None) -> Float[torch.Tensor, "a b c"]:
    """The components of ``logits`` (over ``a`` and ``b``) selected by ``mask`` [i, j]."""
    coef = _coefficients(logits) if coef is None else coef
    return _inverse(coef * mask[:, :, None])


def restricted_logits(
    logits: Float[torch.Tensor, "a b c"], keep: Sequence[int], *, coef: torch.Tensor | None = None
) -> Float[torch.Tensor, "a b c"]:
    """Logits with only the 2-D Fourier components of frequencies ``keep`` (and the constant).

    Example:
        >>> x = torch.randn(5, 5, 5, dtype=torch.float64)
        >>> bool(torch.allclose(restricted_logits(x, [1, 2]), x))
        True
    """
    return _project(logits, _grid_mask(logits.shape[0], {0, *map(int, keep)}), coef)


def excluded_logits(
    logits: Float[torch.Tensor, "a b c"], exclude: Sequence[int], *, coef: torch.Tensor | None = None
) -> Float[torch.Tensor, "a b c"]:
    """Logits minus the components :func:`restricted_logits` keeps for ``exclude`` (the constant stays).

    Example:
        >>> x = torch.randn(5, 5, 5, dtype=torch.float64)
        >>> bool(torch.allclose(excluded_logits(x, []), x))
        True
    """
    p = logits.shape[0]
    if not len(exclude):
        return logits.double()
    mask = _grid_mask(p, {0, *map(int, exclude)})
    mask[0, 0] = 0.0
    return logits.double() - _project(logits, mask, coef)


def pair_loss(logits: Float[torch.Tensor, "a b c"], pairs: torch.Tensor | np.ndarray) -> float:
    """Mean cross-entropy of ``(a + b) mod p`` over the pairs ``a * p + b`` (residue logits only)."""
    p = logits.shape[0]
    idx = torch.as_tensor(np.asarray(pairs), dtype=torch.long)
    a, b = idx // p, idx % p
    return float(F.cross_entropy(logits[a, b].double(), (a + b) % p))


def pair_accuracy(logits: Float[torch.Tensor, "a b vocab"], pairs: torch.Tensor | np.ndarray, answer_ids: Sequence[int]) -> float:
    """Share of the pairs ``a * p + b`` whose arg-max token is ``answer_ids[(a + b) mod p]``
    (over the logits' whole last axis, as the trainer's accuracy)."""
    p = logits.shape[0]
    idx = torch.as_tensor(np.asarray(pairs), dtype=torch.long)
    a, b = idx // p, idx % p
    want = torch.as_tensor(np.asarray(answer_ids))[(a + b) % p]
    return float((logits[a, b].argmax(-1) == want).double().mean())


@torch.no_grad()
def all_pair_tokens(dataset: TaskDataset) -> tuple[torch.Tensor, int]:
    """Every input ``<a><b><=>`` of modular addition, ``a`` major: ``([p * p, 3] token ids, p)``."""
    from grokscope.tasks.builtin.modular import modulus
    from grokscope.tasks.vocab import EQUALS

    vocab, p = dataset.vocab, modulus(dataset)
    res = torch.as_tensor(vocab.value_ids)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([res[a.flatten()], res[b.flatten()], torch.full((p * p,), vocab[EQUALS])], dim=1), p


def all_pair_logits(model: TransformerBridge, dataset: TaskDataset, *, residues_only: bool = True) -> Float[torch.Tensor, "a b c"]:
    """The model's logits at ``=`` for every pair: ``[a, b, c]`` over the residues
    (p x p x p), or over the whole vocabulary with ``residues_only=False``."""
    tokens, p = all_pair_tokens(dataset)
    res = torch.as_tensor(dataset.vocab.value_ids)
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(tokens), 4096):
        out.append(model(tokens[lo : lo + 4096].to(device))[:, -1].float().cpu())
    full = torch.cat(out)
    return full[:, res].reshape(p, p, p) if residues_only else full.reshape(p, p, -1)


def _weight_norm(model: torch.nn.Module) -> float:
    unique = {id(t): t for t in model.state_dict().values() if t.is_floating_point()}
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in unique.values()))


# --------------------------------------------------------------------------- one checkpoint


@torch.no_grad()
def fourier_progress(
    model: TransformerBridge, dataset: TaskDataset, *, key_freqs: Sequence[int] | None = None
) -> dict[str, Any]:
    """Nanda's progress measures of one modular-addition checkpoint (all ``p^2`` pairs).

    Args:
        model: the checkpoint's model.
        dataset: its modular dataset (the training pairs are its ``train`` split).
        key_freqs: frequencies for restricted/excluded loss (None: this checkpoint's own
            :func:`key_frequencies` of the embedding).

    Returns:
        ``p``; ``embed_power`` and ``logit_power`` (per frequency 0..p//2; the logits'
        is the power of the 2-D block ``(k, k)``, which holds ``cos/sin(w (a + b))``);
        ``key_freqs`` (of the embedding), ``key_freqs_used``; ``train_loss``,
        ``test_loss`` (cross-entropy over the residue logits), ``train_acc``, ``test_acc``
        (arg-max over the whole vocabulary, as the trainer), on every training / held-out pair;
        ``restricted_loss``, ``excluded_loss`` (training pairs); ``gini_embed`` (Gini of
        the embedding's norm per Fourier basis vector), ``gini_logits`` (of
        ``logit_power[1:]``); ``weight_norm``.

    Example:
        >>> fourier_progress(model, ds)["key_freqs"]            # doctest: +SKIP
        [14, 35, 41, 42, 52]
    """
    from grokscope.tasks.builtin.modular import modulus, pair_index

    p = modulus(dataset)
    basis, freqs = fourier_basis(p)
    w_e = model.embed.W_E.detach().cpu().double()[torch.as_tensor(dataset.vocab.value_ids)]  # [p, d_model]
    embed_power = frequency_power(w_e)
    embed_norms = (basis @ w_e).norm(dim=-1)
    own = key_frequencies(embed_power)
    used = sorted(int(k) for k in (own if key_freqs is None else key_freqs))

    full = all_pair_logits(model, dataset, residues_only=False)
    logits = full[:, :, torch.as_tensor(dataset.vocab.value_ids)].double()
    coef = _coefficients(logits)
    power = coef.pow(2).sum(-1)  # [i, j]
    power[0, 0] = 0.0  # the mean over (a, b) of each output: no frequency
    diag = torch.zeros(p // 2 + 1, dtype=torch.float64)
    same = freqs[:, None] == freqs[None, :]
    diag.index_add_(0, freqs[torch.nonzero(same)[:, 0]], power[same])
    train = pair_index(dataset.splits["train"], dataset.vocab)
    test = np.setdiff1d(np.arange(p * p), train)
    return {
        "p": p,
        "embed_power": embed_power.tolist(),
        "logit_power": diag.tolist(),
        "key_freqs": own,
        "key_freqs_used": used,
        "train_loss": pair_loss(logits, train),
        "test_loss": pair_loss(logits, test) if len(test) else None,
        "train_acc": pair_accuracy(full, train, dataset.vocab.value_ids),
        "test_acc": pair_accuracy(full, test, dataset.vocab.value_ids) if len(test) else None,
        "restricted_loss": pair_loss(restricted_logits(logits, used, coef=coef), train),
        "excluded_loss": pair_loss(excluded_logits(logits, used, coef=coef), train),
        "gini_embed": gini(embed_norms),
        "gini_logits": gini(diag[1:]),
        "weight_norm": _weight_norm(model),
    }


@register_diagnosis("fourier")
def fourier_diagnosis(
    model: TransformerBridge,
    dataset: TaskDataset,
    *,
    n: int | None = None,  # noqa: ARG001  (the uniform diagnosis signature: every pair is used)
    seed: int = 0,  # noqa: ARG001
    threshold: float = 0.0,  # noqa: ARG001
) -> dict[str, Any]:
    """The ``fourier`` diagnosis: :func:`fourier_progress` with the checkpoint's own key frequencies."""
    return fourier_progress(model, dataset)


# --------------------------------------------------------------------------- over a run


@dataclass(repr=False)
class ProgressSeries(Summarized):
    """The progress measures of a run's checkpoints with one key-frequency set.

    Attributes:
        steps: checkpoint steps.
        key_freqs: the frequencies used at every step (the last checkpoint's).
        records: one :func:`fourier_progress` dict per step.
    """

    steps: list[int]
    key_freqs: list[int]
    records: list[dict[str, Any]] = field(default_factory=list)


    def summary(self) -> dict[str, Any]:
        """Steps and key frequencies."""
        return {"steps": len(self.steps), "last_step": self.steps[-1] if self.steps else None,
                "key_freqs": list(self.key_freqs)}

    def measure(self, name: str) -> list[float | None]:
        """One measure over the steps (e.g. ``restricted_loss``)."""
        return [r.get(name) for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "key_freqs": self.key_freqs, "records": self.records}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProgressSeries:
        return cls(steps=list(d["steps"]), key_freqs=list(d["key_freqs"]), records=list(d["records"]))


def progress_series(
    run: Run | str | os.PathLike[str],
    steps: Sequence[int] | None = None,
    *,
    key_freqs: Sequence[int] | None = None,
    cache: Any = True,
    device: str | None = None,
) -> ProgressSeries:
    """:func:`fourier_progress` at every (or the given) checkpoint, cached in the run.

    Args:
        key_freqs: None: the last checkpoint's key frequencies (so restricted and
            excluded loss follow one circuit over training, as Nanda et al.).

    Raises:
        ValueError: the run's task does not declare the ``fourier`` diagnosis (modular addition does).
    """
    from grokscope.series.cache import cached, context

    run_, cache_ = context(run, cache)
    from grokscope.tasks.base import get_task

    if "fourier" not in get_task(run_.config.task).diagnoses:  # the tasks whose answers are residues
        raise ValueError(f"{run_.path}: progress measures need a task that declares the 'fourier' diagnosis "
                         f"(modular addition); this run's task is {run_.config.task.task}")
    chosen = sorted(steps) if steps is not None else run_.steps()
    if not chosen:
        raise ValueError(f"{run_.path}: holds no checkpoint")
    dataset = run_.dataset()
    if key_freqs is None:
        last = cached(run_, cache_, chosen[-1], "progress", {"key_freqs": None}, device, None,
                      lambda ck: fourier_progress(ck.model, dataset))
        key_freqs = last["key_freqs"]
    used = sorted(int(k) for k in key_freqs)
    records = []
    for step in chosen:
        records.append(cached(run_, cache_, step, "progress", {"key_freqs": used}, device, None,
                              lambda ck: fourier_progress(ck.model, dataset, key_freqs=used)))
    return ProgressSeries(steps=chosen, key_freqs=used, records=records)

