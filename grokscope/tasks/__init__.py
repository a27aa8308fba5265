"""Tasks: the protocol and registry (:mod:`grokscope.tasks.base`), the shared dataset
contract (:mod:`.dataset`), vocabularies (:mod:`.vocab`), the paper's file format
(:mod:`.paper_format`), and the built-in tasks (:mod:`.builtin`, one file per task, each
with its own config class).

Importing this package registers the built-in tasks. A new task is one file that
subclasses :class:`Task` and calls :func:`register_task`; its config class travels with
it (``Task.config_cls``), so nothing above ``tasks/`` needs to import it.
"""

from grokscope.tasks.base import (
    AttentionProbe,
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
from grokscope.tasks.builtin import *  # noqa: F403  (registers the built-in tasks)
from grokscope.tasks.builtin import __all__ as _builtin_all
from grokscope.tasks.dataset import (
    PROBE_SPLITS,
    SPLITS,
    ComparisonKB,
    CompositionKB,
    Split,
    TaskDataset,
)
from grokscope.tasks.paper_format import load_paper_format, save_paper_format
from grokscope.tasks.vocab import Vocab

__all__ = [
    "PROBE_SPLITS", "SPLITS", "ComparisonKB", "CompositionKB", "Split", "TaskDataset", "Vocab",
    "AttentionProbe", "CircuitHypothesis", "CounterfactualDraw", "LensTarget", "Stage", "Task",
    "get_task", "register_task", "task_names", "task_of",
    "load_paper_format", "save_paper_format",
    *_builtin_all,
]
