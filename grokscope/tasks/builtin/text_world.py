"""The English world of the text tasks (issue #24): names, relation nouns, templates, the
BPE tokenizer trained on a task's own text, and the ``<w:piece>`` vocabulary.

A grokscope token id is the tokenizer's id: :func:`vocab_of` lists the tokenizer's
vocabulary in id order, ``<bos>`` and ``<eos>`` as they are, every other piece ``p`` as
``<w:p>`` (the ``word`` token class).

Example:
    >>> tok = train_tokenizer(["Kalo's mentor is Vemi Tora"])
    >>> tok.encode("Kalo's mentor is").tokens
    ['<bos>', 'ĠKalo', "'s", 'Ġmentor', 'Ġis']
    >>> vocab_of(tok).tokens[:2], vocab_of(tok).token_class("<w:Ġis>")
    (('<bos>', '<eos>'), 'word')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from grokscope.tasks.dataset import CompositionKB, Split, TaskDataset
from grokscope.tasks.vocab import Vocab, register_special_tokens

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BOS, EOS = "<bos>", "<eos>"
register_special_tokens(BOS, EOS)

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "text_meta.json"

RELATION_WORDS: tuple[str, ...] = (
    "mentor", "boss", "teacher", "neighbor", "doctor", "lawyer", "coach", "friend",
    "landlord", "partner", "rival", "editor", "banker", "tailor", "barber", "pilot",
    "driver", "agent", "sponsor", "tutor", "nurse", "dentist", "trainer", "manager",
)
"""One English noun per relation (each a single token under the trained tokenizer)."""

ATOMIC_TEMPLATES: tuple[str, ...] = (
    "{h}'s {r} is",
    "The {r} of {h} is",
    "Who is the {r} of {h}? It is",
    "Ask {h} who the {r} is: it is",
    "As for {h}, the {r} is",
    "Everyone knows that the {r} of {h} is",
    "We are told that {h}'s {r} is",
    "The person serving as {h}'s {r} is",
)
"""Atomic-fact templates; the answer name follows the text."""

QUERY_TEMPLATES: tuple[str, ...] = (
    "{h}'s {r1}'s {r2} is",
    "Who is the {r2} of the {r1} of {h}?",
    "The {r2} of the {r1} of {h} is",
    "Who is the {r2} of {h}'s {r1}? It is",
    "As for {h}, the {r2} of the {r1} is",
    "Everyone knows that the {r2} of {h}'s {r1} is",
    "Take {h}'s {r1}: the {r2} is",
    "The person serving as the {r2} of {h}'s {r1} is",
)
"""Two-hop templates (the answer is the ``r2`` of the ``r1`` of ``h``); the first
``n_templates`` are trained; template 0 is the aligned analysis layout."""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class TextKB(CompositionKB):
    """The composition knowledge base with its English world: names, relation words, the
    atomic templates of every relation and the tokenizer (its JSON).

    Attributes:
        names: the name of every entity.
        relations: the noun of every relation.
        relation_templates: ``[relation][i]`` atomic template indices (trained, then held out).
        tokenizer_json: the tokenizer, ``Tokenizer.from_str`` of it.
    """

    names: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    relation_templates: tuple[tuple[int, ...], ...] = ()
    tokenizer_json: str = ""

    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    @property
    def name_lengths(self) -> np.ndarray:
        """Tokens (= words) of every entity's name."""
        return np.array([len(n.split()) for n in self.names], dtype=np.int64)


# --------------------------------------------------------------------------- names, templates, text


def name_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct capitalised CVCV words (``Kalo``)."""
    sylls = [c + v for c in _CONSONANTS for v in _VOWELS]
    pairs = rng.permutation(len(sylls) ** 2)[:n]
    return [(sylls[p // len(sylls)] + sylls[p % len(sylls)]).capitalize() for p in pairs]


def entity_names(cfg: Any, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """(name of every entity, its word count): distinct names of ``name_lengths`` words."""
    words = name_words(cfg.n_name_words, rng)
    lengths = np.asarray(cfg.name_lengths)[rng.integers(0, len(cfg.name_lengths), size=cfg.n_entities)]
    n_one = int((lengths == 1).sum())
    if n_one > len(words):
        raise ValueError(f"{n_one} one-word names need n_name_words >= {n_one}, got {cfg.n_name_words}")
    one = iter(rng.permutation(len(words))[:n_one])
    seen: set[str] = set()
    names = []
    for k in lengths:
        if k == 1:
            name = words[int(next(one))]
        else:
            for _ in range(1000):
                name = " ".join(words[int(i)] for i in rng.integers(0, len(words), size=int(k)))
                if name not in seen and len(set(name.split())) == k:
                    break
            else:  # pragma: no cover - needs a tiny word pool
                raise ValueError(f"cannot draw {cfg.n_entities} distinct names from {cfg.n_name_words} words")
        seen.add(name)
        names.append(name)
    return names, lengths.astype(np.int64)


def relation_templates(cfg: Any, rng: np.random.Generator) -> np.ndarray:
    """(n_relations, n_templates + held_out) atomic template indices per relation (the
    first ``n_templates`` trained, the rest held out)."""
    k = cfg.n_templates + cfg.held_out_templates
    return np.stack([rng.permutation(len(ATOMIC_TEMPLATES))[:k] for _ in range(cfg.n_relations)])


def render_atomic(template: int, h: str, r: str) -> str:
    return ATOMIC_TEMPLATES[template].format(h=h, r=r)


def render_query(template: int, h: str, r1: str, r2: str) -> str:
    return QUERY_TEMPLATES[template].format(h=h, r1=r1, r2=r2)


def train_tokenizer(corpus: list[str]) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``corpus`` until every word is one token,
    ``<bos>`` (id 0) and ``<eos>`` (id 1) special, ``<bos>`` prepended by its post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=100_000, special_tokens=[BOS, EOS], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def vocab_of(tok: Tokenizer) -> Vocab:
    """The grokscope vocabulary of a tokenizer: ids equal, pieces written ``<w:piece>``."""
    inv = {i: p for p, i in tok.get_vocab(with_added_tokens=True).items()}
    return Vocab(tuple(inv[i] if inv[i] in (BOS, EOS) else f"<w:{inv[i]}>" for i in range(len(inv))))


# --------------------------------------------------------------------------- text <-> tokens


def encode_rows(tok: Tokenizer, inputs: list[str], targets: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens ``[n, T]`` right-padded with ``<eos>``, target_pos) from text, checking that
    ``encode(target).ids`` is ``encode(input).ids`` + answer tokens + ``<eos>``."""
    eos = tok.token_to_id(EOS)
    enc_in = tok.encode_batch(inputs)
    enc_tg = tok.encode_batch(targets)
    width = max((len(e.ids) for e in enc_tg), default=2)
    tokens = np.full((len(inputs), width), eos, dtype=np.int64)
    pos = np.zeros(len(inputs), dtype=np.int64)
    for i, (a, b) in enumerate(zip(enc_in, enc_tg)):
        x, y = a.ids, b.ids
        if y[: len(x)] != x or len(y) < len(x) + 2 or y[-1] != eos or eos in y[len(x):-1]:
            raise ValueError(f"{where}[{i}]: target_text {targets[i]!r} does not encode to its input's tokens, "
                             f"an answer and {EOS}")
        tokens[i, : len(y)] = y
        pos[i] = len(x) - 1
    return tokens, pos


def first_tokens(tok: Tokenizer, names: list[str]) -> np.ndarray:
    return np.array([tok.encode(" " + n, add_special_tokens=False).ids[0] for n in names], dtype=np.int64)


def text_items(dataset: TaskDataset, split: Split) -> list[tuple[str, str]]:
    """(input_text, target_text) of every row, decoded with the tokenizer's byte-level rules."""
    vocab = dataset.vocab
    pieces = [t if t in (BOS, EOS) else t[3:-1] for t in vocab.tokens]
    from tokenizers import decoders

    dec = decoders.ByteLevel()
    out = []
    for row, p, end in zip(split.tokens, split.target_pos, split.answer_end):
        inp = dec.decode([pieces[int(i)] for i in row[1 : p + 1]])
        inp = inp[1:] if inp.startswith(" ") else inp  # the prefix space the pre-tokenizer adds
        ans = dec.decode([pieces[int(i)] for i in row[p + 1 : end]])
        out.append((inp, inp + ans + EOS))
    return out


def tokenizer_of(dataset: TaskDataset) -> Tokenizer:
    """The dataset's tokenizer (it travels in its :class:`TextKB`)."""
    return dataset.kb.tokenizer()  # type: ignore[union-attr]
