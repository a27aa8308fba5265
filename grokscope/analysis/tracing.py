"""Causal tracing as the paper: knowledge-base counterfactuals and batched patching.

Two steps.

1. :func:`make_counterfactuals` builds, for sampled examples of a homogeneous split,
   a counterfactual input that changes one token so that the answer really changes
   according to the knowledge base (composition: ``h'``, ``r1'``, ``r2'``;
   comparison: ``e1'``, ``e2'``, ``attr'``), with an explicit
   ``numpy.random.Generator``. Examples without a valid counterfactual are dropped
   and counted.
2. :func:`trace` runs each counterfactual once with a cache, copies its activation at
   one site (a hook name, a position, optionally a head) into the normal run through
   hooks on the real model, and reads the prediction at the last position. Every
   (site, example) pair is a row of one big batch: the clean batch is repeated once
   per site and one hook per hook name writes the cached counterfactual activation
   at the right rows and positions (:func:`run_patches`, the engine, also takes
   arbitrary multi-site patches). Rows whose patched value equals the clean one
   (every state before the changed token, under the causal mask) are not run: they
   are the clean run. The forward pass is never re-implemented.

Sites (``site=``): ``"resid"`` (``S[l]`` for ``l = 0..L``: ``blocks.{l}.hook_resid_pre``
and ``blocks.{L-1}.hook_resid_post``), ``"attn"`` (``blocks.{l}.hook_attn_out``),
``"mlp"`` (``blocks.{l}.hook_mlp_out``), ``"head"`` (``blocks.{l}.attn.hook_z``, one
head at a time).

Metrics per site: causal strength (the paper's: the fraction of examples whose top-1
prediction changes from the clean run's) and a continuous one, the normalised logit
difference ``(ld_clean - ld_patched) / (ld_clean - ld_cf)`` with ``ld = logit(answer) -
logit(counterfactual answer)`` (aggregated as a ratio of means; per-example values
are kept). Readouts (:class:`TraceReadout`) measure path-level effects: the logit-lens
rank of a token at another state (e.g. the bridge at ``S[l, r1]``) in the patched run.

Example:
    >>> from grokscope.run import Run                                  # doctest: +SKIP
    >>> run = Run.open("runs/composition-tiny")                       # doctest: +SKIP
    >>> cfs = make_counterfactuals(run.dataset(), n=300, seed=0)      # doctest: +SKIP
    >>> res = trace(run.load_model(), cfs, site="resid")               # doctest: +SKIP
    >>> res.strength.shape     # [perturbation, layer, pos]            # doctest: +SKIP
    torch.Size([3, 5, 3])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from grokscope.analysis.lens import (
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

    from grokscope.tasks.dataset import TaskDataset

PERTURBATIONS: dict[str, tuple[str, ...]] = {
    "composition": ("h", "r1", "r2"),
    "comparison": ("e1", "e2", "attr"),
}
"""The paper's perturbations per task; each names the role whose token is replaced."""

SITE_KINDS: tuple[str, ...] = ("resid", "attn", "mlp", "head")
DEFAULT_BATCH_SIZE = 4096
"""Rows (site x example pairs) per patched forward pass."""


def task_family(task: str) -> str:
    """``composition`` or ``comparison`` (``complex`` reasoning is comparison-shaped).

    Raises:
        ValueError: an unknown task.
    """
    if task == "composition":
        return "composition"
    if task in ("comparison", "complex"):
        return "comparison"
    raise ValueError(f"no counterfactuals known for task {task!r}")


# --------------------------------------------------------------------------- counterfactuals


@dataclass
class Counterfactuals:
    """Clean inputs paired with inputs that change one token and the answer.

    Attributes:
        perturbation: the replaced role (``h``, ``r1``, ``r2``, ``e1``, ``e2``, ``attr``).
        position: input position of that role.
        clean: ``[example, pos]`` clean input ids.
        corrupt: ``[example, pos]`` the same with one token replaced.
        answer: ``[example]`` the clean answer token (from the knowledge base).
        cf_answer: ``[example]`` the counterfactual's answer token (from the KB).
        example_index: ``[example]`` rows of the source split.
        roles: role -> input position.
        meta: clean metadata of the kept examples (token ids; ``label`` is the label
            index) plus ``cf_*`` fields of the counterfactual (``cf_bridge``, ...).
        n_requested: examples sampled before dropping those without a counterfactual.
        split: name of the source split.
    """

    perturbation: str
    position: int
    clean: Int[torch.Tensor, "example pos"]
    corrupt: Int[torch.Tensor, "example pos"]
    answer: Int[torch.Tensor, " example"]
    cf_answer: Int[torch.Tensor, " example"]
    example_index: Int[torch.Tensor, " example"]
    roles: dict[str, int]
    meta: dict[str, Int[torch.Tensor, " example"]] = field(default_factory=dict)
    n_requested: int = 0
    split: str = ""

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def n_invalid(self) -> int:
        """Sampled examples that had no valid counterfactual (and were dropped)."""
        return self.n_requested - len(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "perturbation": self.perturbation,
            "position": self.position,
            "split": self.split,
            "roles": dict(self.roles),
            "n_requested": self.n_requested,
            "n_invalid": self.n_invalid,
            "example_index": self.example_index.tolist(),
            "clean": self.clean.tolist(),
            "corrupt": self.corrupt.tolist(),
            "answer": self.answer.tolist(),
            "cf_answer": self.cf_answer.tolist(),
            "meta": {k: v.tolist() for k, v in self.meta.items()},
        }


def _inverse(ids: np.ndarray, size: int) -> np.ndarray:
    out = np.full(size, -1, dtype=np.int64)
    out[ids] = np.arange(len(ids))
    return out


def _pick(rng: np.random.Generator, valid: np.ndarray) -> int:
    cand = np.flatnonzero(valid)
    return int(rng.choice(cand)) if len(cand) else -1


def make_counterfactuals(
    dataset: TaskDataset,
    split: str = "train_inferred",
    *,
    n: int | None = 300,
    seed: int = 0,
    perturbations: Sequence[str] | None = None,
    id_only: bool = True,
) -> dict[str, Counterfactuals]:
    """Sample examples of a split and build the paper's counterfactuals from the KB.

    Composition (``tail[h, r]``): ``h`` -> ``h'`` with ``(h', r1)`` and ``(b', r2)`` defined
    and a different two-hop answer; ``r1`` -> ``r1'`` (a relation of ``h`` whose bridge
    ``b'`` has ``r2`` defined with a tail other than ``t``); ``r2`` -> ``r2'`` (a relation
    of the bridge with a tail other than ``t``). Comparison (``values[e, a]``): ``e1`` ->
    ``e1'`` or ``e2`` -> ``e2'`` whose value changes the label; ``attr`` -> ``attr'`` with
    another label for the same two entities. Candidates are drawn uniformly.

    Args:
        dataset: the task (KB, vocabulary, splits).
        split: a homogeneous inferred split (``train_inferred``, ``test_inferred_iid``...).
        n: examples to sample (without replacement; None or more than the split: all).
        seed: seeds ``numpy.random.default_rng(seed)`` (sampling, then candidates).
        perturbations: subset of :data:`PERTURBATIONS` of the task (default: all).
        id_only: use only in-distribution atomic facts for the counterfactual (facts
            the model was trained on as ID); the clean examples are not filtered.

    Returns:
        perturbation -> :class:`Counterfactuals` (each keeps only its valid examples).

    Example:
        >>> from grokscope.tasks import composition
        >>> ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0, seed=0)
        >>> cfs = make_counterfactuals(ds, n=20, seed=0)
        >>> sorted(cfs), bool((cfs["h"].answer != cfs["h"].cf_answer).all())
        (['h', 'r1', 'r2'], True)
    """
    family = task_family(dataset.task)
    allowed = PERTURBATIONS[family]
    perts = tuple(perturbations) if perturbations is not None else allowed
    bad = [p for p in perts if p not in allowed]
    if bad:
        raise ValueError(f"unknown perturbations {bad} for {dataset.task}; choose from {allowed}")
    sp = dataset.splits[split]
    want_roles = {"h", "r1", "r2"} if family == "composition" else {"attr", "q", "e1", "mask", "e2"}
    if set(sp.roles) != want_roles:
        raise ValueError(
            f"split {split!r} has roles {sorted(sp.roles)}; counterfactuals need an inferred split "
            f"with roles {sorted(want_roles)} (e.g. 'train_inferred')"
        )
    rng = np.random.default_rng(seed)
    rows = np.arange(len(sp))
    if n is not None and n < len(sp):
        rows = np.sort(rng.choice(len(sp), size=n, replace=False))
    inputs = sp.input_ids[rows]
    meta = {k: v[rows] for k, v in sp.meta.items()}
    vocab, kb = dataset.vocab, dataset.kb
    size = len(vocab)
    out: dict[str, Counterfactuals] = {}

    if family == "composition":
        ent, rel = vocab.entity_ids, vocab.relation_ids
        e_of, r_of = _inverse(ent, size), _inverse(rel, size)
        tail, ood = kb.tail, kb.ood
        h, r1, r2 = e_of[meta["h"]], r_of[meta["r1"]], r_of[meta["r2"]]
        b, t = e_of[meta["bridge"]], e_of[meta["t"]]
        n_e, n_r = tail.shape
        for pert in perts:
            new_tok = np.full(len(rows), -1)
            cf_t = np.full(len(rows), -1)
            cf_b = np.full(len(rows), -1)
            for i in range(len(rows)):
                if pert == "h":
                    b2 = tail[:, r1[i]]  # bridge of every candidate head
                    ok = b2 >= 0
                    t2 = np.where(ok, tail[np.maximum(b2, 0), r2[i]], -1)
                    ok &= (t2 >= 0) & (t2 != t[i]) & (np.arange(n_e) != h[i])
                    if id_only:
                        ok &= ~ood[:, r1[i]] & ~ood[np.maximum(b2, 0), r2[i]]
                    j = _pick(rng, ok)
                    if j >= 0:
                        new_tok[i], cf_b[i], cf_t[i] = ent[j], b2[j], t2[j]
                elif pert == "r1":
                    b2 = tail[h[i], :]
                    ok = b2 >= 0
                    t2 = np.where(ok, tail[np.maximum(b2, 0), r2[i]], -1)
                    ok &= (t2 >= 0) & (t2 != t[i]) & (np.arange(n_r) != r1[i])
                    if id_only:
                        ok &= ~ood[h[i], :] & ~ood[np.maximum(b2, 0), r2[i]]
                    j = _pick(rng, ok)
                    if j >= 0:
                        new_tok[i], cf_b[i], cf_t[i] = rel[j], b2[j], t2[j]
                else:  # r2
                    t2 = tail[b[i], :]
                    ok = (t2 >= 0) & (t2 != t[i]) & (np.arange(n_r) != r2[i])
                    if id_only:
                        ok &= ~ood[b[i], :]
                    j = _pick(rng, ok)
                    if j >= 0:
                        new_tok[i], cf_b[i], cf_t[i] = rel[j], b[i], t2[j]
            keep = new_tok >= 0
            cf_meta = {"cf_bridge": ent[cf_b[keep]], "cf_t": ent[cf_t[keep]]}
            out[pert] = _finish(pert, sp, rows, inputs, meta, keep, new_tok, meta["t"], ent[np.maximum(cf_t, 0)], cf_meta, split)
        return out

    # comparison / complex
    from grokscope.tasks.dataset import comparison_label

    ent, att, val = vocab.entity_ids, vocab.attribute_ids, vocab.value_ids
    labels = vocab.label_ids
    e_of, a_of = _inverse(ent, size), _inverse(att, size)
    values, ood = kb.values, kb.ood
    a, e1, e2 = a_of[meta["attr"]], e_of[meta["e1"]], e_of[meta["e2"]]
    v1, v2 = values[e1, a], values[e2, a]
    lab = comparison_label(v1, v2)
    n_e, n_a = values.shape
    answer = labels[a, lab]
    for pert in perts:
        new_tok = np.full(len(rows), -1)
        cf_ans = np.full(len(rows), -1)
        cf_v1, cf_v2, cf_lab = np.full(len(rows), -1), np.full(len(rows), -1), np.full(len(rows), -1)
        for i in range(len(rows)):
            if pert in ("e1", "e2"):
                col = values[:, a[i]]
                other = v2[i] if pert == "e1" else v1[i]
                new_lab = comparison_label(col, other) if pert == "e1" else comparison_label(other, col)
                ok = (col >= 0) & (new_lab != lab[i]) & (np.arange(n_e) != e1[i]) & (np.arange(n_e) != e2[i])
                if id_only:
                    ok &= ~ood[:, a[i]]
                j = _pick(rng, ok)
                if j >= 0:
                    new_tok[i], cf_lab[i] = ent[j], new_lab[j]
                    cf_v1[i], cf_v2[i] = (col[j], v2[i]) if pert == "e1" else (v1[i], col[j])
                    cf_ans[i] = labels[a[i], new_lab[j]]
            else:  # attr
                w1, w2 = values[e1[i], :], values[e2[i], :]
                new_lab = comparison_label(w1, w2)
                ok = (w1 >= 0) & (w2 >= 0) & (new_lab != lab[i]) & (np.arange(n_a) != a[i])
                if id_only:
                    ok &= ~ood[e1[i], :] & ~ood[e2[i], :]
                j = _pick(rng, ok)
                if j >= 0:
                    new_tok[i], cf_lab[i] = att[j], new_lab[j]
                    cf_v1[i], cf_v2[i] = w1[j], w2[j]
                    cf_ans[i] = labels[j, new_lab[j]]
        keep = new_tok >= 0
        cf_meta = {"cf_v1": val[cf_v1[keep]], "cf_v2": val[cf_v2[keep]], "cf_label": cf_lab[keep]}
        out[pert] = _finish(pert, sp, rows, inputs, meta, keep, new_tok, answer, cf_ans, cf_meta, split)
    return out


def _finish(
    pert: str,
    sp: Any,
    rows: np.ndarray,
    inputs: np.ndarray,
    meta: dict[str, np.ndarray],
    keep: np.ndarray,
    new_tok: np.ndarray,
    answer: np.ndarray,
    cf_answer: np.ndarray,
    cf_meta: dict[str, np.ndarray],
    split: str,
) -> Counterfactuals:
    pos = int(sp.roles[pert])
    corrupt = inputs.copy()
    corrupt[:, pos] = new_tok
    t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.long)  # noqa: E731
    all_meta = {k: t(v[keep]) for k, v in meta.items()}
    all_meta.update({k: t(v) for k, v in cf_meta.items()})
    return Counterfactuals(
        perturbation=pert,
        position=pos,
        clean=t(inputs[keep]),
        corrupt=t(corrupt[keep]),
        answer=t(answer[keep]),
        cf_answer=t(cf_answer[keep]),
        example_index=t(rows[keep]),
        roles=dict(sp.roles),
        meta=all_meta,
        n_requested=len(rows),
        split=split,
    )


# --------------------------------------------------------------------------- the patching engine


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


# --------------------------------------------------------------------------- causal tracing


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


@dataclass(frozen=True)
class TraceReadout:
    """A path-level target for :func:`trace`: a token's lens rank at another state.

    Attributes:
        name: a label, e.g. ``"bridge@S[2,r1]"``.
        layer: residual index ``l`` of ``S[l]`` (0..L).
        role: role name (``"r1"``) or input position of the read state.
        target: a key of :attr:`Counterfactuals.meta` (``"bridge"``, ``"cf_bridge"``,
            ``"r2"``, ``"v1"`` ...) giving the token per example.
        allowed: None, or 1-D token ids to rank among.
    """

    name: str
    layer: int
    role: str | int
    target: str
    allowed: Any = None


@dataclass
class TraceResult:
    """Causal tracing of one site kind, for every perturbation, layer and position.

    Aggregate tensors have shape ``[perturbation, layer, pos]`` (``"head"`` sites:
    ``[perturbation, layer, head_index, pos]``); per-example tensors are kept per
    perturbation as ``[example, layer, pos]`` (or ``[example, layer, head_index, pos]``).

    Attributes:
        site: ``resid``, ``attn``, ``mlp`` or ``head``.
        perturbations: perturbation names (first axis).
        layers: traced layer indices; ``hook_names[i]`` is the hook of ``layers[i]``.
        hook_names: hook name of each traced layer.
        positions: traced input positions; ``position_roles`` their role names.
        position_roles: role name of each traced position.
        strength: fraction of examples whose top-1 prediction changes.
        logit_diff: normalised logit-difference effect (ratio of means; 1 = the
            counterfactual's logit difference, 0 = the clean one, NaN when the
            counterfactual run does not change the mean logit difference).
        counterfactuals: the examples used (token ids, answers), per perturbation.
        clean_top1, cf_top1: ``[example]`` predictions of the clean and counterfactual runs.
        changed: ``[example, layer, (head,) pos]`` whether the top-1 prediction changed.
        ld_patched: ``[example, layer, (head,) pos]`` patched logit differences.
        ld_clean, ld_cf: ``[example]`` logit differences of the clean and counterfactual runs.
        readout_ranks: readout name -> perturbation -> ``[example, layer, (head,) pos]``.
        readout_clean_ranks: readout name -> perturbation -> ``[example]`` (no patch).
    """

    site: str
    perturbations: list[str]
    layers: list[int]
    hook_names: list[str]
    positions: list[int]
    position_roles: list[str]
    strength: Float[torch.Tensor, "perturbation layer ..."]
    logit_diff: Float[torch.Tensor, "perturbation layer ..."]
    counterfactuals: dict[str, Counterfactuals]
    clean_top1: dict[str, Int[torch.Tensor, " example"]]
    cf_top1: dict[str, Int[torch.Tensor, " example"]]
    changed: dict[str, Bool[torch.Tensor, "example layer ..."]]
    ld_patched: dict[str, Float[torch.Tensor, "example layer ..."]]
    ld_clean: dict[str, Float[torch.Tensor, " example"]]
    ld_cf: dict[str, Float[torch.Tensor, " example"]]
    readout_ranks: dict[str, dict[str, Int[torch.Tensor, "example layer ..."]]] = field(default_factory=dict)
    readout_clean_ranks: dict[str, dict[str, Int[torch.Tensor, " example"]]] = field(default_factory=dict)

    def readout_mrr(self, name: str) -> Float[torch.Tensor, "perturbation layer ..."]:
        """Mean reciprocal rank of a readout target per perturbation and patched site."""
        return torch.stack(
            [(1.0 / self.readout_ranks[name][p].double()).mean(0).float() for p in self.perturbations]
        )

    def clean_accuracy(self, perturbation: str) -> float:
        """Fraction of that perturbation's examples the clean run answers correctly."""
        cf = self.counterfactuals[perturbation]
        return float((self.clean_top1[perturbation] == cf.answer).double().mean()) if len(cf) else float("nan")

    def to_dict(self, per_example: bool = True) -> dict[str, Any]:
        """JSON-ready: axes, hook names, aggregates, examples and per-example values."""
        out: dict[str, Any] = {
            "site": self.site,
            "perturbations": list(self.perturbations),
            "layers": list(self.layers),
            "hook_names": list(self.hook_names),
            "positions": list(self.positions),
            "position_roles": list(self.position_roles),
            "axes": ["perturbation", "layer", *(["head_index"] if self.site == "head" else []), "pos"],
            "strength": self.strength.tolist(),
            "logit_diff": self.logit_diff.tolist(),
            "n_examples": {p: len(self.counterfactuals[p]) for p in self.perturbations},
            "n_invalid": {p: self.counterfactuals[p].n_invalid for p in self.perturbations},
            "clean_accuracy": {p: self.clean_accuracy(p) for p in self.perturbations},
            "readouts": {name: self.readout_mrr(name).tolist() for name in self.readout_ranks},
        }
        if per_example:
            out["examples"] = {p: self.counterfactuals[p].to_dict() for p in self.perturbations}
            out["per_example"] = {
                p: {
                    "clean_top1": self.clean_top1[p].tolist(),
                    "cf_top1": self.cf_top1[p].tolist(),
                    "ld_clean": self.ld_clean[p].tolist(),
                    "ld_cf": self.ld_cf[p].tolist(),
                    "changed": self.changed[p].tolist(),
                    "ld_patched": self.ld_patched[p].tolist(),
                    "readout_ranks": {k: v[p].tolist() for k, v in self.readout_ranks.items()},
                    "readout_clean_ranks": {k: v[p].tolist() for k, v in self.readout_clean_ranks.items()},
                }
                for p in self.perturbations
            }
        return out


def _normalised_effect(
    ld_clean: torch.Tensor, ld_patched: torch.Tensor, ld_cf: torch.Tensor
) -> torch.Tensor:
    """(mean ld_clean - mean ld_patched) / (mean ld_clean - mean ld_cf) over examples.

    NaN where the counterfactual does not move the mean logit difference at all.
    """
    c, f = ld_clean.double().mean(), ld_cf.double().mean()
    return ((c - ld_patched.double().mean(0)) / (c - f)).float()


def trace(
    model: TransformerBridge,
    counterfactuals: Mapping[str, Counterfactuals] | Counterfactuals,
    site: str = "resid",
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    readouts: Sequence[TraceReadout] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_unchanged: bool = True,
) -> TraceResult:
    """Causal tracing of every (layer, position) site, batched, for each perturbation.

    For each perturbation: one clean and one counterfactual forward pass give the
    baselines; then :func:`run_patches` runs the clean inputs with the counterfactual
    activation at every site (one site per run, all runs stacked into batches) and
    reads the prediction at the last input position.

    Args:
        model: the model.
        counterfactuals: from :func:`make_counterfactuals` (or a single one).
        site: ``resid``, ``attn``, ``mlp`` or ``head`` (see the module docstring).
        layers: layer indices to trace (default all: ``0..L`` for resid, ``0..L-1`` else).
        positions: input positions to trace (default all).
        readouts: path-level targets read in every patched run.
        batch_size: rows per forward pass.
        skip_unchanged: see :func:`run_patches` (exact; False runs every row).

    Returns:
        A :class:`TraceResult`.

    Example:
        >>> res = trace(model, cfs, site="resid")                          # doctest: +SKIP
        >>> res.strength[0, :, cfs["h"].roles["r1"]]   # S[l, r1] under h'  # doctest: +SKIP
    """
    if isinstance(counterfactuals, Counterfactuals):
        counterfactuals = {counterfactuals.perturbation: counterfactuals}
    perts = list(counterfactuals)
    if not perts:
        raise ValueError("no counterfactuals given")
    n_layers = model.cfg.n_layers
    names = site_hook_names(site, n_layers)
    layer_idx = list(range(len(names))) if layers is None else [int(x) for x in layers]
    if any(not 0 <= x < len(names) for x in layer_idx):
        raise ValueError(f"layers must lie in [0, {len(names)}) for site {site!r}, got {layer_idx}")
    first = counterfactuals[perts[0]]
    n_pos = first.clean.shape[1]
    pos_idx = list(range(n_pos)) if positions is None else [int(p) for p in positions]
    if any(not 0 <= p < n_pos for p in pos_idx):
        raise ValueError(f"positions must lie in [0, {n_pos}), got {pos_idx}")
    by_pos = {v: k for k, v in first.roles.items()}
    heads = list(range(model.cfg.n_heads)) if site == "head" else [None]
    patches: list[Patch] = [
        (Site(names[layer], p, h),) for layer in layer_idx for h in heads for p in pos_idx
    ]
    grid = (len(layer_idx), len(heads), len(pos_idx)) if site == "head" else (len(layer_idx), len(pos_idx))
    resid_names = resid_hook_names(n_layers)

    strength, effect = [], []
    res: dict[str, dict[str, Any]] = {k: {} for k in ("clean_top1", "cf_top1", "changed", "ld_patched", "ld_clean", "ld_cf")}
    ro_ranks: dict[str, dict[str, torch.Tensor]] = {r.name: {} for r in readouts}
    ro_clean: dict[str, dict[str, torch.Tensor]] = {r.name: {} for r in readouts}
    for pert in perts:
        cf = counterfactuals[pert]
        if cf.clean.shape[1] != n_pos:
            raise ValueError("every perturbation's inputs must have the same length")
        n = len(cf)
        answers = torch.stack([cf.answer, cf.cf_answer], dim=1)
        ros = [
            Readout(
                r.name,
                resid_names[r.layer],
                cf.roles[r.role] if isinstance(r.role, str) else int(r.role),
                cf.meta[r.target],
                r.allowed,
            )
            for r in readouts
        ]
        # Baselines: the empty patch is the clean run; patching every position of S[0]
        # is the counterfactual run. Both go through the same code path as the sites.
        both = run_patches(
            model, cf.clean, cf.corrupt, [(), (Site(resid_names[0], None),), *patches],
            answer_ids=answers, readouts=ros, batch_size=batch_size, skip_unchanged=skip_unchanged,
        )
        base = PatchOutput(both.top1[:2], both.logits[:2], {k: v[:2] for k, v in both.readout_ranks.items()})
        out = PatchOutput(both.top1[2:], both.logits[2:], {k: v[2:] for k, v in both.readout_ranks.items()})
        ld_clean = base.logits[0, :, 0] - base.logits[0, :, 1]
        ld_cf = base.logits[1, :, 0] - base.logits[1, :, 1]
        ld = (out.logits[..., 0] - out.logits[..., 1]).T.reshape(n, *grid)  # [example, layer, (head,) pos]
        changed = (out.top1 != base.top1[0][None, :]).T.reshape(n, *grid)
        strength.append(changed.double().mean(0).float() if n else torch.full(grid, float("nan")))
        effect.append(_normalised_effect(ld_clean, ld, ld_cf) if n else torch.full(grid, float("nan")))
        res["clean_top1"][pert], res["cf_top1"][pert] = base.top1[0], base.top1[1]
        res["changed"][pert], res["ld_patched"][pert] = changed, ld
        res["ld_clean"][pert], res["ld_cf"][pert] = ld_clean, ld_cf
        for r in readouts:
            ro_ranks[r.name][pert] = out.readout_ranks[r.name].T.reshape(n, *grid)
            ro_clean[r.name][pert] = base.readout_ranks[r.name][0]
    return TraceResult(
        site=site,
        perturbations=perts,
        layers=layer_idx,
        hook_names=[names[x] for x in layer_idx],
        positions=pos_idx,
        position_roles=[by_pos.get(p, str(p)) for p in pos_idx],
        strength=torch.stack(strength),
        logit_diff=torch.stack(effect),
        counterfactuals=dict(counterfactuals),
        readout_ranks=ro_ranks,
        readout_clean_ranks=ro_clean,
        **res,
    )
