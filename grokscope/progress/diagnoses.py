"""Diagnoses: per-checkpoint analyses a task declares by name (``Task.diagnoses``).

A diagnosis is a function ``(model, dataset, *, n, seed, threshold) -> dict`` (JSON-ready)
registered under a name with :func:`register_diagnosis`; a task lists the names that
apply to it, and the series, the report and the CLI run them without knowing the task.
Built in: ``ood_lens`` (the paper's OOD diagnosis for composition-like chains: the bridge
resolved low, the answer failing high), ``value_gap`` (comparison: accuracy by the
distance of the two values) and ``attention_probes`` (attention per head onto the
places a task names, :meth:`grokscope.tasks.Task.attention_probes`); ``fourier`` (modular addition's progress measures) is
registered in :mod:`grokscope.progress.fourier`. A figure for a diagnosis is registered beside its plot
(:func:`grokscope.plots.register_diagnosis_figure`).

Example:
    >>> {"ood_lens", "value_gap", "fourier"} <= set(DIAGNOSES)
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from grokscope.lens.logit import lens_split
from grokscope.patching.hypothesis import first_layer
from grokscope.runs.run import Run
from grokscope.series.cache import AnalysisCache, Checkpoint, cached, context
from grokscope.series.engine import (
    DEFAULT_EXAMPLES,
    DEFAULT_THRESHOLD,
    SeriesRequest,
    StepOutput,
    register_step_analysis,
)
from grokscope.series.sampling import sample_rows
from grokscope.tasks.base import task_names, task_of

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

OOD_SPLIT = "test_inferred_ood"
IID_SPLIT = "test_inferred_iid"

Diagnosis = Callable[..., dict[str, Any]]
DIAGNOSES: dict[str, Diagnosis] = {}
"""Diagnosis name -> function ``(model, dataset, *, n, seed, threshold) -> dict``."""


def register_diagnosis(name: str) -> Callable[[Diagnosis], Diagnosis]:
    """Decorator: register a diagnosis under ``name`` (tasks list it in ``diagnoses``)."""

    def deco(fn: Diagnosis) -> Diagnosis:
        DIAGNOSES[name] = fn
        return fn

    return deco


def _declaring(name: str) -> list[str]:
    from grokscope.tasks.base import get_task

    return [t for t in task_names() if name in get_task(t).diagnoses]


def run_diagnosis(name: str, model: TransformerBridge, dataset: TaskDataset, **kwargs: Any) -> dict[str, Any]:
    """Run the registered diagnosis ``name``.

    Raises:
        ValueError: no diagnosis of that name, or one the dataset's task does not declare.
    """
    if name not in DIAGNOSES:
        raise ValueError(f"unknown diagnosis {name!r}; registered: {', '.join(sorted(DIAGNOSES))}")
    declared = task_of(dataset).diagnoses
    if name not in declared:
        raise ValueError(f"the {dataset.task} task does not declare the {name!r} diagnosis (it declares: {', '.join(declared) or 'none'})")
    return DIAGNOSES[name](model, dataset, **kwargs)


@register_diagnosis("ood_lens")
def ood_diagnosis(
    model: TransformerBridge,
    dataset: TaskDataset,
    *,
    n: int | None = None,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """The paper's OOD diagnosis for composition: the bridge is resolved low, the answer fails high.

    On ``test_inferred_ood`` (and ``test_inferred_iid`` for contrast): the MRR of the
    bridge at ``S[l, r1]``, of ``r2`` at ``S[l, r2]`` and of the answer ``t`` at
    ``S[l, r2]`` for every layer, and the final accuracy (the rank of ``t`` at ``S[L]``
    is 1 among the whole vocabulary: the model's own top-1 accuracy). OOD examples
    whose bridge MRR at the lower layers is high while the final accuracy is low
    reproduce the paper's finding: the first hop is done, the second-hop facts (seen
    only as atomic facts) are not stored in the upper layers.

    Args:
        model: the checkpoint's model.
        dataset: a composition dataset.
        n: examples per split (None: all).
        seed: sampling seed.
        threshold: MRR for ``bridge_layer`` (first layer resolving the bridge).

    Returns:
        ``{"hook_names": [...], "splits": {split: {"n", "bridge_mrr", "r2_mrr",
        "t_mrr", "accuracy", "bridge_layer", "max_bridge_mrr_below_top"}}}``.

    Example:
        >>> d = ood_diagnosis(model, ds)                                  # doctest: +SKIP
        >>> d["splits"]["test_inferred_ood"]["bridge_mrr"], d["splits"]["test_inferred_ood"]["accuracy"]  # doctest: +SKIP
    """
    task = task_of(dataset)
    hyp = task.hypothesis
    if hyp is None or hyp.kind != "staged":
        raise ValueError(f"the OOD lens diagnosis reads a staged circuit; the {dataset.task} task has none "
                         f"(tasks that declare it: {', '.join(_declaring('ood_lens'))})")
    first, last = hyp.stages[0].target, hyp.stages[-1].target
    out: dict[str, Any] = {"splits": {}, "threshold": float(threshold)}
    for name in (OOD_SPLIT, IID_SPLIT):
        sp = dataset.splits.get(name)
        if sp is None or len(sp) == 0:
            continue
        lens = lens_split(model, sp, dataset.vocab, n=n, seed=seed, task=task)
        out["hook_names"] = list(lens.hook_names)
        bridge = lens.mrr(first)
        out["splits"][name] = {
            "n": int(lens.ranks[hyp.output_target].shape[1]),
            "bridge_mrr": bridge.tolist(),
            "r2_mrr": lens.mrr(last).tolist(),
            "t_mrr": lens.mrr(hyp.output_target).tolist(),
            "accuracy": float(lens.recall(hyp.output_target, 1)[-1]),
            "bridge_layer": first_layer(bridge, threshold),
            "max_bridge_mrr_below_top": float(bridge[:-1].max()) if len(bridge) > 1 else float("nan"),
        }
    return out


@register_diagnosis("value_gap")
def value_gap_diagnosis(
    model: TransformerBridge,
    dataset: TaskDataset,
    *,
    n: int | None = None,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,  # noqa: ARG001  (the uniform diagnosis signature)
) -> dict[str, Any]:
    """Comparison: accuracy by the distance ``|v1 - v2|`` of the two values, per split.

    Where comparison fails out of distribution, this says how: a model that compares
    the two retrieved values on a fuzzy number line gets far-apart values right and
    confuses equal and adjacent ones (the small runs' failure, docs/REPRODUCTION.md),
    while a model that never retrieves OOD values is at chance at every distance.
    Correct = the model's own top-1 prediction at the answer position is the label.

    Args:
        model: the checkpoint's model.
        dataset: a comparison dataset.
        n: examples per split (None: all), drawn with ``numpy.random.default_rng(seed)``.
        seed: sampling seed.

    Returns:
        ``{"n_values": V, "splits": {split: {"n", "accuracy", "gap": [0..V-1],
        "n_by_gap": [...], "acc_by_gap": [... or None where no example],
        "acc_by_label": {"v1<v2", "v1=v2", "v1>v2"}}}}`` for the training, test ID and
        test OOD inferred splits.

    Example:
        >>> d = value_gap_diagnosis(model, ds, n=300)                       # doctest: +SKIP
        >>> d["splits"]["test_inferred_ood"]["acc_by_gap"]  # [equal, adjacent, ...]  # doctest: +SKIP
    """
    if "v1" not in dataset.splits[task_of(dataset).default_split].meta:
        raise ValueError(f"the value-gap diagnosis needs values v1, v2 in the metadata; the {dataset.task} task has none "
                         f"(tasks that declare it: {', '.join(_declaring('value_gap'))})")
    vocab = dataset.vocab
    value_of = np.full(len(vocab), -1, dtype=np.int64)
    value_of[vocab.value_ids] = np.arange(len(vocab.value_ids))
    n_values = len(vocab.value_ids)
    out: dict[str, Any] = {"n_values": n_values, "splits": {}}
    for name in ("train_inferred", IID_SPLIT, OOD_SPLIT):
        sp = dataset.splits.get(name)
        if sp is None or len(sp) == 0:
            continue
        if n is not None and n < len(sp):
            sp = sp.subset(sample_rows(len(sp), n, seed))
        lens = lens_split(model, sp, vocab, task=task_of(dataset))
        correct = np.asarray(lens.ranks["label@last"][-1]) == 1
        diff = value_of[sp.meta["v1"]] - value_of[sp.meta["v2"]]
        gap, label = np.abs(diff), np.sign(diff)
        counts = np.bincount(gap, minlength=n_values)
        hits = np.bincount(gap, weights=correct.astype(float), minlength=n_values)
        out["splits"][name] = {
            "n": int(len(correct)),
            "accuracy": float(correct.mean()),
            "gap": list(range(n_values)),
            "n_by_gap": counts.astype(int).tolist(),
            "acc_by_gap": [float(h / c) if c else None for h, c in zip(hits, counts)],
            "acc_by_label": {k: float(correct[label == sgn].mean()) if (label == sgn).any() else None
                             for k, sgn in (("v1<v2", -1), ("v1=v2", 0), ("v1>v2", 1))},
        }
    return out


@register_diagnosis("attention_probes")
def attention_probe_diagnosis(
    model: TransformerBridge,
    dataset: TaskDataset,
    *,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float | None = None,
    split: str = IID_SPLIT,
) -> dict[str, Any]:
    """Mean attention per layer and head onto the groups of each of the task's
    :meth:`~grokscope.tasks.Task.attention_probes` (``n`` sampled rows of ``split``).

    Returns:
        ``{"split", "n_examples", "probes": [{"name", "groups", "n_rows", "mass":
        [layer][head][group]}]}`` (a group never present: None).
    """
    import torch

    from grokscope.lens.attention import attention_mass, attention_patterns

    sp = dataset.splits[split]
    rows = sample_rows(len(sp), n, seed)
    probes = task_of(dataset).attention_probes(sp, dataset.vocab, rows)
    out: dict[str, Any] = {"split": split, "n_examples": len(rows), "probes": []}
    for pr in probes:
        r = np.asarray(pr.rows, dtype=np.int64)
        if not len(r):
            continue
        keys = np.asarray(pr.key_pos)
        width = int(max(np.max(pr.query_pos), keys.max())) + 1
        uniq, inv = np.unique(r, return_inverse=True)
        pat = attention_patterns(model, sp.tokens[uniq, :width])[:, :, torch.from_numpy(inv)]
        mass = attention_mass(model, sp.tokens[r, :width], pr.query_pos, keys, pattern=pat)
        mean = torch.nanmean(mass, dim=2)
        out["probes"].append({
            "name": pr.name, "groups": list(pr.groups), "n_rows": len(r),
            "mass": [[[None if not np.isfinite(v) else round(float(v), 4) for v in head] for head in layer]
                     for layer in mean.tolist()],
        })
    return out


# Diagnoses registered in their own modules (imported here so every registry user sees them).


# --------------------------------------------------------------------------- one checkpoint of a run


def checkpoint_diagnosis(
    run: Run | str | os.PathLike[str],
    step: int,
    name: str,
    *,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: Checkpoint | None = None,
) -> dict[str, Any]:
    """The diagnosis ``name`` (one the run's task declares) of one checkpoint (cached)."""
    run, cache_ = context(run, cache)
    args = {"n": n, "seed": seed, "threshold": threshold}
    return cached(run, cache_, step, f"diagnosis-{name}", args, device, _ck,
                  lambda ck: run_diagnosis(name, ck.model, ck.dataset, n=n, seed=seed, threshold=threshold))


def checkpoint_ood(run: Run | str | os.PathLike[str], step: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`ood_diagnosis` of one checkpoint (cached): ``checkpoint_diagnosis(..., "ood_lens")``."""
    return checkpoint_diagnosis(run, step, "ood_lens", **kwargs)


def checkpoint_value_gap(run: Run | str | os.PathLike[str], step: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`value_gap_diagnosis` of one checkpoint (cached): ``checkpoint_diagnosis(..., "value_gap")``."""
    kwargs.pop("threshold", None)
    return checkpoint_diagnosis(run, step, "value_gap", **kwargs)


@register_step_analysis("diagnoses", order=40)
def _diagnoses_step(run: Run, step: int, ck: Checkpoint, req: SeriesRequest) -> StepOutput:
    names = task_of(ck.dataset).diagnoses if req.diagnoses else ()
    return StepOutput(record={"diagnoses": {
        name: checkpoint_diagnosis(run, step, name, n=req.n, seed=req.seed, threshold=req.threshold,
                                   cache=req.cache, _ck=ck)
        for name in names
    }})
