"""Attention patterns read through hooks: where each head looks, per example.

Task-agnostic: positions come in as numbers (a task says what they mean).
:func:`attention_patterns` caches ``blocks.{l}.attn.hook_pattern`` of every layer;
:func:`attention_mass` gathers, per example, the weight each head puts from one query
position onto named groups of key positions (e.g. the three tokens of one edge);
:func:`top_keys` gives the position each head attends to most.

Example:
    >>> pat = attention_patterns(model, tokens)                  # doctest: +SKIP
    >>> pat.shape        # [layer, head_index, example, query, key]  # doctest: +SKIP
    >>> m = attention_mass(model, tokens, query_pos=29, key_pos=edge_pos)  # doctest: +SKIP
    >>> m.shape          # [layer, head_index, example, group]     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int

from grokscope.lens.logit import as_index_tensor, check_tokens, model_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def pattern_hook_names(n_layers: int) -> list[str]:
    """``blocks.{l}.attn.hook_pattern`` of every layer.

    Example:
        >>> pattern_hook_names(2)
        ['blocks.0.attn.hook_pattern', 'blocks.1.attn.hook_pattern']
    """
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]


def attention_patterns(
    model: TransformerBridge, tokens: Any, *, layers: Sequence[int] | None = None
) -> Float[torch.Tensor, "layer head_index example query key"]:
    """The attention pattern of every head (softmaxed weights), one forward pass.

    Args:
        model: the model (hooks on its own forward pass).
        tokens: ``[example, pos]`` token ids.
        layers: layer indices (default all).

    Returns:
        ``[layer, head_index, example, query, key]`` on the CPU, float32.
    """
    tokens = check_tokens(model, tokens)
    names = pattern_hook_names(model.cfg.n_layers)
    idx = list(range(len(names))) if layers is None else [int(x) for x in layers]
    if any(not 0 <= x < len(names) for x in idx):
        raise ValueError(f"layers must lie in [0, {len(names)}), got {idx}")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=[names[x] for x in idx])
    return torch.stack([cache[names[x]].float().cpu().transpose(0, 1) for x in idx])


def attention_mass(
    model: TransformerBridge,
    tokens: Any,
    query_pos: Any,
    key_pos: Any,
    *,
    pattern: Float[torch.Tensor, "layer head_index example query key"] | None = None,
) -> Float[torch.Tensor, "layer head_index example group"]:
    """Weight each head puts from ``query_pos`` onto each group of key positions.

    Args:
        model: the model.
        tokens: ``[example, pos]`` token ids.
        query_pos: an int or ``[example]`` query positions.
        key_pos: ``[example, group]`` key positions, or ``[example, group, member]``
            (the weights of a group's members are summed); -1 marks a missing
            member (a group with none present is NaN).
        pattern: a pattern from :func:`attention_patterns` of these tokens (skips
            the forward pass).

    Returns:
        ``[layer, head_index, example, group]``.

    Example:
        >>> attention_mass(model, tok, 5, [[0, 1]] * len(tok)).shape   # doctest: +SKIP
    """
    tokens = check_tokens(model, tokens)
    n, n_pos = tokens.shape
    q = as_index_tensor(query_pos, n, "query_pos")
    if bool((q < 0).any() or (q >= n_pos).any()):
        raise ValueError(f"query_pos must lie in [0, {n_pos})")
    k = torch.as_tensor(np.asarray(key_pos), dtype=torch.long)
    if k.ndim == 2:
        k = k[..., None]
    if k.ndim != 3 or k.shape[0] != n:
        raise ValueError(f"key_pos: expected [{n}, group] or [{n}, group, member] positions, got {tuple(k.shape)}")
    if bool((k >= n_pos).any() or (k < -1).any()):
        raise ValueError(f"key_pos must lie in [0, {n_pos}) or be -1 (missing)")
    pat = attention_patterns(model, tokens) if pattern is None else pattern
    rows = pat[:, :, torch.arange(n), q]  # [layer, head, example, key]
    present = k >= 0
    w = rows.gather(-1, k.clamp(min=0).reshape(1, 1, n, -1).expand(*rows.shape[:2], n, -1))
    w = w.reshape(*rows.shape[:2], *k.shape) * present
    out = w.sum(-1)
    return torch.where(present.any(-1), out, torch.full_like(out, float("nan")))


def top_keys(
    model: TransformerBridge,
    tokens: Any,
    query_pos: Any,
    *,
    pattern: Float[torch.Tensor, "layer head_index example query key"] | None = None,
) -> Int[torch.Tensor, "layer head_index example"]:
    """The key position each head attends to most from ``query_pos`` (per example).

    Example:
        >>> top_keys(model, tok, 5).shape       # [layer, head_index, example]  # doctest: +SKIP
    """
    tokens = check_tokens(model, tokens)
    n, n_pos = tokens.shape
    q = as_index_tensor(query_pos, n, "query_pos")
    if bool((q < 0).any() or (q >= n_pos).any()):
        raise ValueError(f"query_pos must lie in [0, {n_pos})")
    pat = attention_patterns(model, tokens) if pattern is None else pattern
    return pat[:, :, torch.arange(n), q].argmax(-1)
