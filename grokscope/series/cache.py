"""The per-checkpoint analysis cache: JSON results keyed by step, analysis and arguments.

Results are cached as JSON under ``RUN/.grokscope-cache/step_XXXXXXXX/`` with one file
per (analysis name, arguments), keyed by the step, the analysis name, a hash of the
arguments, the grokscope version, :data:`ANALYSIS_VERSION`, the data's content hash and
a fingerprint of the checkpoint (its ``meta.json`` and weight-file size): a second pass
reads every result from disk without loading a model. A run directory that cannot be
written still gets analysed, uncached.

:class:`Checkpoint` loads a step's model lazily and memoises analysis objects on it, so
several analyses of one step share one model and one set of examples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from grokscope import __version__
from grokscope.runs.run import META_FILE, MODEL_FILE, Run, atomic_write_bytes, step_dir_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

CACHE_DIR_NAME = ".grokscope-cache"
"""Directory inside a run that holds the analysis cache."""

ANALYSIS_VERSION = 3
"""Bump when an analysis changes its results, so older cache entries stop matching.
3: counterfactual candidates are drawn vectorized by the task (other draws than 2)."""


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


class Checkpoint:
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



def context(run: Run | str | os.PathLike[str], cache: AnalysisCache | bool | None) -> tuple[Run, AnalysisCache]:
    """The opened run and its cache (True: the run's own, False: none, or the one given)."""
    run = run if isinstance(run, Run) else Run.open(run)
    if isinstance(cache, AnalysisCache):
        return run, cache
    return run, AnalysisCache(run, enabled=cache is not False)


def cached(
    run: Run,
    cache_: AnalysisCache,
    step: int,
    kind: str,
    args: dict[str, Any],
    device: str | None,
    ck: Checkpoint | None,
    compute: Callable[[Checkpoint], Any],
) -> Any:
    """The cached ``kind`` result of ``step`` for ``args``, else ``compute(checkpoint)``
    stored (the checkpoint's model is loaded only on a miss)."""
    got = cache_.get(step, kind, args)
    if got is not None:
        return got
    return cache_.put(step, kind, args, compute(ck or Checkpoint(run, step, run.dataset(), device)))
