"""Training and sweeps: the loop (AdamW, schedule, bit-exact resume, DDP), evaluation,
and grids of runs.

- :mod:`.train`: :func:`train_new`, :func:`train`, :func:`evaluate`;
- :mod:`.sweep`: :func:`run_sweep` (a grid of ``grokscope train`` runs) and its table.
"""

from grokscope.training.loop import evaluate, train, train_new
from grokscope.training.sweep import run_sweep, summarize_runs

__all__ = ["train", "train_new", "evaluate", "run_sweep", "summarize_runs"]
