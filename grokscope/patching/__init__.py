"""Activation patching through hooks: counterfactuals, one batched patching engine, causal
tracing, and the task's circuit hypothesis located from lens + tracing evidence.

- :mod:`.counterfactuals`: :func:`make_counterfactuals` (the task's perturbations, vectorized);
- :mod:`.engine`: :func:`run_patches` (every :class:`Site` patched in one batched pass);
- :mod:`.tracing`: :func:`trace` (causal strength of every ``S[l, p]``);
- :mod:`.hypothesis`: :func:`find_circuit` / :func:`build_circuit` -> :class:`LocatedCircuit`;
- :mod:`.checkpoint`: :func:`checkpoint_trace`, :func:`checkpoint_circuit` (cached, the
  ``trace`` and ``circuit`` step analyses of the series engine).
"""

from grokscope.patching.checkpoint import checkpoint_circuit, checkpoint_trace
from grokscope.patching.counterfactuals import (
           Counterfactuals,
           make_counterfactuals,
           perturbations_of,
)
from grokscope.patching.engine import PatchOutput, Readout, Site, run_patches
from grokscope.patching.hypothesis import LocatedCircuit, build_circuit, find_circuit
from grokscope.patching.tracing import TraceResult, trace

__all__ = ["Counterfactuals", "make_counterfactuals", "perturbations_of", "Site", "Readout", "PatchOutput",
           "run_patches", "TraceResult", "trace", "LocatedCircuit", "build_circuit", "find_circuit",
           "checkpoint_trace", "checkpoint_circuit"]
