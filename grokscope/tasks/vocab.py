"""The task vocabulary: one token per entity, relation, attribute, value and label.

Token strings are the paper's (``<e_12>``, ``<r_3>``, ``<attr_2>``, ``<7>``,
``<attr_2_0>``, ``</a>``); the order of :meth:`Vocab.composition` and
:meth:`Vocab.comparison` is the order of the paper's ``vocab.json``.

Example:
    >>> v = Vocab.composition(n_entities=3, n_relations=2)
    >>> v.tokens[:4], v["<r_1>"], v.token_class("<r_1>")
    (('<e_0>', '<e_1>', '<e_2>', '<r_0>'), 4, 'relation')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

SPECIAL_TOKENS: tuple[str, ...] = ("<mask>", "<sep>", "<a>", "</a>", "<q>", "</q>")
END = "</a>"
EQUALS = "<=>"
"""The ``=`` of modular addition: a special token outside :data:`SPECIAL_TOKENS` (so the
paper's vocabularies, which list every special token, are unchanged)."""
TOKEN_CLASSES: tuple[str, ...] = ("entity", "relation", "attribute", "value", "label", "special", "word")
WORD_RE = re.compile(r"^<w:([^<>]+)>$")
"""A piece of a trained text tokenizer, ``<w:Ġmentor>`` (the ``word`` class; the text task's vocabulary)."""
_TASK_SPECIALS: set[str] = set()
"""Special tokens a task registers (:func:`register_special_tokens`), e.g. the tree task's separators."""


def register_special_tokens(*tokens: str) -> None:
    """Let a task add its own ``<...>`` special tokens (separators) to the vocabulary's classes.

    Example:
        >>> register_special_tokens("<|>")
        >>> parse_token("<|>")
        ('special', ())
    """
    for t in tokens:
        if _TOKEN_RE.fullmatch(t) is None:
            raise ValueError(f"special token {t!r} must be one <...> token")
        _TASK_SPECIALS.add(t)

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("entity", re.compile(r"^<e_(\d+)>$")),
    ("relation", re.compile(r"^<r_(\d+)>$")),
    ("label", re.compile(r"^<attr_(\d+)_(\d+)>$")),
    ("attribute", re.compile(r"^<attr_(\d+)>$")),
    ("value", re.compile(r"^<(\d+)>$")),
)
_TOKEN_RE = re.compile(r"<[^<>]+>")


def parse_token(token: str) -> tuple[str, tuple[int, ...]]:
    """Return the class of a token string and its integer fields.

    Example:
        >>> parse_token("<attr_3_2>")
        ('label', (3, 2))
    """
    for cls, pat in _PATTERNS:
        m = pat.match(token)
        if m:
            return cls, tuple(int(g) for g in m.groups())
    if token in SPECIAL_TOKENS or token == EQUALS or token in _TASK_SPECIALS:
        return "special", ()
    if WORD_RE.match(token):
        return "word", ()
    raise ValueError(f"unknown token {token!r}: not an entity, relation, attribute, value, label, special or <w:...> word token")


def split_tokens(text: str) -> list[str]:
    """Split a paper-format string such as ``"<e_5><r_7>"`` into its tokens.

    Raises:
        ValueError: if the text holds anything outside ``<...>`` tokens.
    """
    tokens = _TOKEN_RE.findall(text)
    if "".join(tokens) != text:
        raise ValueError(f"malformed token string {text!r}: expected a sequence of <...> tokens")
    return tokens


@dataclass(frozen=True)
class Vocab:
    """An ordered token list with a class for every token.

    Attributes:
        tokens: the token strings; a token's id is its index.
    """

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _classes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {t: i for i, t in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            dup = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise ValueError(f"duplicate tokens in vocabulary: {dup[:5]}")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_classes", tuple(parse_token(t)[0] for t in self.tokens))

    # -- construction -------------------------------------------------------
    @classmethod
    def composition(cls, n_entities: int, n_relations: int) -> Vocab:
        """Entities, relations, then the special tokens (the paper's order)."""
        return cls(
            tuple(f"<e_{i}>" for i in range(n_entities))
            + tuple(f"<r_{j}>" for j in range(n_relations))
            + SPECIAL_TOKENS
        )

    @classmethod
    def comparison(cls, n_entities: int, n_attributes: int, n_values: int) -> Vocab:
        """Entities, attributes, values, specials, then three labels per attribute."""
        return cls(
            tuple(f"<e_{i}>" for i in range(n_entities))
            + tuple(f"<attr_{k}>" for k in range(n_attributes))
            + tuple(f"<{v}>" for v in range(n_values))
            + SPECIAL_TOKENS
            + tuple(f"<attr_{k}_{lab}>" for k in range(n_attributes) for lab in range(3))
        )

    # -- lookup -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary ({len(self)} tokens)") from None

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def encode(self, text: str | list[str]) -> list[int]:
        """Token ids of a paper-format string or a list of token strings."""
        toks = split_tokens(text) if isinstance(text, str) else text
        return [self[t] for t in toks]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """The paper-format string of a sequence of ids."""
        return "".join(self.tokens[int(i)] for i in ids)

    def token_class(self, token: str | int) -> str:
        i = token if isinstance(token, (int, np.integer)) else self[token]
        return self._classes[int(i)]

    def class_ids(self, token_class: str) -> np.ndarray:
        """Ids of every token of one class, in vocabulary order."""
        if token_class not in TOKEN_CLASSES:
            raise ValueError(f"unknown token class {token_class!r}; choose one of {', '.join(TOKEN_CLASSES)}")
        return np.array([i for i, c in enumerate(self._classes) if c == token_class], dtype=np.int64)

    def _indexed(self, token_class: str) -> np.ndarray:
        """Ids ordered by the token's own index (``<e_i>`` at position i)."""
        pairs = sorted(
            (parse_token(self.tokens[i])[1][0], i) for i in self.class_ids(token_class)
        )
        if [p[0] for p in pairs] != list(range(len(pairs))):
            raise ValueError(f"{token_class} tokens are not numbered 0..{len(pairs) - 1} without gaps")
        return np.array([p[1] for p in pairs], dtype=np.int64)

    @cached_property
    def entity_ids(self) -> np.ndarray:
        """``entity_ids[i]`` is the id of ``<e_i>``."""
        return self._indexed("entity")

    @cached_property
    def relation_ids(self) -> np.ndarray:
        return self._indexed("relation")

    @cached_property
    def attribute_ids(self) -> np.ndarray:
        return self._indexed("attribute")

    @cached_property
    def value_ids(self) -> np.ndarray:
        """``value_ids[v]`` is the id of ``<v>``."""
        return self._indexed("value")

    @cached_property
    def label_ids(self) -> np.ndarray:
        """``label_ids[k, L]`` is the id of ``<attr_k_L>``; shape (n_attributes, 3)."""
        ids = self.class_ids("label")
        n_attr = len(self.class_ids("attribute"))
        out = np.full((n_attr, 3), -1, dtype=np.int64)
        for i in ids:
            k, lab = parse_token(self.tokens[i])[1]
            if k >= n_attr or lab > 2:
                raise ValueError(f"label token {self.tokens[i]!r} has no matching attribute")
            out[k, lab] = i
        if (out < 0).any():
            raise ValueError("every attribute needs its three label tokens <attr_k_0|1|2>")
        return out
