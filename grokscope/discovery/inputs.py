"""A researcher's prompts as a :class:`~grokscope.discovery.scores.Corruption`.

Strings are tokenized with the model's own tokenizer (``model.to_tokens``, its
default BOS), each prompt on its own, then right-padded to the longest with the
tokenizer's pad token; the attention mask marks the real tokens and each prompt is
scored at its own last real token. Attention is causal, so a real token never reads a
pad: the model runs on the padded batch unchanged and the pads are never scored.
A counterfactual prompt must tokenize to as many tokens as its clean prompt (edges
are patched position by position). Answers are token ids or single-token strings
(tokenized without BOS, so ``" Paris"`` with its leading space for GPT-2-style
tokenizers).

Example:
    >>> c = encode(model, ["The capital of France is"], answer=[" Paris"], ablation="mean")  # doctest: +SKIP
    >>> c.score_pos                                                                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int

from grokscope.discovery.scores import ABLATIONS, Corruption
from grokscope.errors import GrokscopeError


class PromptError(GrokscopeError, ValueError):
    """Prompts or answers that cannot be encoded as asked (the message says which and why)."""


def _is_strings(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(s, str) for s in x)


def _tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise PromptError(f"{type(model).__name__} has no tokenizer: pass token tensors (and attention_mask) "
                          "instead of strings")
    return tok


def _pad_id(model: Any) -> int:
    tok = _tokenizer(model)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tok, name, None)
        if v is not None:
            return int(v)
    return 0


def tokenize(model: Any, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Each prompt's token ids (the model's tokenizer and default BOS), unpadded."""
    _tokenizer(model)
    return [model.to_tokens(p)[0].cpu() for p in prompts]


def pad_right(seqs: Sequence[torch.Tensor], pad: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [example, pos], attention_mask [example, pos])`` right-padded to ``length`` (default the longest)."""
    n = max(len(s) for s in seqs) if length is None else length
    tokens = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return tokens, mask


def answer_ids(model: Any, answers: Any, n: int, what: str = "answer") -> Int[torch.Tensor, " example"] | None:
    """Answers as ``[example]`` token ids: ids as given, strings tokenized without BOS (one token each)."""
    if answers is None:
        return None
    if isinstance(answers, str):
        answers = [answers] * n
    if _is_strings(answers):
        _tokenizer(model)
        out = []
        for i, a in enumerate(answers):
            ids = model.to_tokens(a, prepend_bos=False)[0].tolist()
            if len(ids) != 1:
                raise PromptError(f"{what}[{i}] = {a!r} is {len(ids)} tokens {ids}; give single-token answers "
                                  "(e.g. with a leading space) or token ids")
            out.append(ids[0])
        ids_t = torch.tensor(out, dtype=torch.long)
    else:
        ids_t = torch.as_tensor(answers, dtype=torch.long).flatten()
        if ids_t.numel() == 1 and n > 1:
            ids_t = ids_t.expand(n).clone()
    if ids_t.shape != (n,):
        raise PromptError(f"{what} must give one token per prompt ({n}), got {ids_t.numel()}")
    return ids_t


def encode(
    model: Any,
    clean: Any,
    corrupt: Any = None,
    *,
    answer: Any = None,
    cf_answer: Any = None,
    attention_mask: Any = None,
    ablation: str | None = None,
    name: str = "",
) -> Corruption:
    """Prompts (strings or token tensors) and answers as a :class:`Corruption`.

    Args:
        model: the model (its tokenizer encodes strings).
        clean: a list of prompts, or ``[example, pos]`` token ids.
        corrupt: counterfactual prompts (same form; each as many tokens as its clean
            prompt), or None for ``mean`` / ``zero`` ablation.
        answer, cf_answer: ``[example]`` token ids or single-token strings (or one for all).
        attention_mask: ``[example, pos]`` for token tensors (1 real, 0 right padding).
        ablation: ``counterfactual`` (default with ``corrupt``), ``mean`` (default
            without) or ``zero``.
        name: a label for reports.

    Raises:
        PromptError: what cannot be encoded, naming the prompt.
    """
    if ablation is None:
        ablation = "counterfactual" if corrupt is not None else "mean"
    if ablation not in ABLATIONS:
        raise PromptError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    if ablation == "counterfactual" and corrupt is None:
        raise PromptError("counterfactual ablation needs corrupt prompts; without them use ablation='mean' or 'zero'")
    if ablation != "counterfactual" and corrupt is not None:
        raise PromptError(f"ablation={ablation!r} patches with {ablation} values: drop the corrupt prompts, "
                          "or use ablation='counterfactual'")
    if _is_strings(clean):
        seqs = tokenize(model, clean)
        cseqs = None
        if corrupt is not None:
            if not _is_strings(corrupt) or len(corrupt) != len(clean):
                raise PromptError(f"corrupt must be {len(clean)} strings like clean")
            cseqs = tokenize(model, corrupt)
            for i, (a, b) in enumerate(zip(seqs, cseqs)):
                if len(a) != len(b):
                    raise PromptError(f"prompt {i}: clean {clean[i]!r} is {len(a)} tokens, corrupt {corrupt[i]!r} "
                                      f"{len(b)}; a counterfactual must have its clean prompt's length")
        pad = _pad_id(model)
        tokens, mask = pad_right(seqs, pad)
        ctokens = None if cseqs is None else pad_right(cseqs, pad, tokens.shape[1])[0]
    else:
        if isinstance(clean, (list, tuple)) and clean and isinstance(clean[0], str):
            raise PromptError("clean mixes strings and other values; give a list of strings or a token tensor")
        tokens = torch.as_tensor(clean, dtype=torch.long)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise PromptError(f"clean token ids must be [example, pos], got shape {tuple(tokens.shape)}")
        mask = None if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        ctokens = None
        if corrupt is not None:
            ctokens = torch.as_tensor(corrupt, dtype=torch.long)
            if ctokens.ndim == 1:
                ctokens = ctokens[None]
            if ctokens.shape != tokens.shape:
                raise PromptError(f"corrupt token ids have shape {tuple(ctokens.shape)}, clean {tuple(tokens.shape)}")
    n = len(tokens)
    if n == 0:
        raise PromptError("no prompts")
    if mask is not None and bool((mask == 1).all()):
        mask = None
    return Corruption(tokens, ctokens, answer_ids(model, answer, n), answer_ids(model, cf_answer, n, "cf_answer"),
                      ablation=ablation, name=name or ablation, attention_mask=mask)
