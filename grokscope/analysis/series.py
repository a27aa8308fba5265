"""Every measure across a run's checkpoints, cached on disk.

For each checkpoint step :func:`analyse_series` collects

* the logit lens (:func:`checkpoint_lens`): the MRR of every lens target at every
  residual state ``S[l]`` (hook names from
  :func:`grokscope.analysis.lens.resid_hook_names`), plus the most frequent decoded
  token at every ``S[l, p]``;
* resid causal tracing (:func:`checkpoint_trace`): the causal strength of every
  ``S[l, p]`` under every perturbation of the task;
* the located circuit (:func:`checkpoint_circuit`);
* the total weight norm ``sqrt(sum of squared parameters)`` (:func:`weight_norm`);
* the accuracies and losses of ``metrics.jsonl`` at that step;
* the OOD diagnosis: for composition the paper's (:func:`ood_diagnosis`): the bridge
  MRR at ``S[l, r1]`` on ``test_inferred_ood`` examples, layer by layer, beside the
  final accuracy on them; for comparison the accuracy by value distance
  ``|v1 - v2|`` per split (:func:`value_gap_diagnosis`).

Every step analyses the same examples: ``n`` rows of the split drawn with
``numpy.random.default_rng(seed)`` (the lens and the counterfactuals draw the same
rows, see :func:`grokscope.analysis.circuits.find_circuit`).

Results are cached as JSON under ``RUN/.grokscope-cache/step_XXXXXXXX/`` with one file
per (analysis name, arguments), keyed by the step, the analysis name, a hash of the
arguments, the grokscope version, the data's content hash and a fingerprint of the
checkpoint (its ``meta.json`` and weight-file size): a second pass reads every result
from disk without loading a model. A run directory that cannot be written still gets
analysed, uncached.

Example:
    >>> from grokscope.run import Run                              # doctest: +SKIP
    >>> s = analyse_series(Run.open("checkpoints/composition-small"), n=300)  # doctest: +SKIP
    >>> s.lens_mrr("bridge@r1").shape        # [step, layer]      # doctest: +SKIP
    >>> s.strength("h")[-1]                  # [layer, pos] at the last step  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int

from grokscope import __version__
from grokscope.analysis.circuits import DEFAULT_THRESHOLD, build_circuit, first_layer
from grokscope.analysis.lens import (
    LensResult,
    decode_resid,
    lens_split,
    lens_targets,
    logit_lens,
    residual_stack,
)
from grokscope.analysis.tracing import (
    PERTURBATIONS,
    SITE_KINDS,
    TraceResult,
    make_counterfactuals,
    task_family,
    trace,
)
from grokscope.run import (
    META_FILE,
    MODEL_FILE,
    Run,
    atomic_write_bytes,
    read_safetensors,
    step_dir_name,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

CACHE_DIR_NAME = ".grokscope-cache"
"""Directory inside a run that holds the analysis cache."""

DEFAULT_SPLIT = "train_inferred"
DEFAULT_EXAMPLES = 300
"""Examples per analysis (the paper's 300 training inferred facts)."""

OOD_SPLIT = "test_inferred_ood"
IID_SPLIT = "test_inferred_iid"


# --------------------------------------------------------------------------- helpers


ANALYSIS_VERSION = 3
"""Bump when an analysis changes its results, so older cache entries stop matching."""


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, numpy becomes Python)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _sample_rows(n_rows: int, n: int | None, seed: int) -> np.ndarray:
    """The rows :func:`lens_split` and :func:`make_counterfactuals` draw for ``n``, ``seed``."""
    if n is not None and n < n_rows:
        return np.sort(np.random.default_rng(seed).choice(n_rows, n, replace=False))
    return np.arange(n_rows)


# --------------------------------------------------------------------------- the disk cache


class AnalysisCache:
    """JSON results per (checkpoint step, analysis name, arguments), inside a run.

    Files: ``DIR/step_XXXXXXXX/{name}-{hash}.json`` holding ``{"key": ..., "result":
    ...}``; the key (step, name, arguments, grokscope version, data hash, checkpoint
    fingerprint) is checked on read, so a stale or corrupt file is a miss and is
    rewritten. Writes are atomic (compact JSON); a directory that cannot be written disables writing.

    Attributes:
        run: the run.
        directory: the cache directory (default ``RUN/.grokscope-cache``).
        enabled: False reads and writes nothing (every lookup misses).
        hits, misses: lookups answered from disk / computed.

    Example:
        >>> cache = AnalysisCache(Run.open("runs/tiny"))                    # doctest: +SKIP
        >>> cache.get(100, "lens", {"n": 300}) is None                      # doctest: +SKIP
        True
    """

    def __init__(self, run: Run, directory: str | os.PathLike[str] | None = None, enabled: bool = True) -> None:
        self.run = run
        self.directory = Path(directory) if directory is not None else run.path / CACHE_DIR_NAME
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._writable = True
        self._fingerprints: dict[int, str] = {}

    def fingerprint(self, step: int) -> str:
        """Identity of the checkpoint's weights: sha256 of meta.json plus the weight file's size."""
        if step not in self._fingerprints:
            ck = self.run.checkpoint_path(step)
            meta = ck / META_FILE
            h = hashlib.sha256(meta.read_bytes() if meta.is_file() else b"")
            h.update(str((ck / MODEL_FILE).stat().st_size).encode())
            self._fingerprints[step] = h.hexdigest()[:16]
        return self._fingerprints[step]

    def key(self, step: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": int(step),
            "analysis": name,
            "args": _jsonable(args),
            "grokscope_version": __version__,
            "analysis_version": ANALYSIS_VERSION,
            "data_hash": self.run.data_info.get("content_hash"),
            "checkpoint": self.fingerprint(step),
        }

    def path(self, step: int, name: str, args: dict[str, Any]) -> Path:
        """Where the result of ``name(args)`` at ``step`` is stored."""
        blob = json.dumps(self.key(step, name, args), sort_keys=True).encode()
        return self.directory / step_dir_name(step) / f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}.json"

    def get(self, step: int, name: str, args: dict[str, Any]) -> Any | None:
        """The stored result, or None (a miss: absent, unreadable or another key)."""
        if not self.enabled:
            return None
        p = self.path(step, name, args)
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != self.key(step, name, args) or "result" not in doc:
            return None
        self.hits += 1
        return doc["result"]

    def put(self, step: int, name: str, args: dict[str, Any], result: Any) -> Any:
        """Store ``result`` (JSON-ready) and return it as it will read back."""
        result = _jsonable(result)
        self.misses += 1
        if not (self.enabled and self._writable):
            return result
        p = self.path(step, name, args)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            doc = {"key": self.key(step, name, args), "result": result}
            atomic_write_bytes(p, json.dumps(doc, separators=(",", ":")).encode())  # compact: per-example tables
        except OSError:  # a read-only run: analyse without caching
            self._writable = False
        return result


class _Checkpoint:
    """One step's lazily loaded model and the analysis objects computed on it."""

    def __init__(self, run: Run, step: int, dataset: TaskDataset, device: str | None) -> None:
        self.run, self.step, self.dataset, self.device = run, step, dataset, device
        self._model: TransformerBridge | None = None
        self.memo: dict[str, Any] = {}

    @property
    def model(self) -> TransformerBridge:
        if self._model is None:
            self._model = self.run.load_model(self.step, device=self.device)
        return self._model


def _context(
    run: Run | str | os.PathLike[str], cache: AnalysisCache | bool | None
) -> tuple[Run, AnalysisCache]:
    run = run if isinstance(run, Run) else Run.open(run)
    if isinstance(cache, AnalysisCache):
        return run, cache
    return run, AnalysisCache(run, enabled=cache is not False)


# --------------------------------------------------------------------------- one checkpoint


def top_tokens(
    model: TransformerBridge, tokens: Int[torch.Tensor, "batch pos"]
) -> tuple[Int[torch.Tensor, "layer pos"], torch.Tensor]:
    """The most frequent logit-lens top-1 token at every ``S[l, p]`` and its share.

    Returns:
        ``(token_ids, share)``, both ``[layer, pos]``: the mode over examples of the
        argmax of the decoded state, and the fraction of examples whose argmax it is.
    """
    resid, _ = residual_stack(model, tokens)  # [layer, batch, pos, d_model]
    top = torch.stack([decode_resid(model, resid[:, :, p]).argmax(-1) for p in range(resid.shape[2])], dim=-1)
    top = top.cpu()  # [layer, batch, pos]
    n_layer, n, n_pos = top.shape
    d_vocab = model.cfg.d_vocab
    ids = torch.empty(n_layer, n_pos, dtype=torch.long)
    share = torch.empty(n_layer, n_pos)
    for layer in range(n_layer):
        for p in range(n_pos):
            counts = torch.bincount(top[layer, :, p], minlength=d_vocab)
            ids[layer, p] = int(counts.argmax())
            share[layer, p] = float(counts.max()) / max(1, n)
    return ids, share


def _lens_objects(ck: _Checkpoint, split: str, n: int | None, seed: int, within_class: bool) -> tuple[LensResult, np.ndarray]:
    key = f"lens:{split}:{n}:{seed}:{within_class}"
    if key not in ck.memo:
        sp = ck.dataset.splits[split]
        rows = _sample_rows(len(sp), n, seed)
        sub = sp.subset(rows)
        targets = lens_targets(sub, ck.dataset.vocab, within_class=within_class)
        ck.memo[key] = (logit_lens(ck.model, torch.from_numpy(sub.input_ids), targets), rows)
    return ck.memo[key]


def _trace_object(ck: _Checkpoint, split: str, n: int | None, seed: int, site: str, perturbations: Sequence[str]) -> TraceResult:
    key = f"trace:{split}:{n}:{seed}:{site}:{','.join(perturbations)}"
    if key not in ck.memo:
        cfs = make_counterfactuals(ck.dataset, split, n=n, seed=seed, perturbations=perturbations)
        ck.memo[key] = trace(ck.model, cfs, site=site)
    return ck.memo[key]


def _check_split(dataset: TaskDataset, split: str) -> None:
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(dataset.splits)}")


def _lens_compute(ck: _Checkpoint, args: dict[str, Any]) -> dict[str, Any]:
    _check_split(ck.dataset, args["split"])
    lens, rows = _lens_objects(ck, args["split"], args["n"], args["seed"], args["within_class"])
    sp = ck.dataset.splits[args["split"]]
    inputs = sp.input_ids[rows]
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


def _cached(
    run: Run,
    cache_: AnalysisCache,
    step: int,
    kind: str,
    args: dict[str, Any],
    device: str | None,
    ck: _Checkpoint | None,
    compute: Any,
) -> Any:
    """The cached ``kind`` result of ``step`` for ``args``, else ``compute(checkpoint)``
    stored (the checkpoint's model is loaded only on a miss)."""
    got = cache_.get(step, kind, args)
    if got is not None:
        return got
    return cache_.put(step, kind, args, compute(ck or _Checkpoint(run, step, run.dataset(), device)))


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
    _ck: _Checkpoint | None = None,
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
    run, cache_ = _context(run, cache)
    args = {"split": split, "n": n, "seed": seed, "within_class": within_class}
    return _cached(run, cache_, step, "lens", args, device, _ck, lambda ck: _lens_compute(ck, args))


def checkpoint_trace(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    site: str = "resid",
    perturbations: Sequence[str] | None = None,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: _Checkpoint | None = None,
) -> dict[str, Any]:
    """Causal tracing of one checkpoint at one site kind (cached).

    Args:
        site: ``resid``, ``attn``, ``mlp`` or ``head``.
        perturbations: a subset of the task's (default all: ``h, r1, r2`` or
            ``e1, e2, attr``).

    Returns:
        :meth:`TraceResult.to_dict` with per-example values (the examples' clean and
        counterfactual token ids, answers, per-site changed flags and logit differences).

    Example:
        >>> d = checkpoint_trace("runs/tiny", 1500, perturbations=["h"])   # doctest: +SKIP
        >>> d["strength"][0]       # [layer][pos] under h'                    # doctest: +SKIP
    """
    run, cache_ = _context(run, cache)
    if site not in SITE_KINDS:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITE_KINDS)}")
    allowed = PERTURBATIONS[task_family(run.data_info.get("task", run.config.task.task))]
    perts = list(perturbations) if perturbations is not None else list(allowed)
    bad = [p for p in perts if p not in allowed]
    if bad or not perts:
        raise ValueError(f"unknown perturbation(s) {bad or perts}; choose from {', '.join(allowed)}")
    args = {"split": split, "n": n, "seed": seed, "site": site, "perturbations": perts}
    def compute(ck: _Checkpoint) -> dict[str, Any]:
        _check_split(ck.dataset, split)
        return _trace_object(ck, split, n, seed, site, perts).to_dict(per_example=True)

    return _cached(run, cache_, step, "trace", args, device, _ck, compute)


def checkpoint_circuit(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    within_class: bool = False,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: _Checkpoint | None = None,
) -> dict[str, Any]:
    """The located circuit of one checkpoint (:func:`build_circuit`, cached).

    Returns:
        :meth:`Circuit.to_dict`: resolve layers, nodes (hook names, causal strengths,
        MRR), weighted edges, and the lens/tracing evidence; plus ``examples`` (the
        split, the sampled rows and their input token ids).
    """
    run, cache_ = _context(run, cache)
    args = {"split": split, "n": n, "seed": seed, "threshold": threshold, "within_class": within_class}
    def compute(ck: _Checkpoint) -> dict[str, Any]:
        _check_split(ck.dataset, split)
        lens, rows = _lens_objects(ck, split, n, seed, within_class)
        tracing = _trace_object(ck, split, n, seed, "resid", PERTURBATIONS[task_family(ck.dataset.task)])
        circuit = build_circuit(ck.dataset.task, lens, tracing, threshold=threshold, step=step)
        examples = {"split": split, "example_index": rows.tolist(),
                    "inputs": ck.dataset.splits[split].input_ids[rows].tolist()}
        return {**circuit.to_dict(), "examples": examples}

    return _cached(run, cache_, step, "circuit", args, device, _ck, compute)


def weight_norm(run: Run | str | os.PathLike[str], step: int, *, cache: AnalysisCache | bool = True) -> float:
    """Total weight norm ``sqrt(sum of squared parameters)`` of a checkpoint (cached).

    Read straight from ``model.safetensors`` (no model is built).

    Example:
        >>> weight_norm("runs/tiny", 0) > 0                          # doctest: +SKIP
        True
    """
    run, cache_ = _context(run, cache)
    got = cache_.get(step, "weight_norm", {})
    if got is not None:
        return float(got)
    tensors = read_safetensors(run.checkpoint_path(step) / MODEL_FILE)
    total = sum(float(t.double().pow(2).sum()) for t in tensors.values() if t.is_floating_point())
    return float(cache_.put(step, "weight_norm", {}, math.sqrt(total)))


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
    if dataset.task != "composition":
        raise ValueError(f"the OOD diagnosis is defined for composition, not {dataset.task!r}")
    out: dict[str, Any] = {"splits": {}, "threshold": float(threshold)}
    for name in (OOD_SPLIT, IID_SPLIT):
        sp = dataset.splits.get(name)
        if sp is None or len(sp) == 0:
            continue
        lens = lens_split(model, sp, dataset.vocab, n=n, seed=seed)
        out["hook_names"] = list(lens.hook_names)
        bridge = lens.mrr("bridge@r1")
        out["splits"][name] = {
            "n": int(lens.ranks["t@last"].shape[1]),
            "bridge_mrr": bridge.tolist(),
            "r2_mrr": lens.mrr("r2@r2").tolist(),
            "t_mrr": lens.mrr("t@last").tolist(),
            "accuracy": float(lens.recall("t@last", 1)[-1]),
            "bridge_layer": first_layer(bridge, threshold),
            "max_bridge_mrr_below_top": float(bridge[:-1].max()) if len(bridge) > 1 else float("nan"),
        }
    return out


def value_gap_diagnosis(
    model: TransformerBridge,
    dataset: TaskDataset,
    *,
    n: int | None = None,
    seed: int = 0,
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
    if dataset.task != "comparison":
        raise ValueError(f"the value-gap diagnosis is defined for comparison, not {dataset.task!r}")
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
            sp = sp.subset(np.sort(np.random.default_rng(seed).choice(len(sp), n, replace=False)))
        lens = lens_split(model, sp, vocab)
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


def checkpoint_value_gap(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: _Checkpoint | None = None,
) -> dict[str, Any]:
    """:func:`value_gap_diagnosis` of one checkpoint (cached)."""
    run, cache_ = _context(run, cache)
    args = {"n": n, "seed": seed}
    return _cached(run, cache_, step, "value_gap", args, device, _ck,
                   lambda ck: value_gap_diagnosis(ck.model, ck.dataset, n=n, seed=seed))


def checkpoint_ood(
    run: Run | str | os.PathLike[str],
    step: int,
    *,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
    _ck: _Checkpoint | None = None,
) -> dict[str, Any]:
    """:func:`ood_diagnosis` of one checkpoint (cached)."""
    run, cache_ = _context(run, cache)
    args = {"n": n, "seed": seed, "threshold": threshold}
    return _cached(run, cache_, step, "ood", args, device, _ck,
                   lambda ck: ood_diagnosis(ck.model, ck.dataset, n=n, seed=seed, threshold=threshold))


# --------------------------------------------------------------------------- the series


@dataclass
class SeriesResult:
    """Every measure at every analysed checkpoint of a run (plain data).

    Attributes:
        run: the run directory.
        run_name: the run config's name.
        task: ``composition`` or ``comparison``.
        args: the analysis arguments (split, n, seed, threshold, within_class).
        steps: analysed checkpoint steps, ascending.
        hook_names: hook of every residual state ``S[l]``, ``l = 0..L``.
        position_roles: role name of every input position.
        perturbations: the tracing perturbations (axis 0 of every tracing table).
        lens_targets: lens target name -> the position it is read at.
        lens_undecodable: lens target name -> why this model cannot decode it
            (:attr:`grokscope.analysis.lens.LensResult.undecodable`); plots leave it out.
        checkpoints: one dict per step: ``step``, ``acc`` and ``loss`` (split ->
            value, from metrics.jsonl), ``weight_norm``, ``lens`` (target -> MRR per
            layer), ``lens_recall1`` (target -> recall@1 per layer), ``top_tokens``
            (``tokens`` and ``share`` per ``[layer][pos]``), ``strength`` and
            ``logit_diff`` (perturbation -> ``[layer][pos]``), ``n_examples`` and
            ``clean_accuracy`` per perturbation, ``circuit`` (:meth:`Circuit.to_dict`
            without its evidence copies) and ``ood`` (:func:`ood_diagnosis` for
            composition, :func:`value_gap_diagnosis` for comparison; else None).
        metrics: every record of metrics.jsonl (for the training curves).
        grokking: :func:`grokscope.sweep.summarize_metrics` of the metrics.
        grokscope_version: the version that computed it.
        cache_hits, cache_misses: cache lookups of this pass (not part of to_dict).

    Example:
        >>> s = analyse_series("runs/tiny", n=100, progress=False)    # doctest: +SKIP
        >>> s.steps, s.lens_mrr("bridge@r1")[-1]                      # doctest: +SKIP
    """

    run: str
    run_name: str
    task: str
    args: dict[str, Any]
    steps: list[int]
    hook_names: list[str]
    position_roles: list[str]
    perturbations: list[str]
    lens_targets: dict[str, int]
    checkpoints: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    grokking: dict[str, Any]
    grokscope_version: str = __version__
    lens_undecodable: dict[str, str] = field(default_factory=dict)
    cache_hits: int = field(default=0, compare=False)
    cache_misses: int = field(default=0, compare=False)

    @property
    def n_layers(self) -> int:
        """``L``: the number of blocks (``len(hook_names) - 1``)."""
        return len(self.hook_names) - 1

    def checkpoint(self, step: int) -> dict[str, Any]:
        """The per-step dict of ``step``."""
        for c in self.checkpoints:
            if c["step"] == step:
                return c
        raise KeyError(f"step {step} was not analysed; steps: {self.steps}")

    def lens_mrr(self, target: str) -> np.ndarray:
        """``[step, layer]`` MRR of one lens target."""
        if target not in self.lens_targets:
            raise KeyError(f"no lens target {target!r}; targets: {', '.join(self.lens_targets)}")
        return np.array([c["lens"][target] for c in self.checkpoints], dtype=float)

    def strength(self, perturbation: str) -> np.ndarray:
        """``[step, layer, pos]`` resid causal strength under one perturbation."""
        if perturbation not in self.perturbations:
            raise KeyError(f"no perturbation {perturbation!r}; perturbations: {', '.join(self.perturbations)}")
        return np.array([c["strength"][perturbation] for c in self.checkpoints], dtype=float)

    def acc(self, split: str) -> list[float | None]:
        """Accuracy of ``split`` at every analysed step (None where not evaluated)."""
        return [c["acc"].get(split) for c in self.checkpoints]

    def measures(self) -> dict[str, Any]:
        """Time series of the circuit's measures at a fixed reference layer.

        The reference layer ``b`` is the last checkpoint's resolve layer (composition:
        the bridge at ``r1``; comparison: the later of ``v1`` at ``e1`` and ``v2`` at
        ``e2``), else ``L // 2``. Composition: MRR of the bridge at ``S[b, r1]`` and of
        ``r2`` at ``S[b, r2]``, causal strength of ``S[b, r1]`` under ``h'`` (the link
        that grows during grokking) and of ``S[b, r2]`` under ``r2'``, MRR of ``t`` at
        ``S[L, r2]``. Comparison: MRR of ``v1``/``v2``/the labels at ``S[b, e1|e2|attr]``
        and their causal strengths under ``e1'``/``e2'``/``attr'``. Both: the circuit
        share, the strength of the top intermediate state ``S[L-1]`` of the entity
        position(s) (``r1`` under ``h'``; ``e1``/``e2`` under ``e1'``/``e2'``).

        Returns:
            ``{"reference_layer", "hook_name", "measures": {label: [value per step]},
            "resolve_layers": {target: [layer or None per step]}, "weight_norm": [...]}``.
        """
        L = self.n_layers
        roles = {r: i for i, r in enumerate(self.position_roles)}
        last = self.checkpoints[-1]["circuit"]["layers"] if self.checkpoints else {}
        if self.task == "composition":
            cand = [last.get("bridge@r1")]
        else:
            cand = [last.get("v1@e1"), last.get("v2@e2")]
        cand = [c for c in cand if c is not None and 0 < c < L]
        b = max(cand) if cand else max(1, L // 2)
        hook = self.hook_names[b]
        m: dict[str, list[float]] = {}
        if self.task == "composition":
            spec = [("bridge@r1", "bridge", "r1", "h"), ("r2@r2", "r2", "r2", "r2"), ("r2@r2/rel", "r2 among relations", "r2", "")]
        else:
            spec = [("v1@e1", "v1", "e1", "e1"), ("v2@e2", "v2", "e2", "e2"), ("labels@attr", "labels", "attr", "attr")]
        for target, content, role, pert in spec:
            if target in self.lens_undecodable or (target not in self.lens_targets and target != "labels@attr"):
                if pert in self.perturbations and role in roles:  # the causal strength still holds
                    m[f"strength {pert}' @ S[{b},{role}]"] = [
                        float(c["strength"][pert][b][roles[role]]) for c in self.checkpoints
                    ]
                continue
            if target == "labels@attr":
                vals = [float(np.mean([c["lens"][f"label{k}@attr"][b] for k in range(3)])) for c in self.checkpoints]
            else:
                vals = [float(c["lens"][target][b]) for c in self.checkpoints]
            m[f"MRR {content} @ S[{b},{role}]"] = vals
            if pert in self.perturbations and role in roles:
                m[f"strength {pert}' @ S[{b},{role}]"] = [
                    float(c["strength"][pert][b][roles[role]]) for c in self.checkpoints
                ]
        out_target = "t@last" if self.task == "composition" else "label@last"
        if out_target in self.lens_targets:
            m[f"MRR {out_target.split('@')[0]} @ S[{L},{self.position_roles[-1]}]"] = [
                float(c["lens"][out_target][L]) for c in self.checkpoints
            ]
        # Share of the prediction the generalizing circuit explains: how often copying the
        # top intermediate state of the entity position(s) from a counterfactual run
        # (h' for composition; e1'/e2' for comparison) changes the prediction. A
        # memorizing model reads the answer off the input tokens and scores ~0 here.
        share_spec = [("h", "r1")] if self.task == "composition" else [("e1", "e1"), ("e2", "e2")]
        if L >= 2 and all(p in self.perturbations and r in roles for p, r in share_spec):
            m[f"circuit share (S[{L - 1},{'+'.join(r for _, r in share_spec)}])"] = [
                float(np.mean([c["strength"][p][L - 1][roles[r]] for p, r in share_spec])) for c in self.checkpoints
            ]
        names = sorted({k for c in self.checkpoints for k in c["circuit"]["layers"]})
        return {
            "reference_layer": b,
            "hook_name": hook,
            "measures": m,
            "resolve_layers": {k: [c["circuit"]["layers"].get(k) for c in self.checkpoints] for k in names},
            "weight_norm": [c["weight_norm"] for c in self.checkpoints],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the cache counters are left out)."""
        return {
            "run": self.run,
            "run_name": self.run_name,
            "task": self.task,
            "args": dict(self.args),
            "steps": list(self.steps),
            "hook_names": list(self.hook_names),
            "position_roles": list(self.position_roles),
            "perturbations": list(self.perturbations),
            "lens_targets": dict(self.lens_targets),
            "checkpoints": self.checkpoints,
            "metrics": self.metrics,
            "grokking": self.grokking,
            "grokscope_version": self.grokscope_version,
            "lens_undecodable": dict(self.lens_undecodable),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeriesResult:
        keys = ("run", "run_name", "task", "args", "steps", "hook_names", "position_roles", "perturbations",
                "lens_targets", "checkpoints", "metrics", "grokking", "grokscope_version", "lens_undecodable")
        return cls(**{k: d[k] for k in keys if k in d})


def _metrics_at(run: Run, metrics: list[dict[str, Any]], step: int) -> dict[str, Any]:
    for m in reversed(metrics):
        if m.get("step") == step:
            return m
    return run.checkpoint_meta(step).get("metrics") or {}


def parse_steps(spec: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """Steps to analyse: None or ``"all"`` -> every checkpoint; ``"N,M"`` or a list -> those.

    Raises:
        ValueError: a step that is not a checkpoint (the message lists the available ones).

    Example:
        >>> parse_steps("0,100", [0, 100, 200])
        [0, 100]
    """
    avail = list(available)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return avail
    if isinstance(spec, str):
        try:
            wanted = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"steps {spec!r}: give 'all' or comma-separated checkpoint steps such as 0,1000") from None
    else:
        wanted = [int(s) for s in spec]
    missing = [s for s in wanted if s not in avail]
    if missing or not wanted:
        raise ValueError(
            f"steps {missing or spec!r} are not checkpoints of this run; available steps: "
            f"{', '.join(map(str, avail)) or 'none'}"
        )
    return sorted(set(wanted))


def analyse_series(
    run: Run | str | os.PathLike[str],
    steps: str | Sequence[int] | None = None,
    *,
    split: str = DEFAULT_SPLIT,
    n: int | None = DEFAULT_EXAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    within_class: bool = False,
    ood: bool = True,
    progress: bool = True,
    cache: AnalysisCache | bool = True,
    device: str | None = None,
) -> SeriesResult:
    """Analyse every (or the given) checkpoint of a run: lens, tracing, circuit, norms.

    Every step uses the same examples (``n`` rows of ``split`` drawn with ``seed``).
    Results are cached per step and analysis (see :class:`AnalysisCache`); a model is
    loaded only for a step with a cache miss.

    Args:
        run: a :class:`Run` or its directory.
        steps: None / ``"all"``, ``"N,M,..."`` or a list of checkpoint steps.
        split: an inferred split (``train_inferred`` as the paper).
        n: examples (None: the whole split).
        seed: sampling seed, fixed across steps.
        threshold: lens MRR threshold of the circuit finder.
        within_class: rank lens targets within their token class.
        ood: also run :func:`ood_diagnosis` (composition) or
            :func:`value_gap_diagnosis` (comparison) per step.
        progress: show a tqdm bar over checkpoints.
        cache: True (the run's cache), False (no cache) or an :class:`AnalysisCache`.
        device: where models are loaded (None: CPU).

    Returns:
        A :class:`SeriesResult`.

    Raises:
        RunError: unreadable run; ValueError: unknown steps or split.
    """
    from tqdm.auto import tqdm

    from grokscope.sweep import summarize_metrics

    run, cache_ = _context(run, cache)
    chosen = parse_steps(steps, run.steps())
    if not chosen:
        raise ValueError(f"{run.path}: holds no checkpoint to analyse")
    dataset = run.dataset()
    _check_split(dataset, split)
    family = task_family(dataset.task)
    perts = list(PERTURBATIONS[family])
    metrics = run.metrics()
    args = {"split": split, "n": n, "seed": seed, "threshold": threshold, "within_class": within_class}
    hits0, misses0 = cache_.hits, cache_.misses
    checkpoints: list[dict[str, Any]] = []
    first_lens: dict[str, Any] | None = None
    first_trace: dict[str, Any] | None = None
    for step in tqdm(chosen, desc=f"analyse {run.path.name}", unit="ckpt", disable=not progress, dynamic_ncols=True):
        ck = _Checkpoint(run, step, dataset, device)
        common = {"split": split, "n": n, "seed": seed, "cache": cache_, "_ck": ck}
        lens = checkpoint_lens(run, step, within_class=within_class, **common)
        tr = checkpoint_trace(run, step, site="resid", perturbations=perts, **common)
        circ = checkpoint_circuit(run, step, threshold=threshold, within_class=within_class, **common)
        ood_d = None
        if ood and family == "composition" and dataset.task == "composition":
            ood_d = checkpoint_ood(run, step, n=n, seed=seed, threshold=threshold, cache=cache_, _ck=ck)
        elif ood and dataset.task == "comparison":
            ood_d = checkpoint_value_gap(run, step, n=n, seed=seed, cache=cache_, _ck=ck)
        rec = _metrics_at(run, metrics, step)
        first_lens, first_trace = first_lens or lens, first_trace or tr
        checkpoints.append({
            "step": step,
            "acc": dict(rec.get("acc", {})),
            "loss": dict(rec.get("loss", {})),
            "train_loss": rec.get("train_loss"),
            "weight_norm": weight_norm(run, step, cache=cache_),
            "lens": {k: v["mrr"] for k, v in lens["targets"].items()},
            "lens_recall1": {k: v["recall"]["1"] for k, v in lens["targets"].items()},
            "top_tokens": {"tokens": lens["top_tokens"]["tokens"], "share": lens["top_tokens"]["share"]},
            "strength": dict(zip(tr["perturbations"], tr["strength"])),
            "logit_diff": dict(zip(tr["perturbations"], tr["logit_diff"])),
            "n_examples": tr["n_examples"],
            "clean_accuracy": tr["clean_accuracy"],
            "circuit": {k: v for k, v in circ.items() if k not in ("mrr", "strength", "examples")},
            "ood": ood_d,
        })
    assert first_lens is not None and first_trace is not None
    return SeriesResult(
        run=str(run.path),
        run_name=run.config.name,
        task=family,
        args=args,
        steps=chosen,
        hook_names=list(first_lens["hook_names"]),
        position_roles=list(first_trace["position_roles"]),
        perturbations=list(first_trace["perturbations"]),
        lens_targets=dict(first_lens["target_positions"]),
        lens_undecodable=dict(first_lens.get("undecodable", {})),
        checkpoints=checkpoints,
        metrics=metrics,
        grokking=summarize_metrics(metrics),
        cache_hits=cache_.hits - hits0,
        cache_misses=cache_.misses - misses0,
    )
