"""Training and sweeps: the loop (AdamW, schedule, bit-exact resume, DDP), evaluation,
and grids of runs.

- :mod:`.train`: :func:`train_new`, :func:`train`, :func:`evaluate`;
- :mod:`.sweep`: :func:`run_sweep` (a grid of ``grokscope train`` runs, on a local pool
  or Ray: :mod:`.ray_backend`) and its table;
- :mod:`.phase`: :func:`classify_phase` (memorizing / grokking / comprehension /
  confusion) and :func:`phase_grid` (a sweep's phase diagram as data).
"""

from grokscope.training.loop import evaluate, train, train_new
from grokscope.training.phase import PhaseGrid, classify_phase, phase_grid
from grokscope.training.ray_backend import RayOptions
from grokscope.training.sweep import run_sweep, summarize_runs

__all__ = ["train", "train_new", "evaluate", "run_sweep", "summarize_runs", "RayOptions",
           "classify_phase", "phase_grid", "PhaseGrid"]
