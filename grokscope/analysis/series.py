"""Every measure across a run's checkpoints, cached on disk, as typed records.

For each checkpoint step :func:`analyse_series` collects

* the logit lens (:func:`checkpoint_lens`): the MRR of every lens target of the task at
  every residual state ``S[l]``, plus the most frequent decoded token at every ``S[l, p]``;
* resid causal tracing (:func:`checkpoint_trace`): the causal strength of every
  ``S[l, p]`` under every perturbation of the task;
* the task's circuit hypothesis checked on it (:func:`checkpoint_circuit`);
* the total weight norm ``sqrt(sum of squared parameters)`` (:func:`weight_norm`);
* the accuracies and losses of ``metrics.jsonl`` at that step;
* every diagnosis the task declares (:mod:`grokscope.analysis.diagnoses`:
  :func:`checkpoint_diagnosis`).

Every step analyses the same examples (:func:`grokscope.analysis.sampling.sample_rows`).
Results are cached per step and analysis (:mod:`grokscope.analysis.cache`). One step's
results travel as a :class:`CheckpointRecord`, the run's as a :class:`SeriesResult`; the
measures over steps come from the task's circuit hypothesis (:mod:`grokscope.analysis.measures`).

Example:
    >>> from grokscope.run import Run                              # doctest: +SKIP
    >>> s = analyse_series(Run.open("checkpoints/composition-small"), n=300)  # doctest: +SKIP
    >>> s.lens_mrr("bridge@r1").shape        # [step, layer]      # doctest: +SKIP
    >>> s.strength("h")[-1]                  # [layer, pos] at the last step  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from grokscope import __version__
from grokscope.analysis.cache import (  # noqa: F401  (re-exported)
    ANALYSIS_VERSION,
    CACHE_DIR_NAME,
    AnalysisCache,
    Checkpoint,
    cached,
    context,
)
from grokscope.analysis.circuits import DEFAULT_THRESHOLD, build_circuit
from grokscope.analysis.diagnoses import (  # noqa: F401  (re-exported)
    IID_SPLIT,
    OOD_SPLIT,
    ood_diagnosis,
    run_diagnosis,
    value_gap_diagnosis,
)
from grokscope.analysis.lens import LensResult, lens_targets, lens_tokens, logit_lens, top_tokens
from grokscope.analysis.sampling import sample_rows
from grokscope.analysis.tracing import SITE_KINDS, TraceResult, make_counterfactuals, trace
from grokscope.run import MODEL_FILE, Run, read_safetensors
from grokscope.tasks.base import task_of

if TYPE_CHECKING:

    from grokscope.tasks.dataset import TaskDataset

DEFAULT_SPLIT = "train_inferred"
DEFAULT_EXAMPLES = 300
"""Examples per analysis (the paper's 300 training inferred facts)."""


def _check_split(dataset: TaskDataset, split: str) -> None:
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(dataset.splits)}")


# --------------------------------------------------------------------------- one checkpoint


def _lens_objects(ck: Checkpoint, split: str, n: int | None, seed: int, within_class: bool) -> tuple[LensResult, np.ndarray]:
    key = f"lens:{split}:{n}:{seed}:{within_class}"
    if key not in ck.memo:
        sp = ck.dataset.splits[split]
        rows = sample_rows(len(sp), n, seed)
        sub = sp.subset(rows)
        targets = lens_targets(sub, ck.dataset.vocab, within_class=within_class, task=task_of(ck.dataset))
        ck.memo[key] = (logit_lens(ck.model, torch.from_numpy(lens_tokens(sub, targets)), targets), rows)
    return ck.memo[key]


def _trace_object(ck: Checkpoint, split: str, n: int | None, seed: int, site: str, perturbations: Sequence[str]) -> TraceResult:
    key = f"trace:{split}:{n}:{seed}:{site}:{','.join(perturbations)}"
    if key not in ck.memo:
        cfs = make_counterfactuals(ck.dataset, split, n=n, seed=seed, perturbations=perturbations)
        ck.memo[key] = trace(ck.model, cfs, site=site)
    return ck.memo[key]


def _lens_compute(ck: Checkpoint, args: dict[str, Any]) -> dict[str, Any]:
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
    _ck: Checkpoint | None = None,
) -> dict[str, Any]:
    """Causal tracing of one checkpoint at one site kind (cached).

    Args:
        site: ``resid``, ``attn``, ``mlp`` or ``head``.
        perturbations: a subset of the task's (default all, e.g. ``h, r1, r2``).

    Returns:
        :meth:`TraceResult.to_dict` with per-example values (the examples' clean and
        counterfactual token ids, answers, per-site changed flags and logit differences).

    Example:
        >>> d = checkpoint_trace("runs/tiny", 1500, perturbations=["h"])   # doctest: +SKIP
        >>> d["strength"][0]       # [layer][pos] under h'                    # doctest: +SKIP
    """
    run, cache_ = context(run, cache)
    if site not in SITE_KINDS:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITE_KINDS)}")
    # the dataset names the perturbations; a miss reuses it (one read of RUN/data)
    _ck = _ck or Checkpoint(run, step, run.dataset(), device)
    allowed = task_of(_ck.dataset).perturbations
    perts = list(perturbations) if perturbations is not None else list(allowed)
    bad = [p for p in perts if p not in allowed]
    if bad or not perts:
        raise ValueError(f"unknown perturbation(s) {bad or perts}; choose from {', '.join(allowed)}")
    args = {"split": split, "n": n, "seed": seed, "site": site, "perturbations": perts}
    def compute(ck: Checkpoint) -> dict[str, Any]:
        _check_split(ck.dataset, split)
        return _trace_object(ck, split, n, seed, site, perts).to_dict(per_example=True)

    return cached(run, cache_, step, "trace", args, device, _ck, compute)


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
    _ck: Checkpoint | None = None,
) -> dict[str, Any]:
    """The task's circuit hypothesis checked on one checkpoint (:func:`build_circuit`, cached).

    Returns:
        :meth:`Circuit.to_dict`: resolve layers, nodes (hook names, causal strengths,
        MRR), weighted edges, and the lens/tracing evidence; plus ``examples`` (the
        split, the sampled rows and their input token ids).
    """
    run, cache_ = context(run, cache)
    args = {"split": split, "n": n, "seed": seed, "threshold": threshold, "within_class": within_class}
    def compute(ck: Checkpoint) -> dict[str, Any]:
        _check_split(ck.dataset, split)
        lens, rows = _lens_objects(ck, split, n, seed, within_class)
        task = task_of(ck.dataset)
        tracing = _trace_object(ck, split, n, seed, "resid", task.perturbations)
        circuit = build_circuit(task, lens, tracing, threshold=threshold, step=step)
        examples = {"split": split, "example_index": rows.tolist(),
                    "inputs": ck.dataset.splits[split].input_ids[rows].tolist()}
        return {**circuit.to_dict(), "examples": examples}

    return cached(run, cache_, step, "circuit", args, device, _ck, compute)


def weight_norm(run: Run | str | os.PathLike[str], step: int, *, cache: AnalysisCache | bool = True) -> float:
    """Total weight norm ``sqrt(sum of squared parameters)`` of a checkpoint (cached).

    Read straight from ``model.safetensors`` (no model is built).

    Example:
        >>> weight_norm("runs/tiny", 0) > 0                          # doctest: +SKIP
        True
    """
    run, cache_ = context(run, cache)
    got = cache_.get(step, "weight_norm", {})
    if got is not None:
        return float(got)
    tensors = read_safetensors(run.checkpoint_path(step) / MODEL_FILE)
    total = sum(float(t.double().pow(2).sum()) for t in tensors.values() if t.is_floating_point())
    return float(cache_.put(step, "weight_norm", {}, math.sqrt(total)))


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


# --------------------------------------------------------------------------- the records


@dataclass
class CheckpointRecord:
    """Every measure of one analysed checkpoint (JSON-ready values).

    Attributes:
        step: the checkpoint step.
        acc, loss: split -> value, from metrics.jsonl.
        train_loss: the training loss logged at that step.
        weight_norm: ``sqrt(sum of squared parameters)``.
        lens: lens target -> MRR per layer; lens_recall1: recall@1 per layer.
        top_tokens: ``tokens`` and ``share`` per ``[layer][pos]``.
        strength, logit_diff: perturbation -> ``[layer][pos]`` resid tracing.
        n_examples, clean_accuracy: per perturbation.
        circuit: :meth:`Circuit.to_dict` without its evidence copies.
        diagnoses: diagnosis name -> its result (the task's declared diagnoses).
        extra: results other analyses attach to the step (e.g. discovery).
    """

    step: int
    acc: dict[str, Any]
    loss: dict[str, Any]
    train_loss: float | None
    weight_norm: float
    lens: dict[str, list[float]]
    lens_recall1: dict[str, list[float]]
    top_tokens: dict[str, Any]
    strength: dict[str, Any]
    logit_diff: dict[str, Any]
    n_examples: dict[str, int]
    clean_accuracy: dict[str, float]
    circuit: dict[str, Any]
    diagnoses: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ood(self) -> dict[str, Any] | None:
        """The first declared diagnosis (the OOD diagnosis of the paper's tasks), or None."""
        return next(iter(self.diagnoses.values()), None)

    def __getitem__(self, key: str) -> Any:
        """Dict-style reads (``record["lens"]``) for code written against the old dicts."""
        if key == "ood":
            return self.ood
        if key in self.extra:
            return self.extra[key]
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["ood"] = self.ood
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointRecord:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "diagnoses" not in d and d.get("ood") is not None:
            kw["diagnoses"] = {"ood": d["ood"]}
        return cls(**kw)


@dataclass
class SeriesResult:
    """Every measure at every analysed checkpoint of a run (plain data).

    Attributes:
        run: the run directory.
        run_name: the run config's name.
        task: the task's name.
        args: the analysis arguments (split, n, seed, threshold, within_class).
        steps: analysed checkpoint steps, ascending.
        hook_names: hook of every residual state ``S[l]``, ``l = 0..L``.
        position_roles: role name of every input position.
        perturbations: the tracing perturbations (axis 0 of every tracing table).
        lens_targets: lens target name -> the position it is read at.
        lens_undecodable: lens target name -> why this model cannot decode it
            (:attr:`grokscope.analysis.lens.LensResult.undecodable`); plots leave it out.
        checkpoints: one :class:`CheckpointRecord` per step.
        metrics: every record of metrics.jsonl (for the training curves).
        grokking: :func:`grokscope.analysis.grokking.summarize_metrics` of the metrics.
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
    checkpoints: list[CheckpointRecord]
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

    def checkpoint(self, step: int) -> CheckpointRecord:
        """The record of ``step``."""
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
        """Time series of the circuit's measures (:func:`grokscope.analysis.measures.circuit_measures`)."""
        from grokscope.analysis.measures import circuit_measures

        return circuit_measures(self)

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
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "metrics": self.metrics,
            "grokking": self.grokking,
            "grokscope_version": self.grokscope_version,
            "lens_undecodable": dict(self.lens_undecodable),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeriesResult:
        keys = ("run", "run_name", "task", "args", "steps", "hook_names", "position_roles", "perturbations",
                "lens_targets", "checkpoints", "metrics", "grokking", "grokscope_version", "lens_undecodable")
        kw = {k: d[k] for k in keys if k in d}
        kw["checkpoints"] = [CheckpointRecord.from_dict(c) for c in kw.get("checkpoints", [])]
        return cls(**kw)


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
        ood: also run every diagnosis the task declares, per step.
        progress: show a tqdm bar over checkpoints.
        cache: True (the run's cache), False (no cache) or an :class:`AnalysisCache`.
        device: where models are loaded (None: CPU).

    Returns:
        A :class:`SeriesResult`.

    Raises:
        RunError: unreadable run; ValueError: unknown steps or split.
    """
    from tqdm.auto import tqdm

    from grokscope.analysis.grokking import summarize_metrics

    run, cache_ = context(run, cache)
    chosen = parse_steps(steps, run.steps())
    if not chosen:
        raise ValueError(f"{run.path}: holds no checkpoint to analyse")
    dataset = run.dataset()
    _check_split(dataset, split)
    task = task_of(dataset)
    perts = list(task.perturbations)
    metrics = run.metrics()
    args = {"split": split, "n": n, "seed": seed, "threshold": threshold, "within_class": within_class}
    hits0, misses0 = cache_.hits, cache_.misses
    checkpoints: list[dict[str, Any]] = []
    first_lens: dict[str, Any] | None = None
    first_trace: dict[str, Any] | None = None
    for step in tqdm(chosen, desc=f"analyse {run.path.name}", unit="ckpt", disable=not progress, dynamic_ncols=True):
        ck = Checkpoint(run, step, dataset, device)
        common = {"split": split, "n": n, "seed": seed, "cache": cache_, "_ck": ck}
        lens = checkpoint_lens(run, step, within_class=within_class, **common)
        tr = checkpoint_trace(run, step, site="resid", perturbations=perts, **common)
        circ = checkpoint_circuit(run, step, threshold=threshold, within_class=within_class, **common)
        diagnoses = {
            name: checkpoint_diagnosis(run, step, name, n=n, seed=seed, threshold=threshold, cache=cache_, _ck=ck)
            for name in (task.diagnoses if ood else ())
        }
        rec = _metrics_at(run, metrics, step)
        first_lens, first_trace = first_lens or lens, first_trace or tr
        checkpoints.append(CheckpointRecord(
            step=step,
            acc=dict(rec.get("acc", {})),
            loss=dict(rec.get("loss", {})),
            train_loss=rec.get("train_loss"),
            weight_norm=weight_norm(run, step, cache=cache_),
            lens={k: v["mrr"] for k, v in lens["targets"].items()},
            lens_recall1={k: v["recall"]["1"] for k, v in lens["targets"].items()},
            top_tokens={"tokens": lens["top_tokens"]["tokens"], "share": lens["top_tokens"]["share"]},
            strength=dict(zip(tr["perturbations"], tr["strength"])),
            logit_diff=dict(zip(tr["perturbations"], tr["logit_diff"])),
            n_examples=tr["n_examples"],
            clean_accuracy=tr["clean_accuracy"],
            circuit={k: v for k, v in circ.items() if k not in ("mrr", "strength", "examples")},
            diagnoses=diagnoses,
        ))
    assert first_lens is not None and first_trace is not None
    return SeriesResult(
        run=str(run.path),
        run_name=run.config.name,
        task=dataset.task,
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
