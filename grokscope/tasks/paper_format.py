"""The paper's released file format, both ways.

A dataset directory holds ``train.json``, ``valid.json``, ``test.json`` (JSON lists of
``{"input_text", "target_text"}`` where ``target_text`` repeats the input and appends
the answer and ``</a>``; ``test.json`` items carry a ``type``, one of the probe names;
``valid.json`` is the OOD test set) and ``vocab.json`` (the token list).

:func:`load_paper_format` reads such a directory (as released by the paper's authors)
back into a :class:`~grokscope.tasks.dataset.TaskDataset`, rebuilding the vocabulary and
the knowledge base from the facts and checking that every fact is consistent.

Example:
    >>> import tempfile
    >>> from grokscope.tasks import composition
    >>> ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0)
    >>> d = tempfile.mkdtemp()
    >>> save_paper_format(ds, d)
    >>> load_paper_format(d).content_hash() == ds.content_hash()
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from grokscope.tasks.dataset import (
    PROBE_SPLITS,
    ROLES_COMPARISON_ATOMIC,
    ROLES_COMPARISON_INFERRED,
    ROLES_COMPOSITION_ATOMIC,
    ROLES_COMPOSITION_INFERRED,
    ComparisonKB,
    CompositionKB,
    Split,
    TaskDataset,
    comparison_label,
    concat_splits,
    make_split,
)
from grokscope.tasks.vocab import END, Vocab, split_tokens

PAPER_FILES: tuple[str, ...] = ("train.json", "valid.json", "test.json", "vocab.json")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def save_paper_format(ds: TaskDataset, directory: str | os.PathLike[str]) -> None:
    """Write ``train.json``, ``valid.json``, ``test.json`` and ``vocab.json`` (paper format).

    Each file is written to a temporary name and renamed, so a crash leaves either the
    old file or the new one.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def items(split: Split, kind: str | None = None) -> list[dict[str, str]]:
        out = []
        for inp, tgt in split.texts(ds.vocab):
            item = {"input_text": inp, "target_text": tgt}
            if kind is not None:
                item["type"] = kind
            out.append(item)
        return out

    _write_json(d / "train.json", items(ds.splits["train"]))
    _write_json(d / "valid.json", items(ds.splits["test_inferred_ood"]))
    _write_json(d / "test.json", [x for name in PROBE_SPLITS for x in items(ds.splits[name], name)])
    _write_json(d / "vocab.json", list(ds.vocab.tokens))


def _read_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a paper-format directory needs {', '.join(PAPER_FILES)}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-download or re-generate the dataset") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _parse_items(items: list[Any], vocab: Vocab, where: str) -> tuple[list[list[int]], list[int]]:
    inputs, answers = [], []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "input_text" not in item or "target_text" not in item:
            raise ValueError(f"{where}[{n}]: expected an object with input_text and target_text")
        inp, tgt = item["input_text"], item["target_text"]
        if not tgt.startswith(inp):
            raise ValueError(f"{where}[{n}]: target_text {tgt!r} does not repeat input_text {inp!r}")
        rest = split_tokens(tgt[len(inp) :])
        if len(rest) != 2 or rest[1] != END:
            raise ValueError(f"{where}[{n}]: expected one answer token then {END}, got {rest}")
        try:
            inputs.append(vocab.encode(inp))
            answers.append(vocab[rest[0]])
        except KeyError as e:
            raise ValueError(f"{where}[{n}]: {e.args[0]}") from None
    return inputs, answers


def load_paper_format(directory: str | os.PathLike[str]) -> TaskDataset:
    """Read a paper-format dataset directory into a :class:`TaskDataset`.

    The task is recognised from the vocabulary (relations: composition; attributes:
    comparison, or complex reasoning when OOD atomic facts are absent from train.json).
    The knowledge base is rebuilt from every atomic fact in the files; OOD marks come
    from the ``ood_atomic`` test items.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: malformed JSON, unknown tokens, or inconsistent facts (two tails
            for one (h, r), an inferred fact that disagrees with its hops, a label that
            disagrees with the values).
    """
    d = Path(directory)
    vocab_list = _read_list(d / "vocab.json")
    try:
        vocab = Vocab(tuple(vocab_list))
    except ValueError as e:
        raise ValueError(f"{d / 'vocab.json'}: {e}") from None
    train_items = _read_list(d / "train.json")
    test_items = _read_list(d / "test.json")
    by_type: dict[str, list[Any]] = {name: [] for name in PROBE_SPLITS}
    for n, item in enumerate(test_items):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in by_type:
            raise ValueError(f"{d / 'test.json'}[{n}]: type {kind!r} is not one of {', '.join(PROBE_SPLITS)}")
        by_type[kind].append(item)
    if not (d / "valid.json").is_file():
        raise FileNotFoundError(f"{d / 'valid.json'}: missing")

    parsed = {"train": _parse_items(train_items, vocab, str(d / "train.json"))}
    for name, items in by_type.items():
        parsed[name] = _parse_items(items, vocab, f"{d / 'test.json'} ({name})")

    if len(vocab.class_ids("relation")):
        return _load_composition(vocab, parsed, d)
    if len(vocab.class_ids("attribute")):
        return _load_comparison(vocab, parsed, d)
    raise ValueError(f"{d / 'vocab.json'}: neither relation nor attribute tokens; cannot tell the task")


def _group(inputs: list[list[int]], answers: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [i for i, x in enumerate(inputs) if len(x) == length]
    if not rows:
        return np.zeros((0, length), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.array([inputs[i] for i in rows], dtype=np.int64), np.array([answers[i] for i in rows], dtype=np.int64)


def _load_composition(vocab: Vocab, parsed: dict[str, Any], d: Path) -> TaskDataset:
    ent, rel = vocab.entity_ids, vocab.relation_ids
    ent_index = np.full(len(vocab), -1)
    ent_index[ent] = np.arange(len(ent))
    rel_index = np.full(len(vocab), -1)
    rel_index[rel] = np.arange(len(rel))
    tail = np.full((len(ent), len(rel)), -1, dtype=np.int64)
    ood = np.zeros_like(tail, dtype=bool)

    for name, (inputs, answers) in parsed.items():
        bad = [i for i, x in enumerate(inputs) if len(x) not in (2, 3)]
        if bad:
            raise ValueError(f"{d}: {name} example {bad[0]} has {len(inputs[bad[0]])} input tokens; composition uses 2 or 3")
        x, y = _group(inputs, answers, 2)
        h, r, t = ent_index[x[:, 0]], rel_index[x[:, 1]], ent_index[y]
        if ((h < 0) | (r < 0) | (t < 0)).any():
            raise ValueError(f"{d}: {name} holds an atomic fact that is not <e><r> -> <e>")
        prev = tail[h, r]
        clash = (prev >= 0) & (prev != t)
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise ValueError(f"{d}: inconsistent atomic facts for {vocab.decode(x[i])}: two different tails")
        tail[h, r] = t
        if name == "ood_atomic":
            ood[h, r] = True
    kb = CompositionKB(tail=tail, ood=ood)

    def split(name: str) -> Split:
        inputs, answers = parsed[name]
        parts = []
        x, y = _group(inputs, answers, 2)
        if len(x):
            none = np.full(len(x), -1)
            parts.append(make_split(
                name, x, y, vocab, atomic=True,
                meta={"h": x[:, 0], "r1": x[:, 1], "r2": none, "bridge": none, "t": y},
                roles=ROLES_COMPOSITION_ATOMIC,
            ))
        x, y = _group(inputs, answers, 3)
        if len(x):
            h, r1, r2 = ent_index[x[:, 0]], rel_index[x[:, 1]], rel_index[x[:, 2]]
            if ((h < 0) | (r1 < 0) | (r2 < 0)).any():
                raise ValueError(f"{d}: {name} holds an inferred fact that is not <e><r><r>")
            b = tail[h, r1]
            t2 = np.where(b >= 0, tail[np.maximum(b, 0), r2], -1)
            wrong = (b < 0) | (t2 < 0) | (ent[np.maximum(t2, 0)] != y)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise ValueError(
                    f"{d}: {name} fact {vocab.decode(x[i])} -> {vocab.tokens[y[i]]} does not follow from the atomic facts"
                )
            parts.append(make_split(
                name, x, y, vocab, atomic=False,
                meta={"h": x[:, 0], "r1": x[:, 1], "r2": x[:, 2], "bridge": ent[b], "t": y},
                roles=ROLES_COMPOSITION_INFERRED,
            ))
        return _merge(name, parts, vocab)

    splits = {name: split(name) for name in parsed}
    return _finish("composition", vocab, kb, splits)


def _load_comparison(vocab: Vocab, parsed: dict[str, Any], d: Path) -> TaskDataset:
    ent, att, val, lab = vocab.entity_ids, vocab.attribute_ids, vocab.value_ids, vocab.label_ids
    ent_index = np.full(len(vocab), -1)
    ent_index[ent] = np.arange(len(ent))
    att_index = np.full(len(vocab), -1)
    att_index[att] = np.arange(len(att))
    val_index = np.full(len(vocab), -1)
    val_index[val] = np.arange(len(val))
    label_index = np.full(len(vocab), -1)
    label_index[lab.reshape(-1)] = np.tile(np.arange(3), len(att))
    values = np.full((len(ent), len(att)), -1, dtype=np.int64)
    ood = np.zeros_like(values, dtype=bool)
    trained = np.zeros_like(values, dtype=bool)

    for name, (inputs, answers) in parsed.items():
        bad = [i for i, x in enumerate(inputs) if len(x) not in (2, 5)]
        if bad:
            raise ValueError(f"{d}: {name} example {bad[0]} has {len(inputs[bad[0]])} input tokens; comparison uses 2 or 5")
        x, y = _group(inputs, answers, 2)
        e, a, v = ent_index[x[:, 0]], att_index[x[:, 1]], val_index[y]
        if ((e < 0) | (a < 0) | (v < 0)).any():
            raise ValueError(f"{d}: {name} holds an atomic fact that is not <e><attr> -> <v>")
        prev = values[e, a]
        clash = (prev >= 0) & (prev != v)
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise ValueError(f"{d}: inconsistent atomic facts for {vocab.decode(x[i])}: two different values")
        values[e, a] = v
        if name == "ood_atomic":
            ood[e, a] = True
        if name == "train":
            trained[e, a] = True
    kb = ComparisonKB(values=values, ood=ood, n_values=len(val))

    def split(name: str) -> Split:
        inputs, answers = parsed[name]
        parts = []
        x, y = _group(inputs, answers, 2)
        if len(x):
            none = np.full(len(x), -1)
            parts.append(make_split(
                name, x, y, vocab, atomic=True,
                meta={"attr": x[:, 1], "e1": x[:, 0], "e2": none, "v1": y, "v2": none, "label": none},
                roles=ROLES_COMPARISON_ATOMIC,
            ))
        x, y = _group(inputs, answers, 5)
        if len(x):
            a, e1, e2 = att_index[x[:, 0]], ent_index[x[:, 2]], ent_index[x[:, 4]]
            if ((a < 0) | (e1 < 0) | (e2 < 0)).any() or (x[:, 1] != vocab["<q>"]).any() or (x[:, 3] != vocab["<mask>"]).any():
                raise ValueError(f"{d}: {name} holds an inferred fact that is not <attr><q><e><mask><e>")
            v1, v2 = values[e1, a], values[e2, a]
            if ((v1 < 0) | (v2 < 0)).any():
                i = int(np.flatnonzero((v1 < 0) | (v2 < 0))[0])
                raise ValueError(f"{d}: {name} compares {vocab.decode(x[i])} but an entity's value is in no atomic fact")
            label = comparison_label(v1, v2)
            wrong = (lab[a, label] != y)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise ValueError(f"{d}: {name} label of {vocab.decode(x[i])} disagrees with the values ({v1[i]} vs {v2[i]})")
            parts.append(make_split(
                name, x, y, vocab, atomic=False,
                meta={"attr": x[:, 0], "e1": x[:, 2], "e2": x[:, 4], "v1": val[v1], "v2": val[v2], "label": label},
                roles=ROLES_COMPARISON_INFERRED,
            ))
        return _merge(name, parts, vocab)

    splits = {name: split(name) for name in parsed}
    task = "complex" if ood.any() and not (trained & ood).any() else "comparison"
    return _finish(task, vocab, kb, splits)


def _merge(name: str, parts: list[Split], vocab: Vocab) -> Split:
    if not parts:
        return Split(name, np.zeros((0, 1), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    if len(parts) == 1:
        return parts[0]
    return concat_splits(name, parts, pad_id=vocab[END])


def _finish(task: str, vocab: Vocab, kb: CompositionKB | ComparisonKB, splits: dict[str, Split]) -> TaskDataset:
    train = splits["train"]
    counts = {
        "n_atomic": kb.n_facts,
        "n_ood_atomic": int(kb.ood.sum()),
        "n_train": len(train),
        "n_train_atomic": int(train.atomic.sum()),
        "n_train_inferred": int((~train.atomic).sum()),
    }
    n_id_trained_atomic = int(train.atomic.sum()) - (0 if task == "complex" else int(kb.ood.sum()))
    if n_id_trained_atomic > 0:
        counts["phi"] = counts["n_train_inferred"] / n_id_trained_atomic
    return TaskDataset(task=task, vocab=vocab, kb=kb, splits=splits, counts=counts, config=None)

