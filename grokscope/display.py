"""How results print: a one-line ``__repr__`` (what it is and its key numbers, at most
:data:`MAX_REPR` characters) and a small HTML table for Jupyter (``_repr_html_``).

Every public result type builds both from one ``summary()`` dict, so the two always
agree and a result never dumps its tensors.

Example:
    >>> short_repr("LensResult", {"targets": 3, "layers": 5})
    '<LensResult targets=3 layers=5>'
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

MAX_REPR = 300
"""The longest a result's ``__repr__`` may be."""


def fmt(value: Any) -> str:
    """A value as a short string: floats to 3 significant digits, long lists cut."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        items = [fmt(v) for v in value[:6]]
        return "[" + ", ".join(items) + (", ..." if len(value) > 6 else "") + "]"
    if isinstance(value, Mapping):
        items = [f"{k}: {fmt(v)}" for k, v in list(value.items())[:4]]
        return "{" + ", ".join(items) + (", ..." if len(value) > 4 else "") + "}"
    return str(value)


def short_repr(kind: str, summary: Mapping[str, Any]) -> str:
    """``<kind key=value ...>``, cut to :data:`MAX_REPR` characters."""
    text = f"<{kind} " + " ".join(f"{k}={fmt(v)}" for k, v in summary.items()) + ">"
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 4] + " ...>"


def html_table(kind: str, summary: Mapping[str, Any]) -> str:
    """A two-column HTML table of the summary, titled with the kind."""
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>"
        f"{html.escape(fmt(v))}</td></tr>" for k, v in summary.items()
    )
    return f"<table><caption style='text-align:left'><b>{html.escape(kind)}</b></caption>{rows}</table>"


class Summarized:
    """Mixin: ``__repr__`` and ``_repr_html_`` from the class's ``summary()`` dict."""

    def summary(self) -> dict[str, Any]:  # pragma: no cover - every user overrides it
        raise NotImplementedError

    def __repr__(self) -> str:
        return short_repr(type(self).__name__, self.summary())

    def _repr_html_(self) -> str:
        return html_table(type(self).__name__, self.summary())
