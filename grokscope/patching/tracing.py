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
   hooks on the real model, and reads the prediction at the last position (or, per
   example, at :attr:`Counterfactuals.score_pos` when the task gives one). Every
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
    >>> from grokscope.runs.run import Run                                  # doctest: +SKIP
    >>> run = Run.open("runs/composition-tiny")                       # doctest: +SKIP
    >>> cfs = make_counterfactuals(run.dataset(), n=300, seed=0)      # doctest: +SKIP
    >>> res = trace(run.load_model(), cfs, site="resid")               # doctest: +SKIP
    >>> res.strength.shape     # [perturbation, layer, pos]            # doctest: +SKIP
    torch.Size([3, 5, 3])
"""


from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from grokscope.display import Summarized
from grokscope.errors import NoisyResultWarning
from grokscope.lens.logit import resid_hook_names
from grokscope.patching.counterfactuals import (  # noqa: F401  (re-exported: the tracing API)
    Counterfactuals,
    make_counterfactuals,
    perturbations_of,
    sample_rows,
)
from grokscope.patching.engine import (  # noqa: F401  (re-exported)
    DEFAULT_BATCH_SIZE,
    SITE_KINDS,
    Patch,
    PatchOutput,
    Readout,
    Site,
    gap_reliable,
    run_patches,
    site_hook_names,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def __getattr__(name: str) -> Any:
    if name == "PERTURBATIONS":  # every registered task's perturbations, by task name
        from grokscope.tasks.base import registered_tasks

        return {spec.name: spec.perturbations for spec in registered_tasks()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- causal tracing


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


@dataclass(repr=False)
class TraceResult(Summarized):
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


    @property
    def reliable(self) -> dict[str, bool]:
        """Per perturbation: is the clean - counterfactual logit-difference gap signal
        (:func:`grokscope.patching.engine.gap_reliable`)? Where it is not, ``logit_diff``
        (a fraction of that gap) is noise."""
        return {p: gap_reliable(self.ld_clean[p], self.ld_cf[p])[0] if len(self.ld_clean[p]) else False
                for p in self.perturbations}

    def summary(self) -> dict[str, Any]:
        """Site, perturbations, the grid, and each perturbation's strongest site."""
        peak = {}
        for i, p in enumerate(self.perturbations):
            s = self.strength[i]
            peak[p] = round(float(s.max()), 3) if s.numel() else None
        return {"site": self.site, "perturbations": list(self.perturbations), "layers": len(self.layers),
                "positions": len(self.positions), "max_strength": peak}

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
            "reliable": self.reliable,
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
    reads the prediction at the last input position, or at each example's own
    :attr:`Counterfactuals.score_pos` when the task gives one (a multi-token answer
    scored where the clean and counterfactual answers part).

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
            answer_ids=answers, read_pos=cf.score_pos, readouts=ros, batch_size=batch_size,
            skip_unchanged=skip_unchanged,
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
    for pert in perts:
        ok, why = gap_reliable(res["ld_clean"][pert], res["ld_cf"][pert]) if len(res["ld_clean"][pert]) else (True, "")
        if not ok:
            warnings.warn(f"tracing under {pert!r}: {why}; its logit_diff effects are noise (result.reliable)",
                          NoisyResultWarning, stacklevel=2)
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
