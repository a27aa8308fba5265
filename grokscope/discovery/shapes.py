"""Which shapes of TransformerLens model the component graph describes, read from the model.

GPT-2-style blocks (norm, attention, norm, MLP), parallel attention + MLP (GPT-NeoX / GPT-J),
grouped-query attention (Llama, Qwen2, Mistral: key and value readers per KV head) and
attention-only models are described; anything else raises one
:class:`UnsupportedModelError` naming the shape.

Example:
    >>> model_shape(model)                      # doctest: +SKIP
    {'n_kv_heads': 2, 'mlp': True, 'parallel': False}
"""

from __future__ import annotations

from typing import Any

from grokscope.errors import GrokscopeError

__all__ = ["UnsupportedModelError", "model_shape"]


class UnsupportedModelError(GrokscopeError, NotImplementedError):
    """A model whose shape the component graph cannot describe (the message names the shape)."""


def model_shape(model: Any) -> dict[str, Any]:
    """``n_kv_heads``, ``mlp`` and ``parallel`` of a TransformerLens model, or one clear error.

    Raises:
        UnsupportedModelError: naming the shape (no ``blocks``, no per-head ``q``/``k``/``v``
            projections, mixture-of-experts MLPs, a layer without attention...).
    """
    cfg = model.cfg
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) != int(cfg.n_layers):
        raise UnsupportedModelError(f"{type(model).__name__} has no TransformerLens blocks list; discovery needs a "
                                    "TransformerBridge (HF-booted or native) or a grokscope model")
    if getattr(cfg, "num_experts", None) or getattr(cfg, "n_experts", None):
        raise UnsupportedModelError("mixture-of-experts MLPs are not supported (their readers are per expert)")
    kv = getattr(cfg, "n_key_value_heads", None)
    attn_only = bool(getattr(cfg, "attn_only", False))
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    b0 = blocks[0]
    if not attn_only and not hasattr(b0, "mlp"):
        attn_only = True
    for layer, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q", "k", "v")):
            raise UnsupportedModelError(f"blocks.{layer}.attn has no separate q/k/v projections: per-head "
                                        "query/key/value readers cannot be formed")
    return {"n_kv_heads": None if kv is None else int(kv), "mlp": not attn_only, "parallel": parallel}
