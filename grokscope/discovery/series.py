"""Circuit discovery across a run's checkpoints, cached like the rest of the series.

Per checkpoint and split (default ``train_inferred`` and ``test_inferred_iid``: the
memorising model fails test facts, so that is where circuits should differ):
:func:`checkpoint_discovery` runs :func:`~grokscope.discovery.circuit.discover`
on the same seeded examples at every step and caches the full JSON in
``RUN/.grokscope-cache``. :func:`discovery_series` turns the steps into a formation
record: the size of the smallest circuit recovering 0.9, its faithfulness curve area,
its edge overlap (Jaccard) with the final checkpoint's circuit, the share of
``|attribution|`` by input position and by writer kind, and how much of the circuit's
attribution today's ``find_circuit`` hypothesis covers.

Example:
    >>> s = discovery_series("checkpoints/composition-small")           # doctest: +SKIP
    >>> [r["size"] for r in s.records["train_inferred"]]               # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grokscope.discovery.circuit import DEFAULT_RECOVER, discover, hypothesis_coverage
from grokscope.discovery.graph import ComponentGraph
from grokscope.discovery.scores import DEFAULT_IG_STEPS, Corruption, EdgeScores
from grokscope.display import Summarized
from grokscope.runs.run import Run
from grokscope.series.cache import AnalysisCache

DEFAULT_SPLITS = ("train_inferred", "test_inferred_iid")
DEFAULT_EXAMPLES = 300


def _context(run: Run | str | os.PathLike[str], cache: AnalysisCache | bool) -> tuple[Run, AnalysisCache]:
    run = run if isinstance(run, Run) else Run.open(run)
    if isinstance(cache, AnalysisCache):
        return run, cache
    return run, AnalysisCache(run, enabled=cache is not False)


def checkpoint_discovery(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    split: str = "train_inferred",
    perturbation: str | None = None,
    ablation: str = "counterfactual",
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    method: str = "eap-ig",
    ig_steps: int = DEFAULT_IG_STEPS,
    metric: str = "logit_diff",
    top: int | None = None,
    recover: float = DEFAULT_RECOVER,
    selection: str = "top",
    measure_edges: int = 200,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """The discovered circuit of one checkpoint (cached :meth:`Discovery.to_dict`).

    Args:
        perturbation: the counterfactual to patch from (default the task's first:
            ``h`` for composition, ``e1`` for comparison); with ``ablation="mean"`` it
            only picks the examples.
        ablation: ``counterfactual`` or ``mean``.
        n, seed: examples of ``split`` (drawn as :func:`make_counterfactuals` draws them).
        measure_edges: patch alone (exact effect) up to this many of the circuit's
            strongest edges (the per-edge part of the cost).

    Returns:
        The discovery JSON (see :meth:`Discovery.to_dict`) plus ``split`` and
        ``example_index``; ``{"empty": True, ...}`` when no example of the split has a
        valid counterfactual.
    """
    from grokscope.patching.tracing import make_counterfactuals

    run, cache_ = _context(run, cache)
    args = {"split": split, "perturbation": perturbation, "ablation": ablation, "n": n, "seed": seed,
            "method": method, "ig_steps": ig_steps if method.startswith("eap-ig") else 1, "metric": metric, "top": top,
            "recover": recover, "selection": selection}
    if measure_edges != 200:  # the default keeps the cache key of earlier versions
        args["measure_edges"] = measure_edges
    got = cache_.get(step, "discovery", args)
    if got is not None:
        return got
    dataset = run.dataset()
    cfs = make_counterfactuals(dataset, split, n=n, seed=seed,
                               perturbations=None if perturbation is None else [perturbation])
    pert = perturbation or next(iter(cfs))
    cf = cfs[pert]
    if len(cf) == 0:  # no example of this split has a valid counterfactual
        return cache_.put(step, "discovery", args, {"step": step, "split": split, "perturbation": pert, "empty": True})
    model = run.load_model(step, device=device)
    model.eval()
    d = discover(model, Corruption.from_counterfactuals(cf, ablation), method, metric=metric, ig_steps=ig_steps,
                 top=top, recover=recover, selection=selection, step=step, measure_circuit_edges=measure_edges)
    out = {**d.to_dict(), "split": split, "perturbation": pert, "example_index": cf.example_index.tolist()}
    return cache_.put(step, "discovery", args, out)


def scores_from_dict(doc: dict[str, Any]) -> tuple[EdgeScores, torch.Tensor]:
    """The :class:`EdgeScores` and circuit mask of a discovery JSON."""
    graph = ComponentGraph.from_dict(doc["graph"])
    scores = torch.tensor([e["score"] for e in doc["edges"]])
    keep = torch.tensor([e["in_circuit"] for e in doc["edges"]])
    return EdgeScores(graph, scores, doc["method"], doc.get("ig_steps", 1)), keep


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """``|a & b| / |a | b|`` of two edge sets (1 for two empty sets).

    Example:
        >>> jaccard([1, 2, 3], [2, 3, 4])
        0.5
    """
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


@dataclass(repr=False)
class DiscoverySeries(Summarized):
    """Formation of the discovered circuit over checkpoints.

    Attributes:
        steps: the checkpoints.
        records: split -> one record per step (``step``, ``size``, ``fraction``,
            ``recovered``, ``cpr``, ``cmd``, ``jaccard_final``, ``shares``,
            ``circuit_shares``, ``coverage``, ``top_edges``, ``clean_metric``,
            ``corrupt_metric``, ``curve``).
        settings: the arguments every checkpoint shares.
        final: split -> the last checkpoint's full discovery JSON (every edge).
    """

    steps: list[int]
    records: dict[str, list[dict[str, Any]]]
    settings: dict[str, Any] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)


    def summary(self) -> dict[str, Any]:
        """Steps, splits, and the final circuit size per split."""
        return {"steps": len(self.steps), "last_step": self.steps[-1] if self.steps else None,
                "splits": list(self.records),
                "final_circuit": {k: (v.get("circuit") or {}).get("size") for k, v in self.final.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "records": self.records, "settings": self.settings}


TOP_EDGES = 10
"""Strongest circuit edges per step in the records (measured exactly at every step)."""


def _record(doc: dict[str, Any], final: dict[str, Any], hypothesis: dict[str, Any] | None) -> dict[str, Any]:
    scores, keep = scores_from_dict(doc)
    nodes = doc["nodes"]
    top = []
    for e in doc["circuit"]["edges"][:TOP_EDGES]:
        ed = doc["edges"][e]
        top.append({"edge": e, "src": nodes[ed["src"]], "dst": nodes[ed["dst"]], "score": ed["score"], "exact": ed["exact"]})
    return {
        "step": doc["step"],
        "size": doc["circuit"]["size"],
        "fraction": doc["circuit"]["fraction_of_edges"],
        "recovered": doc["circuit"]["recovered"],
        "cpr": doc["curve"]["cpr"],
        "cmd": doc["curve"]["cmd"],
        "jaccard_final": jaccard(doc["circuit"]["edges"], final["circuit"]["edges"]),
        "shares": doc["shares"],
        "circuit_shares": doc["circuit_shares"],
        "coverage": None if hypothesis is None else hypothesis_coverage(scores, keep, hypothesis),
        "top_edges": top,
        "clean_metric": doc["clean_metric"],
        "corrupt_metric": doc["corrupt_metric"],
        "reliable": doc.get("reliable", True),
        "curve": doc["curve"],
        "n_edges": doc["graph"]["n_edges"],
    }


def discovery_series(
    run: Run | str | os.PathLike[str],
    steps: Sequence[int] | None = None,
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    perturbation: str | None = None,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    method: str = "eap-ig",
    ig_steps: int = DEFAULT_IG_STEPS,
    recover: float = DEFAULT_RECOVER,
    hypothesis: bool = True,
    progress: bool = False,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
) -> DiscoverySeries:
    """Discover the circuit at every checkpoint (cached) and compare them with the final one.

    Args:
        steps: checkpoints (default all); the last is the reference for the overlap.
        splits: inferred splits to discover on.
        hypothesis: also measure the coverage of ``find_circuit``'s hypothesis (the
            cached ``checkpoint_circuit`` on the same examples).
        progress: a tqdm bar over (split, checkpoint).

    The exact effect of single edges is measured for the circuit's strongest 200 edges
    at the last step and its strongest :data:`TOP_EDGES` at the others (what the
    per-step records show).

    Returns:
        A :class:`DiscoverySeries`.
    """
    run, cache_ = _context(run, cache)
    steps = sorted(run.steps() if steps is None else steps)
    if not steps:
        raise ValueError(f"{run.path}: holds no checkpoint")
    kw = {"perturbation": perturbation, "n": n, "seed": seed, "method": method, "ig_steps": ig_steps,
          "recover": recover, "cache": cache_, "device": device}
    records: dict[str, list[dict[str, Any]]] = {}
    final: dict[str, dict[str, Any]] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(splits) * len(steps), desc="discover", unit="ckpt", disable=not progress,
               dynamic_ncols=True)
    for split in splits:
        docs = []
        for i, s in enumerate(steps):
            bar.set_description(f"discover {split} step {s} ({i + 1}/{len(steps)})")
            last = i == len(steps) - 1
            docs.append(checkpoint_discovery(run, s, split=split, measure_edges=200 if last else TOP_EDGES, **kw))
            bar.update(1)
        if any(doc.get("empty") for doc in docs):
            continue  # a split without counterfactuals (tiny tasks) has no circuit to discover
        hyps: list[dict[str, Any] | None] = [None] * len(steps)
        if hypothesis:
            from grokscope.patching.checkpoint import checkpoint_circuit

            hyps = [checkpoint_circuit(run, s, split=split, n=n, seed=seed, cache=cache_, device=device)
                    for s in steps]
        records[split] = [_record(doc, docs[-1], h) for doc, h in zip(docs, hyps)]
        final[split] = docs[-1]
    bar.close()
    settings = {k: v for k, v in kw.items() if k not in ("cache", "device")}
    settings["splits"] = list(splits)
    return DiscoverySeries(list(steps), records, settings, final)
