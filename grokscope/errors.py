"""grokscope's exceptions and warnings: one family, each also a built-in type, so an
existing ``except ValueError`` / ``except FileNotFoundError`` still catches it.

- :class:`GrokscopeError`: the base of every error grokscope raises on purpose;
- :class:`ConfigError` (a ``ValueError``): a bad config value or key, the message names
  the allowed values or the closest valid key;
- :class:`grokscope.RunError` (a ``ValueError``, in :mod:`grokscope.runs.run`): a run that
  cannot be read as asked, naming what is there (e.g. the available steps);
- :class:`GrokscopeWarning` (a ``UserWarning``): a result that may not mean what it says,
  e.g. :class:`NoisyResultWarning` when a clean/corrupt metric gap is too small.

Example:
    >>> issubclass(ConfigError, ValueError) and issubclass(ConfigError, GrokscopeError)
    True
    >>> closest("lr", ["lr_min", "lr", "betas"])
    'lr'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GrokscopeError(Exception):
    """Base of the errors grokscope raises on purpose."""


class ConfigError(GrokscopeError, ValueError):
    """A config value or key that grokscope refuses (the message says what is allowed)."""


class GrokscopeWarning(UserWarning):
    """A result that may not mean what it says (filter with ``warnings.simplefilter``)."""


class NoisyResultWarning(GrokscopeWarning):
    """The clean and corrupted metrics are too close for a fraction of their gap to mean anything."""


def closest(name: str, allowed: Iterable[str]) -> str | None:
    """The allowed name closest to ``name`` (difflib), or None if nothing is close."""
    match = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_key_message(what: str, keys: Iterable[str], allowed: Iterable[str]) -> str:
    """``unknown <what> key 'lrr' (did you mean 'lr'?); allowed: ...``."""
    allowed = sorted(allowed)
    parts = []
    for key in sorted(keys):
        hint = closest(key, allowed)
        parts.append(f"{key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    return f"unknown {what} key{'s' if len(parts) > 1 else ''} {', '.join(parts)}; allowed: {', '.join(allowed)}"
