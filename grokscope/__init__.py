"""grokscope: mechanistic interpretability of grokked implicit reasoners.

Generates the tasks of "Grokked Transformers are Implicit Reasoners" (Wang et al., 2024),
trains TransformerLens models on them from scratch, and analyses their checkpoints with
the logit lens and causal tracing, across the whole checkpoint series.

The public API is importable from the top level; submodules load on first use, so
``import grokscope`` stays fast (TransformerLens is imported only when a model is built).

Example:
    >>> import grokscope as gs
    >>> ds = gs.composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0)
    >>> ds.task
    'composition'
    >>> run = gs.load_run("checkpoints/composition-small")   # doctest: +SKIP
    >>> model = run.load_model()                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    # tasks: every public name of grokscope.tasks (its __all__: each registered task's
    # generator, the protocol, the paper format) is served by __getattr__ below
    # config, model, runs, training
    "RunConfig": ("grokscope.config", "RunConfig"),
    "preset": ("grokscope.config", "preset"),
    "build_model": ("grokscope.model", "build_model"),
    "Run": ("grokscope.run", "Run"),
    "load_run": ("grokscope.run", "Run.open"),
    "train": ("grokscope.train", "train"),
    "train_new": ("grokscope.train", "train_new"),
    "evaluate": ("grokscope.train", "evaluate"),
    # analysis
    "logit_lens": ("grokscope.analysis.lens", "logit_lens"),
    "lens_split": ("grokscope.analysis.lens", "lens_split"),
    "direct_logit_attribution": ("grokscope.analysis.attribution", "direct_logit_attribution"),
    "make_counterfactuals": ("grokscope.analysis.tracing", "make_counterfactuals"),
    "trace": ("grokscope.analysis.tracing", "trace"),
    "find_circuit": ("grokscope.analysis.circuits", "find_circuit"),
    "analyse_series": ("grokscope.analysis.series", "analyse_series"),
    "ood_diagnosis": ("grokscope.analysis.diagnoses", "ood_diagnosis"),
    "value_gap_diagnosis": ("grokscope.analysis.diagnoses", "value_gap_diagnosis"),
    "Corruption": ("grokscope.analysis.discovery", "Corruption"),
    "score_edges": ("grokscope.analysis.discovery", "score_edges"),
    "discover": ("grokscope.analysis.circuit_discovery", "discover"),
    "discovery_series": ("grokscope.analysis.discovery_series", "discovery_series"),
    # figures and reports
    "plots": ("grokscope.plots", ""),
    "write_report": ("grokscope.report", "write_report"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        tasks = importlib.import_module("grokscope.tasks")
        if name not in tasks.__all__:
            raise AttributeError(f"module 'grokscope' has no attribute {name!r}")
        globals()[name] = getattr(tasks, name)
        return globals()[name]
    module, attr = _EXPORTS[name]
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*__all__, *importlib.import_module("grokscope.tasks").__all__})
