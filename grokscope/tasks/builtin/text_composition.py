"""Two-hop composition rendered as English text (issue #24): one file, one registration.

The knowledge base is the composition task's (:func:`~grokscope.tasks.builtin.composition.atomic_facts`:
``out_degree`` distinct relations per entity, each to a uniform random tail,
``ood_fraction`` of the atomic facts OOD). Here it is written in English:

- an entity is a made-up name of 1, 2 or 3 words (``Kalo``, ``Vemi Tora``), each word drawn
  from ``n_name_words`` generated words; a relation is an English noun (``mentor``);
- an atomic fact ``(h, r) -> t`` is a sentence ending where the answer starts, in one of
  :data:`ATOMIC_TEMPLATES` (``"Kalo's mentor is"`` -> ``" Vemi Tora"``); each relation has
  its own ``n_templates`` training templates (a per-relation draw from the pool) and
  ``held_out_templates`` more it is never trained in;
- a two-hop fact ``(h, r1, r2) -> t`` is a question or statement from
  :data:`QUERY_TEMPLATES` (``"Kalo's boss's mentor is"``, ``"Who is the mentor of the boss
  of Kalo?"``); the first ``n_templates`` of that list are trained, the next
  ``held_out_templates`` are the new-template split.

Every training atomic fact is written once in each of its relation's training templates;
every training two-hop fact once, in a training query template drawn uniformly.

**Tokens.** A byte-level BPE tokenizer (``tokenizers``, ``add_prefix_space``) is trained on
the dataset's own text with a vocabulary large enough that every word becomes one token,
so a name of k words is k tokens; ``<bos>`` and ``<eos>`` are its special tokens (ids 0
and 1) and its post-processor prepends ``<bos>``. It is saved as ``tokenizer.json`` in the
run's data directory. The model's input is exactly ``Tokenizer.encode(input_text).ids``;
``target_text`` is ``input_text``, the answer (`` Vemi Tora``) and ``<eos>``, and
``Tokenizer.encode(target_text).ids`` is the model's input followed by the answer tokens
and ``<eos>`` (checked on load). Rows are right-padded with ``<eos>``.

**Vocabulary.** grokscope's :class:`~grokscope.tasks.vocab.Vocab` (the run's ``vocab.json``)
lists the tokenizer's vocabulary in id order, so a grokscope token id IS the tokenizer's
id: ``<bos>`` and ``<eos>`` as they are, every other BPE piece ``p`` as ``<w:p>`` (the
``word`` token class, e.g. ``<w:Ġmentor>``).

**Splits.** ``train``; probes ``id_atomic``, ``ood_atomic`` (atomic facts in a training
template), ``train_inferred`` (trained two-hop facts, as trained), ``test_inferred_iid``
(held-out two-hop facts over ID atomic facts, in training templates), ``test_inferred_ood``
(chains of two OOD facts), ``test_new_template`` (the ``test_inferred_iid`` facts in
held-out query templates). The trainer scores every probe by exact match of the whole
answer name and its ``<eos>`` under teacher forcing, which is exactly when greedy decoding
writes the name and stops.

**Analysis: alignment by role position.** Names have different token counts, so the probe
splits have no common layout. Analysis (lens, tracing, discovery) runs on ``analysis``: the
training two-hop facts written in query template 0 (``"{h}'s {r1}'s {r2} is"``, always a
training template) whose head name is one token, so every row is
``<bos> h 's r1 's r2 is`` with roles ``h``=1, ``h_s``=2, ``r1``=3, ``r1_s``=4, ``r2``=5,
``last``=6 (``h_s``, ``r1_s``: the ``'s`` after the head and after the first relation). A
counterfactual swaps a whole entity name for a name of the same token count (the head:
another one-token name) or a relation for another relation (one token each), so clean and
corrupt inputs have equal length and the roles stay put. Answers of counterfactuals and lens
targets are FIRST tokens of names (``bridge@r1_s``: the bridge name's first token at the
``'s`` that ends the first relation phrase, the circuit hypothesis's first stage;
``bridge@r1`` at the relation word, ``bridge@h_s`` before r1 is read, a control;
``t@last``: the answer's first token at the last position); a
counterfactual is valid only when the two answers' first tokens differ. ``analysis`` is
derived from ``train`` (not a probe: not evaluated while training, not in the content hash).

Example:
    >>> ds = generate_text_composition(TextCompositionConfig(n_entities=30, n_relations=4, out_degree=4, phi=2.0))
    >>> inp, tgt = text_items(ds, ds.splits["train_inferred"])[0]
    >>> tgt.startswith(inp) and tgt.endswith("<eos>")
    True
    >>> ds.splits["analysis"].roles
    {'h': 1, 'h_s': 2, 'r1': 3, 'r1_s': 4, 'r2': 5, 'last': 6}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from grokscope.tasks.base import (
    CircuitHypothesis,
    CounterfactualDraw,
    LensTarget,
    Stage,
    Task,
    check,
    check_fraction,
    check_seed_probe,
    pick_per_row,
    register_task,
)
from grokscope.tasks.builtin.text_world import (
    _CONSONANTS,
    _VOWELS,
    ATOMIC_TEMPLATES,
    EOS,
    META_FILE,
    QUERY_TEMPLATES,
    RELATION_WORDS,
    TOKENIZER_FILE,
    TextKB,
    encode_rows,
    entity_names,
    first_tokens,
    relation_templates,
    render_atomic,
    render_query,
    text_items,
    train_tokenizer,
    vocab_of,
)
from grokscope.tasks.dataset import Split, TaskDataset
from grokscope.tasks.vocab import Vocab

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ANALYSIS_ROLES: dict[str, int] = {"h": 1, "h_s": 2, "r1": 3, "r1_s": 4, "r2": 5, "last": 6}
"""``<bos> h 's r1 's r2 is`` with a one-token head name; ``h_s`` and ``r1_s`` are the
``'s`` after the head and after the first relation (the end of the first relation phrase)."""

@dataclass(frozen=True)
class TextCompositionConfig:
    """Two-hop composition written in English (issue #24).

    Attributes:
        n_entities: entities (each a distinct made-up name).
        n_relations: relations (<= 24, each an English noun of :data:`RELATION_WORDS`).
        out_degree: distinct relations per head entity.
        ood_fraction: share of atomic facts held out as OOD (still trained as atomic facts).
        phi: two-hop training facts per ID atomic fact.
        test_fraction: chance an ID-ID two-hop fact is held out as test ID.
        n_templates: training templates per relation (atomic) and trained query templates.
        held_out_templates: further templates never trained (the new-template split).
        name_lengths: the word (= token) counts names are drawn among, uniformly.
        n_name_words: generated words names are made of.
        probe_size: cap on each probe split.
        seed: data seed (KB, names, templates, tokenizer corpus order).
    """

    n_entities: int = 50
    n_relations: int = 20
    out_degree: int = 20
    ood_fraction: float = 0.05
    phi: float = 7.2
    test_fraction: float = 0.04
    n_templates: int = 3
    held_out_templates: int = 1
    name_lengths: tuple[int, ...] = (1, 2, 3)
    n_name_words: int = 120
    probe_size: int = 1000
    seed: int = 0
    task: Literal["text-composition"] = "text-composition"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name_lengths", tuple(int(x) for x in self.name_lengths))
        check(self.task == "text-composition", f"task must be 'text-composition', got {self.task!r}")
        check(self.n_entities >= 2, f"n_entities must be >= 2, got {self.n_entities}")
        check(1 <= self.n_relations <= len(RELATION_WORDS),
              f"n_relations must be in [1, {len(RELATION_WORDS)}], got {self.n_relations}")
        check(1 <= self.out_degree <= self.n_relations,
              f"out_degree must be in [1, n_relations={self.n_relations}], got {self.out_degree}")
        check_fraction("ood_fraction", self.ood_fraction)
        check_fraction("test_fraction", self.test_fraction, open_low=False)
        check(self.phi >= 0 and math.isfinite(self.phi), f"phi must be >= 0, got {self.phi!r}")
        pool = min(len(ATOMIC_TEMPLATES), len(QUERY_TEMPLATES))
        check(self.n_templates >= 1 and self.held_out_templates >= 0 and self.n_templates + self.held_out_templates <= pool,
              f"n_templates >= 1 and held_out_templates >= 0 with a sum <= {pool}, got "
              f"{self.n_templates} + {self.held_out_templates}")
        check(len(self.name_lengths) >= 1 and all(k in (1, 2, 3) for k in self.name_lengths) and 1 in self.name_lengths,
              f"name_lengths must be drawn from 1, 2, 3 and include 1, got {self.name_lengths}")
        check(self.n_name_words >= 2, f"n_name_words must be >= 2, got {self.n_name_words}")
        check(self.n_name_words <= len(_CONSONANTS) ** 2 * len(_VOWELS) ** 2,
              f"n_name_words must be <= {len(_CONSONANTS) ** 2 * len(_VOWELS) ** 2}, got {self.n_name_words}")
        check_seed_probe(self)

    @property
    def n_atomic(self) -> int:
        return self.n_entities * self.out_degree


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Rows:
    """One split as text rows plus per-row facts (entity / relation indices, -1 n/a)."""

    inputs: list[str]
    answers: list[str]
    atomic: np.ndarray
    facts: dict[str, np.ndarray]  # h, r1, r2, bridge, t, template


def _concat_rows(parts: list[_Rows]) -> _Rows:
    return _Rows([x for p in parts for x in p.inputs], [x for p in parts for x in p.answers],
                 np.concatenate([p.atomic for p in parts]),
                 {k: np.concatenate([p.facts[k] for p in parts]) for k in parts[0].facts})


def generate_text_composition(cfg: TextCompositionConfig) -> TaskDataset:
    """Generate the text composition task from its frozen config (same config, same bytes)."""
    from grokscope.tasks.builtin.composition import atomic_facts

    rng = np.random.default_rng([cfg.seed, 0x7E47])
    rels, tails, ood_k, kb = atomic_facts(cfg, rng)
    names, lengths = entity_names(cfg, rng)
    rel_words = list(RELATION_WORDS[: cfg.n_relations])
    rtemp = relation_templates(cfg, rng)
    n_e, k = cfg.n_entities, cfg.out_degree
    n_atomic, n_ood = n_e * k, int(ood_k.sum())

    # Two-hop chains (h, slot1, slot2) in C order, as composition.
    h, s1, s2 = (g.reshape(-1) for g in np.meshgrid(np.arange(n_e), np.arange(k), np.arange(k), indexing="ij"))
    r1, b = rels[h, s1], tails[h, s1]
    r2, t = rels[b, s2], tails[b, s2]
    o1, o2 = ood_k[h, s1], ood_k[b, s2]
    all_id, all_ood = ~o1 & ~o2, o1 & o2
    held = all_id & (rng.random(len(h)) < cfg.test_fraction)
    candidates = np.flatnonzero(all_id & ~held)
    test_iid, test_ood = np.flatnonzero(held), np.flatnonzero(all_ood)
    n_id_atomic = n_atomic - n_ood
    n_train_inf = int(round(cfg.phi * n_id_atomic))
    if n_train_inf > len(candidates):
        raise ValueError(f"phi={cfg.phi} asks for {n_train_inf} training two-hop facts but only {len(candidates)} "
                         f"exist; the maximum phi for this knowledge base is {len(candidates) / n_id_atomic:.4f}")
    train_inf = np.sort(rng.choice(candidates, size=n_train_inf, replace=False))
    nt, nh = cfg.n_templates, cfg.held_out_templates

    def inferred(idx: np.ndarray, templates: np.ndarray) -> _Rows:
        inputs = [render_query(int(q), names[h[i]], rel_words[r1[i]], rel_words[r2[i]]) for i, q in zip(idx, templates)]
        facts = {"h": h[idx], "r1": r1[idx], "r2": r2[idx], "bridge": b[idx], "t": t[idx], "template": templates}
        return _Rows(inputs, [" " + names[t[i]] for i in idx], np.zeros(len(idx), bool),
                     {key: np.asarray(v, dtype=np.int64) for key, v in facts.items()})

    ah, ar, at, aood = kb.facts()

    def atomic(idx: np.ndarray, which: np.ndarray) -> _Rows:
        """Atomic facts ``idx``, each in its relation's template number ``which`` (per row)."""
        templates = rtemp[ar[idx], which]
        inputs = [render_atomic(int(q), names[ah[i]], rel_words[ar[i]]) for i, q in zip(idx, templates)]
        none = np.full(len(idx), -1, dtype=np.int64)
        facts = {"h": ah[idx], "r1": ar[idx], "r2": none, "bridge": none, "t": at[idx], "template": templates}
        return _Rows(inputs, [" " + names[at[i]] for i in idx], np.ones(len(idx), bool),
                     {key: np.asarray(v, dtype=np.int64) for key, v in facts.items()})

    def probe(idx: np.ndarray) -> np.ndarray:
        return idx if len(idx) <= cfg.probe_size else np.sort(rng.choice(idx, size=cfg.probe_size, replace=False))

    all_atomic = np.arange(len(ah))
    train_q = rng.integers(0, nt, size=len(train_inf))
    train_rows = _concat_rows([atomic(np.repeat(all_atomic, nt), np.tile(np.arange(nt), len(all_atomic))),
                               inferred(train_inf, train_q)])
    train_probe = probe(np.arange(len(train_inf)))
    iid = probe(test_iid)
    rows = {
        "train": train_rows,
        "id_atomic": (lambda i: atomic(i, rng.integers(0, nt, size=len(i))))(probe(np.flatnonzero(~aood))),
        "ood_atomic": (lambda i: atomic(i, rng.integers(0, nt, size=len(i))))(probe(np.flatnonzero(aood))),
        "train_inferred": inferred(train_inf[train_probe], train_q[train_probe]),
        "test_inferred_iid": inferred(iid, rng.integers(0, nt, size=len(iid))),
        "test_inferred_ood": (lambda i: inferred(i, rng.integers(0, nt, size=len(i))))(probe(test_ood)),
        "test_new_template": inferred(iid if nh else iid[:0], nt + rng.integers(0, max(nh, 1), size=len(iid) if nh else 0)),
    }
    corpus = [x + y for r in rows.values() for x, y in zip(r.inputs, r.answers)]
    tok = train_tokenizer(corpus)
    for w in [*rel_words, *{p for n in names for p in n.split()}]:
        ids = tok.encode(" " + w, add_special_tokens=False).ids
        if len(ids) != 1:  # pragma: no cover - the trainer merges every word
            raise RuntimeError(f"the tokenizer splits {w!r} into {len(ids)} tokens")
    meta_doc = {
        "config": dataclasses.asdict(cfg), "names": names, "relations": rel_words,
        "relation_templates": rtemp.tolist(),
        "kb": {"tail": kb.tail.tolist(), "ood": kb.ood.astype(int).tolist()},
        "splits": {name: {key: v.tolist() for key, v in r.facts.items()} for name, r in rows.items()},
    }
    counts = {
        "n_atomic": n_atomic, "n_id_atomic": n_id_atomic, "n_ood_atomic": n_ood,
        "n_inferred_candidates": int(len(h)), "n_test_inferred_iid": int(len(test_iid)),
        "n_test_inferred_ood": int(len(test_ood)), "n_train_candidates": int(len(candidates)),
        "n_train_inferred": n_train_inf, "n_train": len(train_rows.inputs), "phi": n_train_inf / n_id_atomic,
        "max_phi": len(candidates) / n_id_atomic, "d_vocab": tok.get_vocab_size(),
    }
    items = {name: (r.inputs, [x + y + EOS for x, y in zip(r.inputs, r.answers)]) for name, r in rows.items()}
    return build_dataset(tok, items, meta_doc, counts)


# --------------------------------------------------------------------------- dataset from text


def build_dataset(tok: Tokenizer, items: dict[str, tuple[list[str], list[str]]], meta_doc: dict[str, Any],
                  counts: dict[str, Any]) -> TaskDataset:
    """The dataset from its text rows, tokenizer and facts (generation and loading share it)."""
    vocab = vocab_of(tok)
    names = meta_doc["names"]
    first = first_tokens(tok, names)
    rel_tok = first_tokens(tok, meta_doc["relations"])
    splits = {}
    for name, (inputs, targets) in items.items():
        tokens, pos = encode_rows(tok, inputs, targets, name)
        facts = {key: np.asarray(v, dtype=np.int64) for key, v in meta_doc["splits"][name].items()}
        if any(len(v) != len(inputs) for v in facts.values()):
            raise ValueError(f"{name}: {META_FILE} has facts for another number of rows than the text")
        splits[name] = Split(name=name, tokens=tokens, target_pos=pos, atomic=facts["r2"] < 0,
                             meta=_token_meta(facts, first, rel_tok), roles={})
    kb = TextKB(tail=np.asarray(meta_doc["kb"]["tail"], dtype=np.int64), ood=np.asarray(meta_doc["kb"]["ood"], dtype=bool),
                names=tuple(names), relations=tuple(meta_doc["relations"]),
                relation_templates=tuple(tuple(int(x) for x in r) for r in meta_doc["relation_templates"]),
                tokenizer_json=tok.to_str())
    splits["analysis"] = analysis_split(splits["train"], kb.name_lengths)
    config = dict(meta_doc["config"])
    config["name_lengths"] = list(config["name_lengths"])
    return TaskDataset(task="text-composition", vocab=vocab, kb=kb, splits=splits, counts=counts, config=config)


def _token_meta(facts: dict[str, np.ndarray], first: np.ndarray, rel_tok: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row meta: ``h``, ``bridge``, ``t`` the first token of each name, ``r1``, ``r2`` the
    relation's token (-1 n/a); ``*_e`` the entity / relation indices; ``template``."""
    def tok_of(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.where(idx >= 0, table[np.maximum(idx, 0)], -1)

    out = {key: tok_of(first, facts[key]) for key in ("h", "bridge", "t")}
    out |= {key: tok_of(rel_tok, facts[key]) for key in ("r1", "r2")}
    out |= {f"{key}_e": facts[key] for key in ("h", "r1", "r2", "bridge", "t")}
    out["template"] = facts["template"]
    return out


def analysis_split(train: Split, name_lengths: np.ndarray) -> Split:
    """The aligned analysis split: training two-hop rows in query template 0 with a one-token
    head name (``<bos> h 's r1 's r2 is``), roles :data:`ANALYSIS_ROLES`."""
    m = train.meta
    keep = np.flatnonzero(~train.atomic & (m["template"] == 0) & (name_lengths[np.maximum(m["h_e"], 0)] == 1))
    sub = train.subset(keep, name="analysis")
    if len(sub) and not (sub.target_pos == ANALYSIS_ROLES["last"]).all():  # pragma: no cover - layout guard
        raise RuntimeError("analysis rows do not share the layout <bos> h 's r1 's r2 is")
    return dataclasses.replace(sub, roles=dict(ANALYSIS_ROLES))


# --------------------------------------------------------------------------- the task


class TextCompositionTask(Task):
    """Two-hop composition in English: ``"Kalo's boss's mentor is"`` -> ``" Vemi Tora<eos>"``."""

    name = "text-composition"
    config_cls = TextCompositionConfig
    probe_splits = ("id_atomic", "ood_atomic", "train_inferred", "test_inferred_iid", "test_inferred_ood",
                    "test_new_template")
    inferred_roles = ("h", "h_s", "r1", "r1_s", "r2", "last")
    perturbations = ("h", "r1", "r2")
    default_split = "analysis"
    multi_token_answers = True
    text_files = True
    """The split files are plain English (read back with the run's ``tokenizer.json``)."""
    cli_params = {"n_entities": "--entities", "n_relations": "--relations", "out_degree": "--out-degree",
                  "ood_fraction": "--ood-fraction", "phi": "--phi", "n_templates": "--templates"}
    hypothesis = CircuitHypothesis(
        kind="staged",
        inputs=("h", "r1", "r2"),
        stages=(
            Stage("bridge@r1_s", "r1_s", "bridge", sources=(("h", "h"), ("r1", "r1")), perturbation="h"),
            Stage("r2@r2", "r2", "r2", sources=(("r2", "r2"),), perturbation="r2",
                  at="bridge@r1_s", search_after="bridge@r1_s"),
        ),
        output_target="t@last", output_role="last", output_content="t",
        share=(("h", "r1"),),
    )

    def generate(self, cfg: TextCompositionConfig) -> TaskDataset:
        return generate_text_composition(cfg)

    # -- files ------------------------------------------------------------------
    def text_items(self, dataset: TaskDataset, split: Split) -> list[tuple[str, str]]:
        """The (input_text, target_text) pairs written to the split files."""
        return text_items(dataset, split)

    def save_files(self, dataset: TaskDataset, directory: Path) -> None:
        """``tokenizer.json`` and ``text_meta.json`` (names, relations, KB, per-row facts)."""
        d = Path(directory)
        kb: TextKB = dataset.kb  # type: ignore[assignment]
        (d / TOKENIZER_FILE).write_text(kb.tokenizer_json)
        splits = {name: {key: dataset.splits[name].meta[f"{key}_e"].tolist() for key in ("h", "r1", "r2", "bridge", "t")}
                  | {"template": dataset.splits[name].meta["template"].tolist()} for name in dataset.split_names}
        doc = {"config": dataset.config, "names": list(kb.names), "relations": list(kb.relations),
               "relation_templates": [list(r) for r in kb.relation_templates],
               "kb": {"tail": kb.tail.tolist(), "ood": kb.ood.astype(int).tolist()}, "splits": splits,
               "counts": dataset.counts}
        tmp = d / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, d / META_FILE)

    def load_text(self, vocab: Vocab, items: dict[str, list[dict[str, Any]]], directory: Path) -> TaskDataset:
        """The dataset from the split files, ``tokenizer.json`` and ``text_meta.json``."""
        from tokenizers import Tokenizer

        d = Path(directory)
        for f in (TOKENIZER_FILE, META_FILE):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f}: missing; a text-composition data directory needs it")
        tok = Tokenizer.from_file(str(d / TOKENIZER_FILE))
        if vocab_of(tok).tokens != vocab.tokens:
            raise ValueError(f"{d / 'vocab.json'} does not list the pieces of {d / TOKENIZER_FILE} in id order")
        doc = json.loads((d / META_FILE).read_text())
        pairs = {name: ([x["input_text"] for x in rows], [x["target_text"] for x in rows]) for name, rows in items.items()}
        return build_dataset(tok, pairs, doc, doc.get("counts", {}))

    def describe(self, dataset: TaskDataset) -> TextCompositionConfig:
        return TextCompositionConfig(**(dataset.config or {}))

    # -- analysis ---------------------------------------------------------------
    def counterfactuals(
        self, dataset: TaskDataset, split: Split, rows: np.ndarray, perturbation: str,
        rng: np.random.Generator, *, id_only: bool = True,
    ) -> CounterfactualDraw:
        """A whole name or relation swapped, aligned by role position.

        ``h`` -> another entity whose name has as many tokens (one, on ``analysis``);
        ``r1`` / ``r2`` -> another relation (one token each). Valid: the new chain's hops
        are facts (ID facts with ``id_only``) and its answer's first token differs from the
        clean answer's. ``answer`` / ``cf_answer`` are the answers' first tokens; ``cf_meta``
        holds ``cf_bridge`` and ``cf_t`` (first tokens).
        """
        if perturbation not in self.perturbations:
            raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(self.perturbations)}")
        self.check_inferred(split)
        kb: TextKB = dataset.kb  # type: ignore[assignment]
        tok = kb.tokenizer()
        first = first_tokens(tok, list(kb.names))
        rel_tok = first_tokens(tok, list(kb.relations))
        lengths = kb.name_lengths
        tail, ood = kb.tail, kb.ood
        m = {key: split.meta[key][rows] for key in ("h_e", "r1_e", "r2_e", "t_e")}
        n, (n_e, n_r) = len(rows), tail.shape
        h = np.broadcast_to(m["h_e"][:, None], (n, n_e if perturbation == "h" else n_r))
        r1 = np.broadcast_to(m["r1_e"][:, None], h.shape)
        r2 = np.broadcast_to(m["r2_e"][:, None], h.shape)
        cand = np.broadcast_to(np.arange(h.shape[1])[None, :], h.shape)
        if perturbation == "h":
            same = (cand == h) | (lengths[cand] != lengths[h])
            h, new_ids, changed = cand, first, 0
        elif perturbation == "r1":
            same, r1, new_ids, changed = cand == r1, cand, rel_tok, 0
        else:
            same, r2, new_ids, changed = cand == r2, cand, rel_tok, 1
        bridge = tail[h, r1]
        ok = bridge >= 0
        if id_only and changed == 0:
            ok &= ~ood[h, r1]
        end = np.where(ok, tail[np.maximum(bridge, 0), r2], -1)
        ok &= end >= 0
        if id_only:
            ok &= ~ood[np.maximum(bridge, 0), r2]
        answer = first[m["t_e"]]
        valid = ok & ~same & (first[np.maximum(end, 0)] != answer[:, None])
        j = pick_per_row(rng, valid)
        keep = j >= 0
        jj, rr = np.maximum(j, 0), np.arange(n)
        cf_t, cf_b = first[np.maximum(end[rr, jj], 0)], first[np.maximum(bridge[rr, jj], 0)]
        return CounterfactualDraw(new_token=np.where(keep, new_ids[jj], -1), answer=answer, cf_answer=cf_t,
                                  cf_meta={"cf_t": cf_t[keep], "cf_bridge": cf_b[keep]})

    def lens_targets(self, split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
        """``bridge@r1_s`` (the bridge name's first token at the ``'s`` ending the first
        relation phrase), ``bridge@r1`` (at the relation word), ``bridge@h_s`` (at the ``'s``
        after the head, before r1 is read: a control, the bridge is not computable there),
        ``r2@r2`` (the second relation word at itself; never an answer), ``t@last`` (the
        answer's first token at the last input position) and ``r2@r2/rel`` (r2 among the
        relation words). ``within_class`` ranks names among names' first tokens."""
        self.check_inferred(split)
        names = split.meta["t"][split.meta["t"] >= 0]
        rels = np.unique(np.concatenate([split.meta["r1"], split.meta["r2"]]))
        first_tokens = np.unique(np.concatenate([names, split.meta["h"], split.meta["bridge"]]))
        ent = first_tokens if within_class else None
        rel = rels if within_class else None
        out = [
            LensTarget("bridge@r1", split.roles["r1"], split.meta["bridge"], ent),
            LensTarget("bridge@r1_s", split.roles["r1_s"], split.meta["bridge"], ent),
            LensTarget("bridge@h_s", split.roles["h_s"], split.meta["bridge"], ent),
            LensTarget("r2@r2", split.roles["r2"], split.meta["r2"], rel, never_answer=True),
            LensTarget("t@last", split.roles["last"], split.meta["t"], ent),
        ]
        if not within_class:
            out.append(LensTarget("r2@r2/rel", split.roles["r2"], split.meta["r2"], rels, never_answer=True))
        return out


register_task(TextCompositionTask())
