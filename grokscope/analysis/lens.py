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
    >>> from grokscope.run import Run                              # doctest: +SKIP
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

from grokscope.analysis.sampling import sample_rows
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
        >>> from grokscope.config import ModelConfig
        >>> from grokscope.model import build_model
        >>> cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, tie_embeddings=True)
        >>> unembedding_tied(build_model(cfg, 10, 4, seed=0))
        True
    """
    w_e, w_u = model.W_E, model.W_U  # [d_vocab d_model], [d_model d_vocab]
    return w_u.T.shape == w_e.shape and bool(torch.equal(w_u.T, w_e))


@dataclass
class LensResult:
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
    from grokscope.tasks.base import _REGISTRY, get_task

    if not split.roles:
        raise ValueError(f"split {split.name!r} mixes layouts (no roles); pick a probe split such as 'train_inferred'")
    if task is not None:
        spec = get_task(task) if isinstance(task, str) else task
        return spec.lens_targets(split, vocab, within_class=within_class)
    for spec in _REGISTRY.values():
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
    return logit_lens(model, torch.from_numpy(split.input_ids), targets, batch_size=batch_size)


# --------------------------------------------------------------------------- direct logit attribution


@dataclass
class DLAResult:
    """Direct logit attribution of one logit (or logit difference) per example.

    ``values.sum(0) + bias == logit`` (up to float error); per layer,
    ``head_values[l].sum(0) + attn_bias_values[l]`` equals the value of
    ``blocks.{l}.hook_attn_out``.

    Attributes:
        components: hook name of every component: ``hook_embed``, ``hook_pos_embed``
            (learned positions only), then ``blocks.{l}.hook_attn_out`` and
            ``blocks.{l}.hook_mlp_out`` per layer.
        values: ``[component, batch]`` contributions.
        bias: ``[batch]`` what no component writes: the final norm's bias and the
            unembedding bias, projected on the target direction.
        logit: ``[batch]`` the model's own logit (difference) at the position.
        head_values: ``[layer, head_index, batch]`` per-head share of each attention
            output (the output bias excluded), or None.
        attn_bias_values: ``[layer, batch]`` the attention output bias's share, or None.
    """

    components: list[str]
    values: Float[torch.Tensor, "component batch"]
    bias: Float[torch.Tensor, " batch"]
    logit: Float[torch.Tensor, " batch"]
    head_values: Float[torch.Tensor, "layer head_index batch"] | None = None
    attn_bias_values: Float[torch.Tensor, "layer batch"] | None = None

    def to_dict(self, per_example: bool = True) -> dict[str, Any]:
        """JSON-ready: mean contribution per component (and per head), raw values."""
        out: dict[str, Any] = {
            "components": list(self.components),
            "mean": self.values.mean(-1).tolist(),
            "bias_mean": float(self.bias.mean()),
            "logit_mean": float(self.logit.mean()),
        }
        if self.head_values is not None:
            out["head_mean"] = self.head_values.mean(-1).tolist()
        if per_example:
            out["values"] = self.values.tolist()
            out["bias"] = self.bias.tolist()
            out["logit"] = self.logit.tolist()
            if self.head_values is not None:
                out["head_values"] = self.head_values.tolist()
        return out


def _final_norm_params(model: TransformerBridge) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
    kind = model.cfg.normalization_type
    if kind is None:
        return "none", None, None
    ln = model.ln_final.original_component
    w = getattr(ln, "weight", None)
    b = getattr(ln, "bias", None)
    if kind in ("LN", "LNPre"):
        return "LN", w, b
    if kind in ("RMS", "RMSPre"):
        return "RMS", w, None
    raise NotImplementedError(f"direct logit attribution does not know normalization {kind!r}")


def direct_logit_attribution(
    model: TransformerBridge,
    tokens: Int[torch.Tensor, "batch pos"],
    position: Any,
    target_ids: Any,
    baseline_ids: Any = None,
    per_head: bool = True,
) -> DLAResult:
    """Split the logit of ``target_ids`` at ``position`` into component contributions.

    The standard DLA: each component's output ``c`` (embeddings, every
    ``hook_attn_out``, every ``hook_mlp_out``) is centred (LayerNorm), divided by the
    final norm's scale of the *final* residual at that position (read at
    ``ln_final.hook_scale``), multiplied by the norm weight and projected on the
    unembedding column of the target (minus that of ``baseline_ids`` if given).

    Args:
        model: the model.
        tokens: input ids.
        position: where the logit is read (an int, or one per example).
        target_ids: ``[batch]`` tokens whose logit is attributed.
        baseline_ids: optional ``[batch]`` tokens: attribute ``logit(target) -
            logit(baseline)`` instead.
        per_head: also split every attention output into heads (via ``attn.hook_z``).

    Returns:
        A :class:`DLAResult`.

    Example:
        >>> dla = direct_logit_attribution(model, tokens, 2, answers)   # doctest: +SKIP
        >>> torch.allclose(dla.values.sum(0) + dla.bias, dla.logit, atol=1e-4)  # doctest: +SKIP
        True
    """
    tokens = check_tokens(model, tokens)
    n, n_pos = tokens.shape
    n_layers = model.cfg.n_layers
    device = model_device(model)
    pos = as_index_tensor(position, n, "position", device)
    if bool((pos < 0).any() or (pos >= n_pos).any()):
        raise ValueError(f"position must lie in [0, {n_pos})")
    tgt = as_index_tensor(target_ids, n, "target_ids", device)
    ids_to_check = [("target_ids", tgt)]
    if baseline_ids is not None:
        ids_to_check.append(("baseline_ids", as_index_tensor(baseline_ids, n, "baseline_ids", device)))
    for what, ids in ids_to_check:
        if bool((ids < 0).any() or (ids >= model.cfg.d_vocab).any()):
            raise ValueError(f"{what} must lie in [0, {model.cfg.d_vocab})")
    components = ["hook_embed"]
    if model.cfg.positional_embedding_type == "standard":
        components.append("hook_pos_embed")
    for layer in range(n_layers):
        components += [f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
    zs = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)] if per_head else []
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens.to(device), names_filter=[*components, *zs, "ln_final.hook_scale"]
        )
        rows = torch.arange(n, device=device)
        w_u = model.W_U  # [d_model, d_vocab]
        direction = w_u[:, tgt].T  # [batch, d_model]
        b_u = model.b_U[tgt]
        logit = logits[rows, pos, tgt]
        if baseline_ids is not None:
            base = as_index_tensor(baseline_ids, n, "baseline_ids", device)
            direction = direction - w_u[:, base].T
            b_u = b_u - model.b_U[base]
            logit = logit - logits[rows, pos, base]
        kind, w_ln, b_ln = _final_norm_params(model)
        if kind == "none":
            scale = torch.ones(n, 1, device=device)
        else:
            scale = cache["ln_final.hook_scale"][rows, pos]  # [batch, 1]
        folded = direction * w_ln if w_ln is not None else direction  # [batch, d_model]

        def project(x: Float[torch.Tensor, "... batch d_model"]) -> Float[torch.Tensor, "... batch"]:
            if kind == "LN":
                x = x - x.mean(-1, keepdim=True)
            return ((x / scale) * folded).sum(-1)

        values = torch.stack([project(cache[name][rows, pos]) for name in components])
        bias = b_u + direction @ b_ln if b_ln is not None else b_u.clone()
        head_values = attn_bias_values = None
        if per_head:
            per_layer, bias_layer = [], []
            for layer, name in enumerate(zs):
                z = cache[name][rows, pos]  # [batch, head_index, d_head]
                attn = model.blocks[layer].attn
                heads = torch.einsum("bhd,hdm->hbm", z, attn.W_O)  # [head_index, batch, d_model]
                per_layer.append(project(heads))
                bias_layer.append(project(attn.b_O.expand(n, -1)))
            head_values = torch.stack(per_layer)
            attn_bias_values = torch.stack(bias_layer)
    return DLAResult(
        components=components,
        values=values.cpu(),
        bias=bias.cpu(),
        logit=logit.cpu(),
        head_values=None if head_values is None else head_values.cpu(),
        attn_bias_values=None if attn_bias_values is None else attn_bias_values.cpu(),
    )


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
