"""The built-in tasks, one file each; importing this package registers them all.

``composition``, ``comparison``, ``complex`` (the paper's three), ``khop`` (composition
over k hops) ``modular`` (modular addition, Nanda et al.) and ``tree`` (path finding in binary trees, Brinkmann et al.) and ``text-composition``
(composition written in English, issue #24). A new task is one file
here (or anywhere) that subclasses :class:`grokscope.tasks.Task` and calls
:func:`grokscope.tasks.register_task`, plus one import line below.
"""

from grokscope.tasks.builtin.comparison import ComparisonConfig, comparison, generate_comparison
from grokscope.tasks.builtin.complex import (
    ComplexConfig,
    complex_reasoning,
    derivable_order,
    generate_complex,
)
from grokscope.tasks.builtin.composition import CompositionConfig, composition, generate_composition
from grokscope.tasks.builtin.khop import KHopConfig, generate_khop
from grokscope.tasks.builtin.modular import ModularConfig, generate_modular
from grokscope.tasks.builtin.text_composition import (
    TextCompositionConfig,
    generate_text_composition,
)
from grokscope.tasks.builtin.tree import TreeConfig, generate_tree
from grokscope.tasks.builtin.tree_positions import PathLayout, path_layout

__all__ = [
    "CompositionConfig", "composition", "generate_composition",
    "ComparisonConfig", "comparison", "generate_comparison",
    "ComplexConfig", "complex_reasoning", "derivable_order", "generate_complex",
    "KHopConfig", "generate_khop",
    "ModularConfig", "generate_modular",
    "TreeConfig", "generate_tree", "PathLayout", "path_layout",
    "TextCompositionConfig", "generate_text_composition",
]
