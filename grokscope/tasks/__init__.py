"""Tasks: the protocol and registry (:mod:`grokscope.tasks.base`), one file per task, the
shared dataset contract and the paper's file format.

Importing this package registers the built-in tasks: ``composition``, ``comparison``,
``complex`` (the paper's), ``khop`` and ``modular``. A new task is one file that subclasses
:class:`Task` and calls :func:`register_task`.
"""

from grokscope.tasks.base import (
    CircuitHypothesis,
    CounterfactualDraw,
    LensTarget,
    Stage,
    Task,
    get_task,
    register_task,
    task_names,
    task_of,
)
from grokscope.tasks.composition import composition, generate_composition
from grokscope.tasks.dataset import (
    PROBE_SPLITS,
    SPLITS,
    ComparisonKB,
    CompositionKB,
    Split,
    TaskDataset,
)
from grokscope.tasks.vocab import Vocab

__all__ = [
    "PROBE_SPLITS", "SPLITS", "ComparisonKB", "CompositionKB", "Split", "TaskDataset", "Vocab",
    "composition", "generate_composition",
    "CircuitHypothesis", "CounterfactualDraw", "LensTarget", "Stage", "Task",
    "get_task", "register_task", "task_names", "task_of",
]

from grokscope.tasks.comparison import (  # noqa: E402
    comparison,
    complex_reasoning,
    derivable_order,
    generate_comparison,
    generate_complex,
)

__all__ += ["comparison", "complex_reasoning", "derivable_order", "generate_comparison", "generate_complex"]

from grokscope.tasks.khop import KHopConfig, generate_khop  # noqa: E402
from grokscope.tasks.modular import ModularConfig, generate_modular  # noqa: E402
from grokscope.tasks.paper_format import load_paper_format, save_paper_format  # noqa: E402
from grokscope.tasks.tree import TreeConfig, generate_tree  # noqa: E402

__all__ += ["TreeConfig", "generate_tree"]
__all__ += ["KHopConfig", "ModularConfig", "generate_khop", "generate_modular", "load_paper_format", "save_paper_format"]
