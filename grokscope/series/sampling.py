"""The one example sampler: every analysis of a checkpoint sees the same rows.

Lens, tracing, circuits, the series and discovery draw the rows of a split through
:func:`sample_rows`, so for the same ``(n, seed)`` they analyse the same examples.
"""

from __future__ import annotations

import numpy as np


def sample_rows(n_rows: int, n: int | None, seed: int) -> np.ndarray:
    """The rows of a split every analysis samples: ``n`` of ``n_rows`` without replacement.

    ``numpy.random.default_rng(seed).choice(n_rows, n, replace=False)``, sorted; all rows
    when ``n`` is None or at least ``n_rows``. Returns the generator's first draw, so a
    caller that goes on drawing from ``default_rng(seed)`` after it (the counterfactuals)
    continues the same stream.

    Example:
        >>> sample_rows(10, 3, 0).tolist()
        [5, 6, 9]
    """
    rows, _ = _sample(n_rows, n, seed)
    return rows


def _sample(n_rows: int, n: int | None, seed: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    if n is not None and n < n_rows:
        return np.sort(rng.choice(n_rows, size=n, replace=False)), rng
    return np.arange(n_rows), rng
