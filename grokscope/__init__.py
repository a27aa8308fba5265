"""grokscope: mechanistic interpretability of grokked implicit reasoners.

Generates the tasks of "Grokked Transformers are Implicit Reasoners" (Wang et al., 2024),
trains TransformerLens models on them, and analyses their checkpoints.
"""

__version__ = "0.1.0"
