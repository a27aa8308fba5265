"""Old module paths (grokscope 0.1) kept importable for one release, with a warning.

``import grokscope.analysis.lens`` and ``from grokscope.config import preset`` still work:
a finder maps the old dotted name to the module that holds the code now (see
CHANGELOG.md) and raises a :class:`DeprecationWarning` naming the new path. Nothing in
grokscope itself imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

MOVED: dict[str, str] = {
    "grokscope.analysis": "grokscope.series",
    "grokscope.analysis.lens": "grokscope.lens.logit",
    "grokscope.analysis.attribution": "grokscope.lens.attribution",
    "grokscope.analysis.sampling": "grokscope.series.sampling",
    "grokscope.analysis.cache": "grokscope.series.cache",
    "grokscope.analysis.series": "grokscope.series.engine",
    "grokscope.analysis.grokking": "grokscope.runs.grokking",
    "grokscope.analysis.counterfactuals": "grokscope.patching.counterfactuals",
    "grokscope.analysis.patching": "grokscope.patching.engine",
    "grokscope.analysis.tracing": "grokscope.patching.tracing",
    "grokscope.analysis.circuits": "grokscope.patching.hypothesis",
    "grokscope.analysis.graph": "grokscope.discovery.graph",
    "grokscope.analysis.edge_patching": "grokscope.discovery.edges",
    "grokscope.analysis.discovery": "grokscope.discovery.scores",
    "grokscope.analysis.faithfulness": "grokscope.discovery.faithfulness",
    "grokscope.analysis.circuit_discovery": "grokscope.discovery.circuit",
    "grokscope.analysis.discovery_series": "grokscope.discovery.series",
    "grokscope.analysis.measures": "grokscope.progress.measures",
    "grokscope.analysis.progress": "grokscope.progress.fourier",
    "grokscope.analysis.forecast": "grokscope.progress.forecasting",
    "grokscope.analysis.diagnoses": "grokscope.progress.diagnoses",
    "grokscope.config": "grokscope.runs.config",
    "grokscope.model": "grokscope.runs.model",
    "grokscope.run": "grokscope.runs.run",
    "grokscope.train": "grokscope.training.loop",
    "grokscope.sweep": "grokscope.training.sweep",
    "grokscope.hf_import": "grokscope.runs.hf_import",
    "grokscope.diagnosis_plots": "grokscope.plots.diagnoses",
    "grokscope.formation_plots": "grokscope.plots.formation",
    "grokscope.discovery_plots": "grokscope.plots.discovery",
    "grokscope.cli_common": "grokscope.cli.common",
    "grokscope.cli_discovery": "grokscope.cli.discovery",
    "grokscope.tasks.composition": "grokscope.tasks.builtin.composition",
    "grokscope.tasks.comparison": "grokscope.tasks.builtin.comparison",
    "grokscope.tasks.khop": "grokscope.tasks.builtin.khop",
    "grokscope.tasks.modular": "grokscope.tasks.builtin.modular",
}
"""Old module path -> the module that holds its code now."""

EXTRA_NAMES: dict[str, tuple[str, ...]] = {
    # names an old module served that now live elsewhere
    "grokscope.config": ("grokscope.runs.presets", "grokscope.tasks.builtin"),
    "grokscope.analysis.series": ("grokscope.series.records", "grokscope.lens.checkpoint",
                                  "grokscope.patching.checkpoint", "grokscope.progress.diagnoses"),
    "grokscope.tasks.comparison": ("grokscope.tasks.builtin.complex",),
}


class _Alias(types.ModuleType):
    """A module object for an old path: attribute reads go to the new module(s)."""

    def __getattr__(self, name: str) -> Any:
        for target in self.__dict__["_targets"]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new} (grokscope 0.2); import it from there or from grokscope",
                      DeprecationWarning, stacklevel=3)
        module = _Alias(spec.name)
        module.__dict__["_targets"] = (new, *EXTRA_NAMES.get(spec.name, ()))
        module.__path__ = []  # a package, so old submodule paths resolve through this finder
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    """Put the old-path finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
