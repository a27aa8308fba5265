"""The patching engine: activations replaced at sites through hooks on the real model.

:func:`run_patches` runs the clean inputs once per patch (a tuple of :class:`Site`,
hook name + position + head), with the corrupt run's activation written at each site by
hooks; every (patch, example) pair is a row of one big batch. Rows whose patched value
equals the clean one (every state before the changed token, under the causal mask) are
not run: they are the clean run. The forward pass is never re-implemented.

Example:
    >>> Site("blocks.0.hook_resid_pre", 1).to_dict()
    {'hook_name': 'blocks.0.hook_resid_pre', 'position': 1, 'head': None}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from grokscope.lens.logit import (
    allowed_mask,
    as_index_tensor,
    check_tokens,
    decode_resid,
    model_device,
    resid_hook_names,
    token_ranks,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SITE_KINDS: tuple[str, ...] = ("resid", "attn", "mlp", "head")
DEFAULT_BATCH_SIZE = 4096
"""Rows (site x example pairs) per patched forward pass."""


@dataclass(frozen=True)
class Site:
    """One place whose activation is replaced: a hook, a position, optionally a head.

    Attributes:
        hook_name: a TransformerLens hook name (``blocks.3.hook_resid_pre``).
        position: input position, or None for every position.
        head: head index for ``attn.hook_z`` / ``attn.hook_q`` etc., None for all.

    Example:
        >>> Site("blocks.0.hook_resid_pre", 1).to_dict()
        {'hook_name': 'blocks.0.hook_resid_pre', 'position': 1, 'head': None}
    """

    hook_name: str
    position: int | None = None
    head: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"hook_name": self.hook_name, "position": self.position, "head": self.head}


Patch = tuple[Site, ...]
"""Sites patched together in one run (the empty patch is the clean run)."""


@dataclass(frozen=True)
class Readout:
    """A logit-lens rank read in the patched run at a residual hook and position.

    Attributes:
        name: a label.
        hook_name: a residual-stream hook (decoded through ``ln_final`` + ``unembed``).
        position: an int, or one per example.
        token_ids: ``[example]`` tokens to rank.
        allowed: None (whole vocabulary), 1-D token ids, or ``[example, d_vocab]`` mask.
    """

    name: str
    hook_name: str
    position: Any
    token_ids: Any
    allowed: Any = None


@dataclass
class PatchOutput:
    """What :func:`run_patches` reads from every (patch, example) run.

    Attributes:
        top1: ``[patch, example]`` argmax token at the read position.
        logits: ``[patch, example, k]`` logits of the requested answer tokens.
        readout_ranks: readout name -> ``[patch, example]`` ranks.
        n_rows_run: (patch, example) rows that were actually run patched.
    """

    top1: Int[torch.Tensor, "patch example"]
    logits: Float[torch.Tensor, "patch example k"]
    readout_ranks: dict[str, Int[torch.Tensor, "patch example"]]
    n_rows_run: int = 0


def run_patches(
    model: TransformerBridge,
    clean: Int[torch.Tensor, "example pos"],
    corrupt: Int[torch.Tensor, "example pos"],
    patches: Sequence[Patch],
    *,
    answer_ids: Int[torch.Tensor, "example k"] | None = None,
    read_pos: Any = None,
    readouts: Sequence[Readout] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_unchanged: bool = True,
) -> PatchOutput:
    """Run the clean inputs once per patch, each patch copying ``corrupt``'s activations.

    The corrupt inputs run once with a cache of the hooks the patches name. Then the
    (patch, example) pairs are stacked as rows of large batches; per batch, one hook
    per hook name writes ``cache[hook][example, position(, head)]`` into the rows of
    every patch that names that hook, on ``model.run_with_hooks`` (hooks are removed
    after every pass).

    Args:
        model: the model (its forward pass is used as is).
        clean: ``[example, pos]`` inputs to patch into.
        corrupt: ``[example, pos]`` inputs whose activations are copied (same shape).
        patches: each a tuple of :class:`Site` patched together.
        answer_ids: ``[example, k]`` tokens whose logits to return (None: none).
        read_pos: where the prediction is read (an int or one per example;
            default the last position).
        readouts: logit-lens ranks to read in the patched runs.
        batch_size: rows per forward pass.
        skip_unchanged: run only the (patch, example) rows where some patched value
            differs from the clean run's; the other rows (e.g. every position before
            the changed token, under the causal mask) are filled from one clean run,
            which is what patching an identical value computes. False: run every row.

    Returns:
        A :class:`PatchOutput`.

    Example:
        >>> patches = [(Site(f"blocks.{l}.hook_resid_pre", 1),) for l in range(2)]  # doctest: +SKIP
        >>> out = run_patches(model, clean, corrupt, patches)             # doctest: +SKIP
        >>> out.top1.shape     # [patch, example]                          # doctest: +SKIP
    """
    clean = check_tokens(model, clean, "clean", allow_empty=True)
    corrupt = check_tokens(model, corrupt, "corrupt", allow_empty=True)
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} must have one shape")
    device = model_device(model)
    n, n_pos = clean.shape
    d_vocab = model.cfg.d_vocab
    clean, corrupt = clean.to(device), corrupt.to(device)
    read = as_index_tensor(n_pos - 1 if read_pos is None else read_pos, n, "read_pos", device)
    if bool((read < 0).any() or (read >= n_pos).any()):
        raise ValueError(f"read_pos must lie in [0, {n_pos})")
    if answer_ids is None:
        answers = torch.zeros(n, 0, dtype=torch.long, device=device)
    else:
        given = torch.as_tensor(np.asarray(answer_ids))
        if given.is_floating_point() or given.dtype == torch.bool:
            raise ValueError(f"answer_ids must be integer token ids, got dtype {given.dtype}")
        k = given.shape[-1] if given.ndim == 2 else 1
        if given.numel() != n * k:
            raise ValueError(f"answer_ids: expected [{n}, k] token ids, got shape {tuple(given.shape)}")
        answers = given.long().to(device).reshape(n, k)
        if bool((answers < 0).any() or (answers >= d_vocab).any()):
            raise ValueError(f"answer_ids must lie in [0, {d_vocab})")
    for patch in patches:
        for s in patch:
            if s.position is not None and not 0 <= s.position < n_pos:
                raise ValueError(f"{s}: position outside [0, {n_pos})")
    hook_names = sorted({s.hook_name for patch in patches for s in patch})
    ro_pos = {r.name: as_index_tensor(r.position, n, f"readout {r.name!r} position", device) for r in readouts}
    ro_ids = {r.name: as_index_tensor(r.token_ids, n, f"readout {r.name!r} token_ids", device) for r in readouts}
    ro_mask = {r.name: allowed_mask(r.allowed, n, model.cfg.d_vocab) for r in readouts}
    if len(ro_pos) != len(readouts):
        raise ValueError("readout names must be unique")
    for r in readouts:
        if bool((ro_pos[r.name] < 0).any() or (ro_pos[r.name] >= n_pos).any()):
            raise ValueError(f"readout {r.name!r}: positions must lie in [0, {n_pos})")
        if bool((ro_ids[r.name] < 0).any() or (ro_ids[r.name] >= d_vocab).any()):
            raise ValueError(f"readout {r.name!r}: token ids must lie in [0, {d_vocab})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n == 0:  # nothing to run: empty outputs of the right shapes
        return PatchOutput(
            top1=torch.empty(len(patches), 0, dtype=torch.long),
            logits=torch.empty(len(patches), 0, answers.shape[1]),
            readout_ranks={r.name: torch.empty(len(patches), 0, dtype=torch.long) for r in readouts},
        )

    n_patch = len(patches)
    top1 = torch.empty(n_patch, n, dtype=torch.long)
    logits_out = torch.empty(n_patch, n, answers.shape[1])
    ro_out = {r.name: torch.empty(n_patch, n, dtype=torch.long) for r in readouts}
    with torch.no_grad():
        src: dict[str, torch.Tensor] = {}
        if hook_names:
            _, cache = model.run_with_cache(corrupt, names_filter=hook_names)
            src = {name: cache[name] for name in hook_names}
            del cache
        # Which (patch, example) rows must run: all, or only those where some patched
        # value differs from the clean run's (the others are the clean run exactly).
        active = torch.ones(n_patch, n, dtype=torch.bool)
        if skip_unchanged:
            ro_names = sorted({r.hook_name for r in readouts})
            clean_logits, cache = model.run_with_cache(clean, names_filter=sorted({*hook_names, *ro_names}))
            final = clean_logits[torch.arange(n, device=device), read]
            top1[:] = final.argmax(-1).cpu()
            logits_out[:] = final.gather(-1, answers).float().cpu()[None]
            for r in readouts:
                resid = cache[r.hook_name][torch.arange(n, device=device), ro_pos[r.name]]
                ro_out[r.name][:] = _readout_ranks(model, resid, ro_ids[r.name], ro_mask[r.name]).cpu()
            for j, patch in enumerate(patches):
                differs = torch.zeros(n, dtype=torch.bool, device=device)
                for st in patch:
                    a = src[st.hook_name] if st.position is None else src[st.hook_name][:, st.position]
                    b = cache[st.hook_name] if st.position is None else cache[st.hook_name][:, st.position]
                    if st.head is not None:
                        a, b = a[..., st.head, :], b[..., st.head, :]
                    differs |= (a != b).reshape(n, -1).any(-1)
                active[j] = differs.cpu()
            del cache
        pj, pi = (x.to(device) for x in torch.nonzero(active, as_tuple=True))  # sorted by patch
        all_pos = torch.arange(n_pos, device=device)
        for lo in range(0, len(pj), batch_size):
            hi = min(len(pj), lo + batch_size)
            jc, ex_rows = pj[lo:hi], pi[lo:hi]
            # per (hook, head-or-not): row, position, example, head indices
            index: dict[tuple[str, bool], list[list[torch.Tensor]]] = {}
            js, counts = torch.unique_consecutive(jc, return_counts=True)
            a = 0
            for j, count in zip(js.tolist(), counts.tolist()):
                rows = torch.arange(a, a + count, device=device)
                ex = ex_rows[a : a + count]
                a += count
                for st in patches[j]:
                    if st.position is None:
                        r_ = rows.repeat_interleave(n_pos)
                        e_ = ex.repeat_interleave(n_pos)
                        p_ = all_pos.repeat(len(rows))
                    else:
                        r_, e_, p_ = rows, ex, torch.full_like(rows, st.position)
                    lists = index.setdefault((st.hook_name, st.head is not None), [[], [], [], []])
                    lists[0].append(r_)
                    lists[1].append(p_)
                    lists[2].append(e_)
                    lists[3].append(torch.full_like(r_, -1 if st.head is None else st.head))
            fwd_hooks = []
            for (name, has_head), lists in index.items():
                r_, p_, e_, h_ = (torch.cat(x) for x in lists)
                fwd_hooks.append((name, _patch_hook(src[name], r_, p_, e_, h_ if has_head else None)))
            captured: dict[str, torch.Tensor] = {}
            for r in readouts:
                fwd_hooks.append((r.hook_name, _read_hook(captured, r.name, ro_pos[r.name][ex_rows])))
            logits = model.run_with_hooks(clean[ex_rows], fwd_hooks=fwd_hooks)
            final = logits[torch.arange(hi - lo, device=device), read[ex_rows]]
            jc_cpu, ex_cpu = jc.cpu(), ex_rows.cpu()
            top1[jc_cpu, ex_cpu] = final.argmax(-1).cpu()
            logits_out[jc_cpu, ex_cpu] = final.gather(-1, answers[ex_rows]).float().cpu()
            for r in readouts:
                mask = ro_mask[r.name]
                ro_out[r.name][jc_cpu, ex_cpu] = _readout_ranks(
                    model, captured[r.name], ro_ids[r.name][ex_rows], None if mask is None else mask[ex_cpu]
                ).cpu()
    return PatchOutput(top1=top1, logits=logits_out, readout_ranks=ro_out, n_rows_run=len(pj))


def _readout_ranks(
    model: TransformerBridge,
    resid: Float[torch.Tensor, "row d_model"],
    token_ids: Int[torch.Tensor, " row"],
    mask: Bool[torch.Tensor, "row d_vocab"] | None,
) -> Int[torch.Tensor, " row"]:
    return token_ranks(decode_resid(model, resid), token_ids, mask)


def _patch_hook(
    src: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, ex: torch.Tensor, head: torch.Tensor | None
) -> Any:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        if head is None:
            act[rows, pos] = src[ex, pos].to(act.dtype)
        else:
            act[rows, pos, head] = src[ex, pos, head].to(act.dtype)
        return act

    return hook


def _read_hook(store: dict[str, torch.Tensor], name: str, pos: torch.Tensor) -> Any:
    def hook(act: torch.Tensor, hook: Any) -> None:
        store[name] = act[torch.arange(len(act), device=act.device), pos].detach()

    return hook


def site_hook_names(site: str, n_layers: int) -> list[str]:
    """Hook name of every layer index of a site kind.

    Example:
        >>> site_hook_names("mlp", 2)
        ['blocks.0.hook_mlp_out', 'blocks.1.hook_mlp_out']
    """
    if site == "resid":
        return resid_hook_names(n_layers)
    if site == "attn":
        return [f"blocks.{layer}.hook_attn_out" for layer in range(n_layers)]
    if site == "mlp":
        return [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    if site == "head":
        return [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    raise ValueError(f"unknown site kind {site!r}; choose one of {', '.join(SITE_KINDS)}")


MIN_GAP_SE = 3.0
"""A clean/corrupt gap counts as signal when it is at least this many standard errors."""
MIN_GAP_SHARE = 0.05
"""... and at least this share of the larger of the mean |clean| and |corrupt| metrics."""


def gap_reliable(clean: torch.Tensor, corrupt: torch.Tensor) -> tuple[bool, str]:
    """Whether the mean clean - corrupt metric gap is large enough for fractions of it to mean anything.

    The rule: the mean per-example gap must be at least :data:`MIN_GAP_SE` standard errors
    from zero (its spread over examples) and at least :data:`MIN_GAP_SHARE` of
    ``max(|mean clean|, |mean corrupt|)``. Clean == corrupt fails both.

    Returns:
        ``(reliable, reason)``; the reason is empty when reliable.

    Example:
        >>> gap_reliable(torch.tensor([3.0, 3.2, 2.9]), torch.tensor([-1.0, -0.8, -1.2]))
        (True, '')
        >>> gap_reliable(torch.ones(4), torch.ones(4))[0]
        False
    """
    diff = (clean.double() - corrupt.double()).flatten()
    gap = float(diff.mean())
    se = float(diff.std(unbiased=True) / diff.numel() ** 0.5) if diff.numel() > 1 else 0.0
    scale = max(abs(float(clean.double().mean())), abs(float(corrupt.double().mean())))
    if abs(gap) <= MIN_GAP_SE * se or abs(gap) <= MIN_GAP_SHARE * scale or abs(gap) < 1e-9:
        return False, (f"the clean - corrupt metric gap is {gap:.3g} (standard error {se:.3g}, metric scale "
                       f"{scale:.3g}); a fraction of it is noise (rule: |gap| >= {MIN_GAP_SE:g} SE and >= "
                       f"{MIN_GAP_SHARE:g} x scale)")
    return True, ""
