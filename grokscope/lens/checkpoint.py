"""The logit lens at one checkpoint of a run, cached, and its share of the series engine.

:func:`checkpoint_lens` reads one step; importing this module registers it with
:mod:`grokscope.series.engine` as the ``lens`` step analysis.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from grokscope.lens.logit import LensResult, lens_targets, lens_tokens, logit_lens, top_tokens
from grokscope.runs.run import Run
from grokscope.series.cache import AnalysisCache, Checkpoint, cached, context
from grokscope.series.engine import (
    DEFAULT_EXAMPLES,
    DEFAULT_SPLIT,
    SeriesRequest,
    StepOutput,
    check_split,
    register_step_analysis,
)
from grokscope.series.sampling import sample_rows
from grokscope.tasks.base import task_of


def lens_objects(ck: Checkpoint, split: str, n: int | None, seed: int, within_class: bool) -> tuple[LensResult, np.ndarray]:
    key = f"lens:{split}:{n}:{seed}:{within_class}"
    if key not in ck.memo:
        sp = ck.dataset.splits[split]
        rows = sample_rows(len(sp), n, seed)
        sub = sp.subset(rows)
        targets = lens_targets(sub, ck.dataset.vocab, within_class=within_class, task=task_of(ck.dataset))
        ck.memo[key] = (logit_lens(ck.model, torch.from_numpy(lens_tokens(sub, targets)), targets), rows)
    return ck.memo[key]


def _lens_compute(ck: Checkpoint, args: dict[str, Any]) -> dict[str, Any]:
    check_split(ck.dataset, args["split"])
    lens, rows = lens_objects(ck, args["split"], args["n"], args["seed"], args["within_class"])
    sp = ck.dataset.splits[args["split"]]
    sub = sp.subset(rows)
    # the tokens the lens read: the inputs, or the teacher-forced answer too when a target lies past them
    inputs = lens_tokens(sub, lens_targets(sub, ck.dataset.vocab, within_class=args["within_class"], task=task_of(ck.dataset)))
    ids, share = top_tokens(ck.model, torch.from_numpy(inputs))
    by_pos = {v: k for k, v in sp.roles.items()}
    out = lens.to_dict(per_example=True)
    vocab = ck.dataset.vocab
    out.update(
        split=args["split"],
        n_examples=len(rows),
        example_index=rows.tolist(),
        inputs=inputs.tolist(),
        position_roles=[by_pos.get(p, str(p)) for p in range(inputs.shape[1])],
        target_positions={name: int(lens.positions[name][0]) for name in lens.names} if len(rows) else {},
        top_tokens={
            "token_ids": ids.tolist(),
            "tokens": [[vocab.tokens[i] for i in row] for row in ids.tolist()],
            "share": share.tolist(),
        },
    )
    return out


def checkpoint_lens(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    within_class: bool = False,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: Checkpoint | None = None,
) -> dict[str, Any]:
    """The logit lens of one checkpoint on ``n`` examples of ``split`` (cached).

    Returns:
        :meth:`LensResult.to_dict` (hook names; per target MRR and recall per layer,
        per-example ranks, positions and target token ids) plus ``split``,
        ``example_index``, ``inputs`` (the examples' input token ids),
        ``position_roles``, ``target_positions`` and ``top_tokens`` (the most frequent
        decoded token per ``[layer][pos]``: ids, strings and share of examples).

    Example:
        >>> d = checkpoint_lens("runs/tiny", 1500)                   # doctest: +SKIP
        >>> d["targets"]["bridge@r1"]["mrr"]     # one per layer        # doctest: +SKIP
    """
    run, cache_ = context(run, cache)
    args = {"split": split, "n": n, "seed": seed, "within_class": within_class}
    return cached(run, cache_, step, "lens", args, device, _ck, lambda ck: _lens_compute(ck, args))


@register_step_analysis("lens", order=10)
def _lens_step(run: Run, step: int, ck: Checkpoint, req: SeriesRequest) -> StepOutput:
    lens = checkpoint_lens(run, step, split=req.split, n=req.n, seed=req.seed, within_class=req.within_class,
                           cache=req.cache, _ck=ck)
    return StepOutput(
        record={
            "lens": {k: v["mrr"] for k, v in lens["targets"].items()},
            "lens_recall1": {k: v["recall"]["1"] for k, v in lens["targets"].items()},
            "top_tokens": {"tokens": lens["top_tokens"]["tokens"], "share": lens["top_tokens"]["share"]},
        },
        series={
            "hook_names": list(lens["hook_names"]),
            "lens_targets": dict(lens["target_positions"]),
            "lens_undecodable": dict(lens.get("undecodable", {})),
        },
    )
