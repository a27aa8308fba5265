"""grokscope: mechanistic interpretability of grokked implicit reasoners.

Generates grokking tasks (the paper's composition / comparison / complex reasoning,
k-hop, modular addition), trains TransformerLens 4.x models on them from scratch, and
analyses their checkpoints (logit lens, causal tracing, circuit discovery, progress
measures) across the whole checkpoint series.

Every public name is here (``dir(grokscope)`` lists them, tab completion shows them);
submodules load on first use, so ``import grokscope`` stays fast (TransformerLens is
imported only when a model is built). Figures: ``grokscope.plots``. The layers, one
folder each, are described in docs/ARCHITECTURE.md.

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

from grokscope import _compat

__version__ = "0.2.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    # tasks: every public name of grokscope.tasks (its __all__: the protocol, the dataset
    # contract, each registered built-in task's generator and config) is served below
    # the run layer
    "RunConfig": ("grokscope.runs.config", "RunConfig"),
    "ModelConfig": ("grokscope.runs.config", "ModelConfig"),
    "TrainConfig": ("grokscope.runs.config", "TrainConfig"),
    "preset": ("grokscope.runs.presets", "preset"),
    "build_model": ("grokscope.runs.model", "build_model"),
    "Run": ("grokscope.runs.run", "Run"),
    "RunError": ("grokscope.runs.run", "RunError"),
    "load_run": ("grokscope.runs.run", "Run.open"),
    "summarize_metrics": ("grokscope.runs.grokking", "summarize_metrics"),
    "import_hf": ("grokscope.runs.hf_import", "import_hf"),
    "train": ("grokscope.training.loop", "train"),
    "train_new": ("grokscope.training.loop", "train_new"),
    "evaluate": ("grokscope.training.loop", "evaluate"),
    "eval_subsets": ("grokscope.training.loop", "eval_subsets"),
    "run_sweep": ("grokscope.training.sweep", "run_sweep"),
    "RayOptions": ("grokscope.training.ray_backend", "RayOptions"),
    "classify_phase": ("grokscope.training.phase", "classify_phase"),
    "phase_grid": ("grokscope.training.phase", "phase_grid"),
    "PhaseGrid": ("grokscope.training.phase", "PhaseGrid"),
    # lens
    "LensResult": ("grokscope.lens.logit", "LensResult"),
    "logit_lens": ("grokscope.lens.logit", "logit_lens"),
    "lens_split": ("grokscope.lens.logit", "lens_split"),
    "DLAResult": ("grokscope.lens.attribution", "DLAResult"),
    "direct_logit_attribution": ("grokscope.lens.attribution", "direct_logit_attribution"),
    "checkpoint_lens": ("grokscope.lens.checkpoint", "checkpoint_lens"),
    "attention_patterns": ("grokscope.lens.attention", "attention_patterns"),
    "attention_mass": ("grokscope.lens.attention", "attention_mass"),
    "top_keys": ("grokscope.lens.attention", "top_keys"),
    # patching
    "Counterfactuals": ("grokscope.patching.counterfactuals", "Counterfactuals"),
    "make_counterfactuals": ("grokscope.patching.counterfactuals", "make_counterfactuals"),
    "Site": ("grokscope.patching.engine", "Site"),
    "run_patches": ("grokscope.patching.engine", "run_patches"),
    "TraceResult": ("grokscope.patching.tracing", "TraceResult"),
    "trace": ("grokscope.patching.tracing", "trace"),
    "LocatedCircuit": ("grokscope.patching.hypothesis", "LocatedCircuit"),
    "find_circuit": ("grokscope.patching.hypothesis", "find_circuit"),
    "checkpoint_trace": ("grokscope.patching.checkpoint", "checkpoint_trace"),
    "checkpoint_circuit": ("grokscope.patching.checkpoint", "checkpoint_circuit"),
    "sample_rows": ("grokscope.series.sampling", "sample_rows"),
    # discovery
    "ComponentGraph": ("grokscope.discovery.graph", "ComponentGraph"),
    "Corruption": ("grokscope.discovery.scores", "Corruption"),
    "EdgeScores": ("grokscope.discovery.scores", "EdgeScores"),
    "prepare": ("grokscope.discovery.scores", "prepare"),
    "score_edges": ("grokscope.discovery.scores", "score_edges"),
    "spearman": ("grokscope.discovery.scores", "spearman"),
    "top_overlap": ("grokscope.discovery.scores", "top_overlap"),
    "EdgeCircuit": ("grokscope.discovery.faithfulness", "EdgeCircuit"),
    "FaithfulnessCurve": ("grokscope.discovery.faithfulness", "FaithfulnessCurve"),
    "faithfulness_curve": ("grokscope.discovery.faithfulness", "faithfulness_curve"),
    "smallest_circuit": ("grokscope.discovery.faithfulness", "smallest_circuit"),
    "Discovery": ("grokscope.discovery.circuit", "Discovery"),
    "discover": ("grokscope.discovery.circuit", "discover"),
    "describe_edges": ("grokscope.discovery.circuit", "describe_edges"),
    "refine": ("grokscope.discovery.methods", "refine"),
    "MibGraph": ("grokscope.discovery.mib", "MibGraph"),
    "to_mib": ("grokscope.discovery.mib", "to_mib"),
    "write_mib": ("grokscope.discovery.mib", "write_mib"),
    "read_mib": ("grokscope.discovery.mib", "read_mib"),
    "measure_mib": ("grokscope.discovery.mib", "measure_mib"),
    "encode_prompts": ("grokscope.discovery.inputs", "encode"),
    "PromptError": ("grokscope.discovery.inputs", "PromptError"),
    "UnsupportedModelError": ("grokscope.discovery.shapes", "UnsupportedModelError"),
    "DiscoverySeries": ("grokscope.discovery.series", "DiscoverySeries"),
    "discovery_series": ("grokscope.discovery.series", "discovery_series"),
    # the series engine
    "AnalysisCache": ("grokscope.series.cache", "AnalysisCache"),
    "analyse_series": ("grokscope.series.engine", "analyse_series"),
    "register_step_analysis": ("grokscope.series.engine", "register_step_analysis"),
    "StepOutput": ("grokscope.series.engine", "StepOutput"),
    "parse_steps": ("grokscope.series.engine", "parse_steps"),
    "CheckpointRecord": ("grokscope.series.records", "CheckpointRecord"),
    "SeriesResult": ("grokscope.series.records", "SeriesResult"),
    # progress measures and diagnoses
    "circuit_measures": ("grokscope.progress.measures", "circuit_measures"),
    "register_diagnosis": ("grokscope.progress.diagnoses", "register_diagnosis"),
    "ood_diagnosis": ("grokscope.progress.diagnoses", "ood_diagnosis"),
    "value_gap_diagnosis": ("grokscope.progress.diagnoses", "value_gap_diagnosis"),
    "attention_probe_diagnosis": ("grokscope.progress.diagnoses", "attention_probe_diagnosis"),
    "fourier_progress": ("grokscope.progress.fourier", "fourier_progress"),
    "progress_series": ("grokscope.progress.fourier", "progress_series"),
    "ProgressSeries": ("grokscope.progress.fourier", "ProgressSeries"),
    "pair_activations": ("grokscope.progress.neurons", "pair_activations"),
    "neuron_frequencies": ("grokscope.progress.neurons", "neuron_frequencies"),
    "forecast": ("grokscope.progress.forecasting", "forecast"),
    "locate_phases": ("grokscope.progress.forecasting", "locate_phases"),
    "cheap_measures": ("grokscope.progress.forecasting", "cheap_measures"),
    # figures and reports
    "plots": ("grokscope.plots", ""),
    "write_report": ("grokscope.report.build", "write_report"),
    "write_sweep_report": ("grokscope.report.sweep", "write_sweep_report"),
}

def _task_names() -> list[str]:
    return list(importlib.import_module("grokscope.tasks").__all__)


def __getattr__(name: str) -> Any:
    if name == "__all__":  # the tasks' names are the registered tasks' own (read on first use)
        return ["__version__", *_EXPORTS, *_task_names()]
    if name not in _EXPORTS:
        if name in _task_names():
            globals()[name] = getattr(importlib.import_module("grokscope.tasks"), name)
            return globals()[name]
        raise AttributeError(f"module 'grokscope' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({"__version__", *_EXPORTS, *_task_names(), *globals()} - {"annotations", "importlib", "Any"})


_compat.install()
