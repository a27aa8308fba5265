"""Logit lens and direct logit attribution on the real model, through hooks.

Notation (the paper's): ``S[l, p]`` is the residual stream entering block ``l`` at
input position ``p`` (``l = 0`` is the embeddings) and ``S[L, p]`` the output of the
last block. Each ``S[l]`` is read at one TransformerLens hook:
``blocks.{l}.hook_resid_pre`` for ``l < L`` and ``blocks.{L-1}.hook_resid_post`` for
``l = L`` (:func:`resid_hook_names`). The logit lens decodes ``S[l, p]`` through the
model's own final norm and unembedding (``model.unembed(model.ln_final(x))``, which
on ``S[L]`` gives exactly the model's logits) and ranks a target token, either among
the whole vocabulary or among an allowed set (a token class).

:func:`lens_targets` turns a split's metadata into the paper's lens targets
(composition: the bridge at ``r1``, ``r2`` at ``r2``, the answer at the last
position; comparison: ``v1`` at ``e1``, ``v2`` at ``e2``, the three labels of the
example's attribute at ``attr``, the answer at the last position).
:func:`direct_logit_attribution` splits a final logit into the contributions of the
embeddings, every attention and MLP output (and every head), through the final
norm's scale of the final residual.

Example:
    >>> from grokscope.runs.run import Run                              # doctest: +SKIP
    >>> run = Run.open("runs/composition-tiny")                   # doctest: +SKIP
    >>> ds, model = run.dataset(), run.load_model()               # doctest: +SKIP
    >>> res = lens_split(model, ds.splits["train_inferred"], ds.vocab)  # doctest: +SKIP
    >>> res.mrr("bridge@r1")       # one value per layer l = 0..L  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from grokscope.display import Summarized
from grokscope.series.sampling import sample_rows
from grokscope.tasks.base import LensTarget  # noqa: F401  (re-exported: the lens API)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import Split
    from grokscope.tasks.vocab import Vocab

DEFAULT_BATCH_SIZE = 1024
"""Examples per forward pass in the lens and attribution helpers."""


# --------------------------------------------------------------------------- hooks and decoding


def resid_hook_names(n_layers: int) -> list[str]:
    """The hook name of every residual state ``S[l]``, ``l = 0..n_layers``.

    Example:
        >>> resid_hook_names(2)
        ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre', 'blocks.1.hook_resid_post']
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def as_index_tensor(value: Any, n: int, what: str, device: torch.device | None = None) -> Int[torch.Tensor, " batch"]:
    """An int or a length-``n`` sequence as an int64 tensor of shape ``[n]``."""
    t = torch.as_tensor(np.asarray(value), dtype=torch.long)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{what}: expected an int or {n} values, got shape {tuple(t.shape)}")
    return t.to(device) if device is not None else t


def check_tokens(
    model: TransformerBridge, tokens: Any, what: str = "tokens", *, allow_empty: bool = False
) -> Int[torch.Tensor, "batch pos"]:
    """Check input ids before they reach the model; raise a clear ValueError if unusable.

    Valid: a rectangular ``[batch, pos]`` array of integers with ``1 <= pos <= n_ctx``
    and every id in ``[0, d_vocab)``; ``batch == 0`` only when ``allow_empty``.

    Returns:
        The ids as an int64 tensor (lists and numpy arrays are converted).

    Example:
        >>> check_tokens(model, [[0, 1, 2]]).shape                  # doctest: +SKIP
        torch.Size([1, 3])
    """
    try:
        t = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{what}: not a rectangular [batch, pos] array of token ids ({e})") from None
    if t.ndim != 2:
        raise ValueError(f"{what}: expected shape [batch, pos], got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{what}: expected integer token ids, got dtype {t.dtype}")
    n, n_pos = t.shape
    if n == 0 and not allow_empty:
        raise ValueError(f"{what}: empty batch (no examples)")
    if n_pos == 0:
        raise ValueError(f"{what}: sequences of length 0; give at least one token per example")
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    if n_pos > n_ctx:
        raise ValueError(f"{what}: {n_pos} positions, but the model's context is n_ctx={n_ctx}; use shorter inputs")
    if t.numel():
        bad = t[(t < 0) | (t >= d_vocab)]
        if bad.numel():
            raise ValueError(
                f"{what}: token id {int(bad[0])} is outside the model's vocabulary [0, {d_vocab}); "
                "encode inputs with the run's vocabulary (run.dataset().vocab)"
            )
    return t.long()


def residual_stack(
    model: TransformerBridge, tokens: Int[torch.Tensor, "batch pos"]
) -> tuple[Float[torch.Tensor, "layer batch pos d_model"], Float[torch.Tensor, "batch pos d_vocab"]]:
    """Every residual state ``S[l]`` of one forward pass (one ``run_with_cache``).

    Args:
        model: the model.
        tokens: input ids.

    Returns:
        ``(resid, logits)``: ``resid[l]`` is the state at ``resid_hook_names(L)[l]``;
        ``logits`` are the model's own output.

    Example:
        >>> resid, logits = residual_stack(model, tokens)       # doctest: +SKIP
        >>> resid.shape[0] == model.cfg.n_layers + 1             # doctest: +SKIP
        True
    """
    tokens = check_tokens(model, tokens)
    names = resid_hook_names(model.cfg.n_layers)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=names)
    return torch.stack([cache[name] for name in names]), logits


def decode_resid(model: TransformerBridge, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
    """Decode residual states through the model's final norm and unembedding.

    Example:
        >>> resid, logits = residual_stack(model, tokens)                # doctest: +SKIP
        >>> torch.allclose(decode_resid(model, resid[-1]), logits)      # doctest: +SKIP
        True
    """
    shape = resid.shape
    with torch.no_grad():
        out = model.unembed(model.ln_final(resid.reshape(-1, shape[-1])))
    return out.reshape(*shape[:-1], out.shape[-1])


def token_ranks(
    logits: Float[torch.Tensor, "... d_vocab"],
    target: Int[torch.Tensor, "..."],
    allowed: Bool[torch.Tensor, "... d_vocab"] | None = None,
) -> Int[torch.Tensor, "..."]:
    """Rank (1 = top) of ``target`` among all tokens, or among the ``allowed`` ones.

    The rank is one plus the number of (allowed) tokens with a strictly larger logit.

    Example:
        >>> token_ranks(torch.tensor([[0.1, 0.5, 0.3]]), torch.tensor([2]))
        tensor([2])
        >>> token_ranks(torch.tensor([[0.1, 0.5, 0.3]]), torch.tensor([2]),
        ...             torch.tensor([[True, False, True]]))
        tensor([1])
    """
    target = target.to(logits.device)
    tgt = logits.gather(-1, target.unsqueeze(-1))
    better = logits > tgt
    if allowed is not None:
        allowed = allowed.to(logits.device)
        if not bool(allowed.gather(-1, target.unsqueeze(-1).expand(*allowed.shape[:-1], 1)).all()):
            raise ValueError("a target token is not among its allowed tokens")
        better = better & allowed
    return better.sum(-1) + 1


def allowed_mask(allowed: Any, n: int, d_vocab: int) -> Bool[torch.Tensor, "batch d_vocab"] | None:
    """An allowed-token spec as a ``[n, d_vocab]`` mask (None stays None).

    ``allowed`` is None (the whole vocabulary), a 1-D sequence of token ids shared by
    every example, or a ``[n, d_vocab]`` boolean mask.
    """
    if allowed is None:
        return None
    t = torch.as_tensor(np.asarray(allowed))
    if t.dtype == torch.bool:
        if t.shape != (n, d_vocab):
            raise ValueError(f"an allowed mask must have shape {(n, d_vocab)}, got {tuple(t.shape)}")
        return t
    if t.ndim != 1:
        raise ValueError("allowed must be None, a 1-D list of token ids or a [batch, d_vocab] bool mask")
    if t.is_floating_point() or (t.numel() and bool(((t < 0) | (t >= d_vocab)).any())):
        raise ValueError(f"allowed token ids must be integers in [0, {d_vocab}), got {t.tolist()[:10]}")
    mask = torch.zeros(d_vocab, dtype=torch.bool)
    mask[t.long()] = True
    return mask.expand(n, d_vocab)


# --------------------------------------------------------------------------- logit lens


UNTIED_REASON = (
    "not decodable: its tokens are never answers in training, so the rows of this untied "
    "unembedding for them are never trained to rank them up (tie the embeddings, "
    "model.tie_embeddings=true, as the paper does, to decode them)"
)


def unembedding_tied(model: TransformerBridge) -> bool:
    """Whether the unembedding is the embedding (the same parameter, or equal values).

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> from grokscope.runs.model import build_model
        >>> cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, tie_embeddings=True)
        >>> unembedding_tied(build_model(cfg, 10, 4, seed=0))
        True
    """
    w_e, w_u = model.W_E, model.W_U  # [d_vocab d_model], [d_model d_vocab]
    return w_u.T.shape == w_e.shape and bool(torch.equal(w_u.T, w_e))


@dataclass(repr=False)
class LensResult(Summarized):
    """Logit-lens ranks of every target at every layer ``l = 0..L``.

    Attributes:
        ranks: target name -> ``[layer, batch]`` int ranks (1 = top).
        positions: target name -> ``[batch]`` the position each rank was read at.
        token_ids: target name -> ``[batch]`` the target tokens.
        hook_names: the hook of every layer ``l`` (:func:`resid_hook_names`).
        restricted: target name -> whether ranks are among an allowed set.
        undecodable: target name -> why the lens cannot decode it in this model
            (:attr:`LensTarget.never_answer` targets of an untied model); ranked anyway.
    """

    ranks: dict[str, Int[torch.Tensor, "layer batch"]]
    positions: dict[str, Int[torch.Tensor, " batch"]]
    token_ids: dict[str, Int[torch.Tensor, " batch"]]
    hook_names: list[str]
    restricted: dict[str, bool] = field(default_factory=dict)
    undecodable: dict[str, str] = field(default_factory=dict)


    def summary(self) -> dict[str, Any]:
        """Examples, residual states, and each target's MRR at the last state."""
        n = next((int(r.shape[1]) for r in self.ranks.values()), 0)
        return {"examples": n, "states": len(self.hook_names),
                "final_mrr": {k: round(float(self.mrr(k)[-1]), 3) for k in self.names}}

    @property
    def names(self) -> list[str]:
        return list(self.ranks)

    def mrr(self, name: str) -> Float[torch.Tensor, " layer"]:
        """Mean reciprocal rank of one target at every layer.

        Example:
            >>> LensResult({"t": torch.tensor([[1, 4], [1, 1]])}, {}, {}, ["a", "b"]).mrr("t")
            tensor([0.6250, 1.0000])
        """
        return (1.0 / self.ranks[name].double()).mean(-1).float()

    def recall(self, name: str, k: int) -> Float[torch.Tensor, " layer"]:
        """Fraction of examples whose target ranks within the top ``k``, per layer."""
        return (self.ranks[name] <= k).double().mean(-1).float()

    def to_dict(self, ks: Sequence[int] = (1, 10), per_example: bool = True) -> dict[str, Any]:
        """JSON-ready: hook names, and per target MRR, recall@k and the raw ranks."""
        targets: dict[str, Any] = {}
        for name in self.ranks:
            entry: dict[str, Any] = {
                "mrr": self.mrr(name).tolist(),
                "recall": {str(k): self.recall(name, k).tolist() for k in ks},
                "restricted": bool(self.restricted.get(name, False)),
            }
            if per_example:
                entry["ranks"] = self.ranks[name].tolist()
                entry["positions"] = self.positions[name].tolist()
                entry["token_ids"] = self.token_ids[name].tolist()
            targets[name] = entry
        return {"hook_names": list(self.hook_names), "targets": targets, "undecodable": dict(self.undecodable)}


def logit_lens(
    model: TransformerBridge,
    tokens: Int[torch.Tensor, "batch pos"],
    targets: Sequence[LensTarget],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> LensResult:
    """Rank each target token at its position in every residual state ``S[l]``.

    One ``run_with_cache`` per batch collects all ``S[l]``; the states at the
    targets' positions are decoded through ``ln_final`` + ``unembed`` in one call.

    Args:
        model: the model.
        tokens: input ids (all examples the same length).
        targets: what to rank where (see :class:`LensTarget`).
        batch_size: examples per forward pass.

    Returns:
        A :class:`LensResult`.

    Example:
        >>> t = LensTarget("answer@last", 2, answers)               # doctest: +SKIP
        >>> logit_lens(model, tokens, [t]).ranks["answer@last"][-1]  # doctest: +SKIP
    """
    tokens = check_tokens(model, tokens, allow_empty=True)
    n, n_pos = tokens.shape
    d_vocab = model.cfg.d_vocab
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"lens target names must be unique, got {names}")
    pos = {t.name: as_index_tensor(t.position, n, f"target {t.name!r} position") for t in targets}
    ids = {t.name: as_index_tensor(t.token_ids, n, f"target {t.name!r} token_ids") for t in targets}
    for name in names:
        if bool((pos[name] < 0).any() or (pos[name] >= n_pos).any()):
            raise ValueError(f"target {name!r}: positions must lie in [0, {n_pos})")
        if bool((ids[name] < 0).any() or (ids[name] >= d_vocab).any()):
            raise ValueError(f"target {name!r}: token ids must lie in [0, {d_vocab}) (is a meta field -1?)")
    masks = {t.name: allowed_mask(t.allowed, n, d_vocab) for t in targets}
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_states = model.cfg.n_layers + 1
    chunks: dict[str, list[torch.Tensor]] = {name: [torch.zeros(n_states, 0, dtype=torch.long)] for name in names}
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        resid, _ = residual_stack(model, tokens[lo:hi])
        rows = torch.arange(hi - lo, device=resid.device)
        picked = torch.stack([resid[:, rows, pos[name][lo:hi].to(resid.device)] for name in names])
        logits = decode_resid(model, picked)  # [target, layer, batch, d_vocab]
        for i, name in enumerate(names):
            mask = masks[name]
            tgt = ids[name][lo:hi].expand(logits.shape[1], hi - lo)
            chunks[name].append(
                token_ranks(logits[i], tgt, None if mask is None else mask[lo:hi].expand(logits.shape[1], -1, -1)).cpu()
            )
    return LensResult(
        ranks={name: torch.cat(chunks[name], dim=1) for name in names},
        positions=pos,
        token_ids=ids,
        hook_names=resid_hook_names(model.cfg.n_layers),
        restricted={name: masks[name] is not None for name in names},
        undecodable={t.name: UNTIED_REASON for t in targets if t.never_answer and not unembedding_tied(model)},
    )


def lens_targets(split: Split, vocab: Vocab, *, within_class: bool = False, task: Any = None) -> list[LensTarget]:
    """The task's logit-lens targets for a homogeneous split (:meth:`Task.lens_targets`).

    Composition inferred (roles ``h, r1, r2``): ``bridge@r1``, ``r2@r2``, ``t@last``, and
    ``r2@r2/rel``: r2 ranked among the relation tokens only (the paper ranks over the
    whole vocabulary; at 4 layers r2 is far from the top of it, while among relations its
    rise is visible). Both r2 targets are :attr:`LensTarget.never_answer`. k-hop:
    ``b_i@r_i``, ``rk@rk`` (and ``rk@rk/rel``), ``t@last``. Comparison inferred:
    ``v1@e1``, ``v2@e2``, ``label0|1|2@attr`` and ``label@last``. Atomic splits: the
    answer at the last position.

    Args:
        split: a split with ``roles`` (not the mixed ``train`` split).
        vocab: the dataset's vocabulary.
        within_class: rank among the target's token class instead of the whole vocabulary.
        task: the registered task (a :class:`~grokscope.tasks.Task` or its name); None:
            the first registered task that knows the split's layout.

    Example:
        >>> from grokscope.tasks import composition
        >>> ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0, seed=0)
        >>> [t.name for t in lens_targets(ds.splits["train_inferred"], ds.vocab)]
        ['bridge@r1', 'r2@r2', 't@last', 'r2@r2/rel']
    """
    from grokscope.tasks.base import get_task, registered_tasks

    spec = (get_task(task) if isinstance(task, str) else task) if task is not None else None
    if not split.roles:
        hint = repr(spec.default_split) if spec is not None else "the task's default_split"
        raise ValueError(f"split {split.name!r} mixes layouts (its rows have no common roles); pick a split whose "
                         f"rows line up, such as {hint}")
    if spec is not None:
        return spec.lens_targets(split, vocab, within_class=within_class)
    for spec in registered_tasks():
        try:
            return spec.lens_targets(split, vocab, within_class=within_class)
        except (ValueError, KeyError, NotImplementedError):
            continue
    raise ValueError(f"split {split.name!r}: no registered task knows lens targets for roles {sorted(split.roles)}")


def lens_split(
    model: TransformerBridge,
    split: Split,
    vocab: Vocab,
    *,
    n: int | None = None,
    seed: int = 0,
    within_class: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    task: Any = None,
) -> LensResult:
    """:func:`logit_lens` of :func:`lens_targets` on a split (or ``n`` of its examples).

    Args:
        model: the model.
        split: a homogeneous split.
        vocab: the dataset's vocabulary.
        n: sample this many examples (``numpy.random.default_rng(seed)``); None: all.
        seed: the sampling seed.
        within_class: see :func:`lens_targets`.
        batch_size: examples per forward pass.

    Example:
        >>> res = lens_split(model, ds.splits["train_inferred"], ds.vocab, n=300)  # doctest: +SKIP
    """
    if n is not None and n < len(split):
        split = split.subset(sample_rows(len(split), n, seed))
    targets = lens_targets(split, vocab, within_class=within_class, task=task)
    return logit_lens(model, torch.from_numpy(lens_tokens(split, targets)), targets, batch_size=batch_size)


def lens_tokens(split: Split, targets: Sequence[LensTarget]) -> np.ndarray:
    """The tokens a lens over ``targets`` reads: the inputs, extended by the teacher-forced
    answer tokens when a target sits past the last input position (the tree task's path)."""
    n_in = int(split.target_pos.max()) + 1 if len(split) else 0
    width = max([n_in, *(int(np.max(t.position)) + 1 for t in targets if np.size(t.position))])
    return split.input_ids if width == n_in else split.tokens[:, :width]


def top_tokens(
    model: TransformerBridge, tokens: Int[torch.Tensor, "batch pos"]
) -> tuple[Int[torch.Tensor, "layer pos"], torch.Tensor]:
    """The most frequent logit-lens top-1 token at every ``S[l, p]`` and its share.

    Returns:
        ``(token_ids, share)``, both ``[layer, pos]``: the mode over examples of the
        argmax of the decoded state, and the fraction of examples whose argmax it is.
    """
    resid, _ = residual_stack(model, tokens)  # [layer, batch, pos, d_model]
    top = torch.stack([decode_resid(model, resid[:, :, p]).argmax(-1) for p in range(resid.shape[2])], dim=-1)
    top = top.cpu()  # [layer, batch, pos]
    n_layer, n, n_pos = top.shape
    d_vocab = model.cfg.d_vocab
    ids = torch.empty(n_layer, n_pos, dtype=torch.long)
    share = torch.empty(n_layer, n_pos)
    for layer in range(n_layer):
        for p in range(n_pos):
            counts = torch.bincount(top[layer, :, p], minlength=d_vocab)
            ids[layer, p] = int(counts.argmax())
            share[layer, p] = float(counts.max()) / max(1, n)
    return ids, share
