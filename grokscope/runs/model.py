"""Frozen :class:`~grokscope.runs.config.ModelConfig` -> TransformerLens config -> model.

The model is TransformerLens 4.x's TL-native GPT-2-style transformer
(``TransformerBridge.boot_native``): pre-LN blocks with split Q/K/V/O ``nn.Linear``
projections (all with biases), a two-layer MLP, learned absolute positions (or
rotary), a final norm and a bias-free unembedding. Hook names are TransformerLens's
(``blocks.{l}.hook_resid_post`` is an alias of the canonical ``blocks.{l}.hook_out``).

What is trained, and how it starts (``init_mode="gpt2"``, ``std = init_range``;
the same scheme as HF ``GPT2PreTrainedModel._init_weights``):

* ``embed.weight`` [d_vocab, d_model] and ``pos_embed.weight`` [n_ctx, d_model]
  (standard positions only): N(0, std).
* per block: ``ln1``/``ln2`` weight 1, bias 0; ``attn.{q,k,v}.weight`` N(0, std);
  ``mlp.in.weight`` N(0, std); the two projections that write into the residual
  stream, ``attn.o.weight`` and ``mlp.out.weight``, N(0, std / sqrt(2 * n_layers))
  with ``n_layers`` the full depth (also when layers are shared); every bias 0.
* ``ln_final`` weight 1, bias 0; ``unembed.weight`` [d_vocab, d_model] N(0, std).
* ``unembed.bias`` is NOT trained: the native head has no bias and TransformerLens
  keeps a zero buffer under that key so ``b_U`` and state dicts stay uniform.

``tie_embeddings=True``: TransformerLens stores ``tie_word_embeddings`` in its
config but the native model ignores it, so :func:`build_model` ties explicitly:
the unembedding's ``weight`` is the same ``nn.Parameter`` as the embedding's (both
are [d_vocab, d_model]); the embedding's init is kept. ``share_layers=True``
(the paper's Appendix E.2): block ``l + n_layers // 2`` holds the very
``nn.Parameter`` objects of block ``l`` (the upper blocks' own init is discarded),
while every block keeps its own hook points. ``model.parameters()`` counts a
shared parameter once and its gradient is the sum over its uses. Beware:
``model.enable_compatibility_mode()`` (fold_ln, centering) replaces parameters and
so silently unties and unshares them (log-probs are kept); use it only on a
throwaway copy for analysis, never on a model you train or save.

Checkpoints are plain: :func:`save_tensors` gives every state-dict key its own
contiguous copy (safetensors refuses shared storage), so a user without grokscope
can rebuild the model from :func:`bridge_config_dict` and ``load_state_dict`` the
file (a shared/tied model then loads as an unshared one with equal values, which
computes the same logits).

Dropout (``ModelConfig.dropout``, the paper's 0.1) is not part of the model: the native
model has none. :func:`dropout` applies it through hooks on the real model, at GPT-2's
four places (:func:`dropout_hook_names`), only inside its context, which the training
step opens; evaluation and every analysis run the model without it.

Example:
    >>> from grokscope.runs.config import ModelConfig
    >>> cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=128)
    >>> model = build_model(cfg, d_vocab=37, n_ctx=8, seed=0)
    >>> model(torch.zeros(1, 4, dtype=torch.long)).shape
    torch.Size([1, 4, 37])
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from jaxtyping import Float
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.runs.config import ModelConfig

_CONFIG_DICT_DROPPED_KEYS = ("device", "dtype")
"""Left out of :func:`bridge_config_dict`: the machine's device, and the dtype, which
``from_dict`` would not turn back into a ``torch.dtype`` (the bridge records the
weights' real dtype and device when it is built anyway)."""


def _import_tl() -> tuple[Any, Any]:
    """Import TransformerLens lazily (~5 s); registers ``TransformerBridge.boot_native``."""
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridgeConfig, TransformerBridge


def _check_dims(d_vocab: int, n_ctx: int, seed: int) -> None:
    if d_vocab < 1:
        raise ValueError(f"d_vocab must be >= 1, got {d_vocab}")
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def bridge_config(cfg: ModelConfig, d_vocab: int, n_ctx: int, seed: int) -> TransformerBridgeConfig:
    """Translate a :class:`ModelConfig` into a TransformerLens ``TransformerBridgeConfig``.

    ``init_range`` becomes ``initializer_range`` with ``init_mode="gpt2"`` (see the
    module docstring); ``seed`` seeds TransformerLens's scoped init generator.
    Layer sharing has no TransformerLens field: :func:`build_model` applies it.

    Args:
        cfg: the model shape.
        d_vocab: vocabulary size (input and output).
        n_ctx: maximum sequence length.
        seed: init seed (the run seed).

    Returns:
        A fresh config; ``TransformerBridge.boot_native`` deep-copies it.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> bridge_config(ModelConfig(d_model=64, n_heads=4), 10, 4, 0).d_head
        16
    """
    _check_dims(d_vocab, n_ctx, seed)
    TransformerBridgeConfig, _ = _import_tl()
    return TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_layers=cfg.n_layers,
        n_ctx=n_ctx,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=d_vocab,
        d_vocab_out=d_vocab,
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type,
        positional_embedding_type=cfg.positional_embedding_type,
        init_mode="gpt2",
        initializer_range=float(cfg.init_range),
        init_weights=True,
        seed=int(seed),
        # Recorded for readers; the native model ignores it (build_model ties).
        tie_word_embeddings=bool(cfg.tie_embeddings),
        model_name="grokscope",
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy / 0-d torch
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def bridge_config_dict(cfg: ModelConfig, d_vocab: int, n_ctx: int, seed: int) -> dict[str, Any]:
    """The :func:`bridge_config` as a JSON-serializable dict for checkpoints.

    Every TransformerLens field is kept (so a later TransformerLens with other
    defaults rebuilds the same model) except ``device`` and ``dtype`` (see
    ``_CONFIG_DICT_DROPPED_KEYS``); numpy scalars become Python numbers.
    ``TransformerBridgeConfig.from_dict(d)`` accepts it as is.

    Args:
        cfg: the model shape.
        d_vocab: vocabulary size.
        n_ctx: maximum sequence length.
        seed: init seed.

    Returns:
        A dict of JSON types only.

    Raises:
        TypeError: if TransformerLens added a field this function cannot serialize.

    Example:
        >>> import json
        >>> from grokscope.runs.config import ModelConfig
        >>> d = bridge_config_dict(ModelConfig(d_model=64, n_heads=4), 10, 4, 0)
        >>> json.loads(json.dumps(d))["initializer_range"]
        0.02
    """
    raw = bridge_config(cfg, d_vocab, n_ctx, seed).to_dict()
    out = {k: _jsonable(v) for k, v in raw.items() if k not in _CONFIG_DICT_DROPPED_KEYS}
    bad = []
    for key, value in out.items():
        try:
            json.dumps(value)
        except TypeError:
            bad.append(f"{key}={value!r} ({type(value).__name__})")
    if bad:
        raise TypeError(f"TransformerLens config fields that are not JSON-serializable: {', '.join(bad)}")
    return out


def _tie_embeddings(model: TransformerBridge) -> None:
    embed = model.embed.original_component
    head = model.unembed.original_component
    if head.weight.shape != embed.weight.shape:
        raise NotImplementedError(
            f"cannot tie: unembedding weight {tuple(head.weight.shape)} != embedding "
            f"weight {tuple(embed.weight.shape)}"
        )
    head.weight = embed.weight


def _share_layers(model: TransformerBridge, n_unique: int) -> None:
    for lower in range(n_unique):
        src, dst = model.blocks[lower], model.blocks[lower + n_unique]
        for name, param in list(src.named_parameters(remove_duplicate=False)):
            owner_name, _, leaf = name.rpartition(".")
            owner = dst.get_submodule(owner_name)
            old = getattr(owner, leaf)
            if not isinstance(old, torch.nn.Parameter) or old.shape != param.shape:
                raise RuntimeError(f"cannot share blocks.{lower}.{name}: upper block has {old!r}")
            setattr(owner, leaf, param)


def build_model(
    cfg: ModelConfig,
    d_vocab: int,
    n_ctx: int,
    seed: int,
    device: str | torch.device | None = None,
) -> TransformerBridge:
    """Build a freshly initialized model (the same seed gives the same weights).

    Init uses TransformerLens's scoped generator inside ``torch.random.fork_rng``, so
    the global RNG is left untouched. Tying and layer sharing are then applied at
    ``nn.Parameter`` level (see the module docstring).

    Args:
        cfg: the model shape.
        d_vocab: vocabulary size.
        n_ctx: maximum sequence length.
        seed: init seed.
        device: where to put the weights (None: CPU).

    Returns:
        The ``TransformerBridge``; ``model(tokens)`` gives logits [batch pos d_vocab].
        Note ``model.n_params_total`` is counted before sharing; use :func:`n_params`.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, share_layers=True)
        >>> m = build_model(cfg, 10, 4, seed=0)
        >>> m.blocks[0].attn.q.weight is m.blocks[1].attn.q.weight
        True
    """
    _, TransformerBridge = _import_tl()
    model = TransformerBridge.boot_native(bridge_config(cfg, d_vocab, n_ctx, seed), device=device)
    if cfg.tie_embeddings:
        _tie_embeddings(model)
    if cfg.share_layers:
        _share_layers(model, cfg.n_unique_blocks)
    return model


def shared_groups(model: TransformerBridge) -> list[tuple[str, ...]]:
    """State-dict keys that name one and the same tensor, grouped (groups of >= 2).

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, tie_embeddings=True)
        >>> shared_groups(build_model(cfg, 10, 4, seed=0))
        [('embed.weight', 'unembed.weight')]
    """
    by_id: dict[int, list[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(value), []).append(key)
    return [tuple(keys) for keys in by_id.values() if len(keys) > 1]


def save_tensors(model: TransformerBridge) -> dict[str, Float[torch.Tensor, "..."]]:
    """The full state dict, each tensor a detached contiguous copy of its own.

    Shared and tied parameters appear under every key that names them, so
    ``safetensors.torch.save_file`` accepts the result and a plain TransformerLens
    model can ``load_state_dict(..., strict=True)`` it.

    Args:
        model: a model from :func:`build_model`.

    Returns:
        TransformerLens-format keys (``blocks.0.attn.q.weight``) -> tensors, on the
        model's device.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> m = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64), 10, 4, 0)
        >>> save_tensors(m)["embed.weight"].shape
        torch.Size([10, 32])
    """
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def load_tensors(
    model: TransformerBridge,
    tensors: Mapping[str, Float[torch.Tensor, "..."]],
    strict: bool = True,
) -> Any:
    """Load a :func:`save_tensors` dict in place, keeping tied/shared parameters shared.

    Values are copied into the existing parameters, so parameters that the model
    shares stay single objects. Keys that name one shared parameter must hold equal
    values (they do in any file saved from a model with the same sharing).

    Args:
        model: a model from :func:`build_model` with the same config.
        tensors: TransformerLens-format state dict (e.g. ``safetensors.torch.load_file``).
        strict: refuse missing or unexpected keys (TransformerLens's ``load_state_dict``).

    Returns:
        ``(missing_keys, unexpected_keys)`` as ``load_state_dict`` returns them.

    Raises:
        ValueError: keys of one shared parameter hold different values.
        RuntimeError: missing/unexpected keys (strict) or shapes that do not match.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64)
        >>> a, b = build_model(cfg, 10, 4, seed=0), build_model(cfg, 10, 4, seed=1)
        >>> _ = load_tensors(b, save_tensors(a))
        >>> torch.equal(a.embed.W_E, b.embed.W_E)
        True
    """
    groups = shared_groups(model)
    for keys in groups:
        present = [k for k in keys if k in tensors]
        for key in present[1:]:
            if not torch.equal(tensors[present[0]].to(tensors[key].device), tensors[key]):
                raise ValueError(
                    f"{present[0]!r} and {key!r} are one shared parameter in this model but hold "
                    "different values; the tensors come from a model built with other "
                    "tie_embeddings/share_layers settings (check the run's model config)"
                )
    result = model.load_state_dict(dict(tensors), strict=strict)
    if shared_groups(model) != groups:
        raise RuntimeError("loading broke parameter sharing; this is a grokscope bug")
    return result


def n_params(model: torch.nn.Module) -> int:
    """Number of trainable scalars, each shared/tied parameter counted once.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, tie_embeddings=True)
        >>> n_params(build_model(cfg, 10, 4, seed=0))
        17600
    """
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in unique.values())


def decay_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay weight matrices, not biases or norm weights.

    Every parameter with two or more dimensions (token and position embeddings,
    Q/K/V/O, MLP in/out, unembedding) gets ``weight_decay``; vectors (all biases,
    LayerNorm/RMSNorm weights) get 0. Each unique parameter appears exactly once
    (a tied or shared parameter is one parameter).

    Args:
        model: the model.
        weight_decay: decay for the weight matrices.

    Returns:
        Non-empty groups ``{"params": [...], "weight_decay": float}`` for
        ``torch.optim.AdamW``.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> m = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64), 10, 4, 0)
        >>> [(len(g["params"]), g["weight_decay"]) for g in decay_param_groups(m, 0.1)]
        [(15, 0.1), (22, 0.0)]
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for _, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def dropout_hook_names(n_layers: int) -> list[str]:
    """Where GPT-2 applies dropout, as hook names, in the order a forward pass reaches them.

    ``embd_pdrop`` on the summed token and position embedding (``blocks.0.hook_resid_pre``);
    per block ``attn_pdrop`` on the attention pattern (after the softmax) and
    ``resid_pdrop`` on the two residual writes, attention out and MLP out.

    Example:
        >>> dropout_hook_names(1)
        ['blocks.0.hook_resid_pre', 'blocks.0.attn.hook_pattern', 'blocks.0.hook_attn_out', 'blocks.0.hook_mlp_out']
    """
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
    return names


@contextmanager
def dropout(model: TransformerBridge, p: float, generator: torch.Generator) -> Iterator[None]:
    """Inverted dropout at GPT-2's places (:func:`dropout_hook_names`) while the context is open.

    Each hook zeroes an element with probability ``p`` and scales the rest by
    ``1 / (1 - p)``, as ``torch.nn.functional.dropout``. The masks come from
    ``generator`` only (drawn in forward order), so the same generator state gives the
    same masks; the hooks are removed on exit, also on error. ``p == 0`` adds no hooks.

    Args:
        model: a model from :func:`build_model`.
        p: drop probability in [0, 1).
        generator: a ``torch.Generator`` on the model's device.

    Example:
        >>> from grokscope.runs.config import ModelConfig
        >>> m = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64), 10, 4, 0)
        >>> x = torch.zeros(1, 4, dtype=torch.long)
        >>> with dropout(m, 0.1, torch.Generator().manual_seed(0)):
        ...     noisy = m(x)
        >>> bool((noisy != m(x)).any())
        True
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if p == 0:
        yield
        return

    def drop(t: torch.Tensor, hook: Any) -> torch.Tensor:
        keep = torch.rand(t.shape, generator=generator, device=t.device) >= p
        return t * keep / (1 - p)

    with model.hooks(fwd_hooks=[(name, drop) for name in dropout_hook_names(model.cfg.n_layers)]):
        yield
