"""Direct logit attribution: each component's write projected on the answer's unembedding.

Reads the components' outputs through hooks on the real model (a cached forward pass)
and the final norm's scale, never a copied forward pass. Re-exported by
:mod:`grokscope.lens.logit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from grokscope.lens.logit import (
    as_index_tensor,
    check_tokens,
    model_device,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


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


