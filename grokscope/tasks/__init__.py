"""The paper's three tasks as exact, seeded datasets, and its file format."""

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
]

from grokscope.tasks.comparison import (  # noqa: E402
    comparison,
    complex_reasoning,
    derivable_order,
    generate_comparison,
    generate_complex,
)

__all__ += ["comparison", "complex_reasoning", "derivable_order", "generate_comparison", "generate_complex"]

from grokscope.tasks.paper_format import load_paper_format, save_paper_format  # noqa: E402

__all__ += ["load_paper_format", "save_paper_format"]
