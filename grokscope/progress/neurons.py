"""Modular addition's activations as functions of (a, b): the embedding's, each neuron's and each head's key frequencies (Nanda et al.)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from grokscope.progress.fourier import (
    all_pair_tokens,
    fourier_basis,
    frequency_power,
    key_frequencies,
)

if TYPE_CHECKING:
    from jaxtyping import Float
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset


# --------------------------------------------------------------------------- activations as functions of (a, b)


@torch.no_grad()
def pair_activations(model: TransformerBridge, dataset: TaskDataset, layer: int = 0) -> dict[str, torch.Tensor]:
    """Activations at ``=`` for every pair, as functions of ``(a, b)``.

    Returns:
        ``{"attn_to_a": [head, a, b]`` (attention from ``=`` to ``a``), ``"neurons":
        [neuron, a, b]`` (``blocks.{layer}.mlp.hook_post`` at ``=``)``}``.

    Example:
        >>> acts = pair_activations(model, ds)                 # doctest: +SKIP
        >>> acts["neurons"].shape                              # doctest: +SKIP
        torch.Size([512, 113, 113])
    """
    tokens, p = all_pair_tokens(dataset)
    pattern, post = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.mlp.hook_post"
    attn, neurons = [], []
    for lo in range(0, len(tokens), 4096):
        _, cache = model.run_with_cache(tokens[lo : lo + 4096], names_filter=lambda n: n in (pattern, post))
        attn.append(cache[pattern][:, :, -1, 0].float().cpu())  # [batch, head]
        neurons.append(cache[post][:, -1].float().cpu())  # [batch, d_mlp]
    return {
        "attn_to_a": torch.cat(attn).T.reshape(-1, p, p),
        "neurons": torch.cat(neurons).T.reshape(-1, p, p),
    }


def neuron_frequencies(neurons: Float[torch.Tensor, "neuron a b"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's dominant frequency and the share of its variance that frequency explains.

    A neuron's activation over ``(a, b)`` in the 2-D Fourier basis; frequency ``k``
    explains the components whose two frequencies are in ``{0, k}`` (constant excluded).
    Nanda et al. find most neurons of a grokked model > 0.85 explained by one key frequency.

    Returns:
        ``(freq [neuron], share [neuron])``.
    """
    p = neurons.shape[-1]
    basis, freqs = fourier_basis(p)
    coef = torch.einsum("ia,jb,nab->nij", basis, basis, neurons.double()).pow(2)
    coef[:, 0, 0] = 0.0
    total = coef.sum(dim=(1, 2)).clamp_min(1e-30)
    shares = []
    for k in range(1, p // 2 + 1):
        inside = (freqs == 0) | (freqs == k)
        shares.append(coef[:, inside][:, :, inside].sum(dim=(1, 2)) / total)
    share = torch.stack(shares, dim=1)  # [neuron, freq - 1]
    best = share.max(dim=1)
    return best.indices + 1, best.values


@torch.no_grad()
def head_frequencies(model: TransformerBridge, dataset: TaskDataset, layer: int = 0) -> list[dict[str, Any]]:
    """What each attention head carries to ``=``: where it looks and at which frequencies.

    For every head: its mean attention from ``=`` to ``a``, ``b`` and ``=``; the Fourier
    power of its output at ``=`` (``hook_z``, all its dimensions) as a function of ``a``
    (averaged over ``b``) and of ``b`` (averaged over ``a``), per frequency; the key
    frequencies of each (:func:`key_frequencies`) and the share of the non-constant power
    they hold.

    Returns:
        One dict per head: ``head``, ``attn`` (``{"a", "b", "eq"}``), ``power_a``,
        ``power_b`` (per frequency), ``key_a``, ``key_b``, ``norm_a``, ``norm_b`` (the
        non-constant norm of the output along ``a`` and ``b``).
    """
    tokens, p = all_pair_tokens(dataset)
    pattern, z_hook = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z"
    pats, zs = [], []
    for lo in range(0, len(tokens), 4096):
        _, cache = model.run_with_cache(tokens[lo : lo + 4096], names_filter=lambda n: n in (pattern, z_hook))
        pats.append(cache[pattern][:, :, -1].float().cpu())  # [batch, head, key_pos]
        zs.append(cache[z_hook][:, -1].float().cpu())  # [batch, head, d_head]
    pat, z = torch.cat(pats), torch.cat(zs).reshape(p, p, *zs[0].shape[1:])  # z: [a, b, head, d_head]
    out = []
    for h in range(z.shape[2]):
        along_a, along_b = z[:, :, h].mean(1), z[:, :, h].mean(0)  # [p, d_head]
        pa, pb = frequency_power(along_a), frequency_power(along_b)
        ka, kb = key_frequencies(pa), key_frequencies(pb)
        out.append({
            "head": h,
            "attn": {"a": float(pat[:, h, 0].mean()), "b": float(pat[:, h, 1].mean()), "eq": float(pat[:, h, 2].mean())},
            "power_a": pa.tolist(), "power_b": pb.tolist(), "key_a": ka, "key_b": kb,
            "key_share_a": float(pa[ka].sum() / pa[1:].sum().clamp_min(1e-30)) if ka else 0.0,
            "key_share_b": float(pb[kb].sum() / pb[1:].sum().clamp_min(1e-30)) if kb else 0.0,
            "norm_a": float(pa[1:].sum().sqrt()), "norm_b": float(pb[1:].sum().sqrt()),
        })
    return out
