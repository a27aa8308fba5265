"""The paper's released file format, both ways.

A dataset directory holds ``train.json``, ``valid.json``, ``test.json`` (JSON lists of
``{"input_text", "target_text"}`` where ``target_text`` repeats the input and appends
the answer and ``</a>``; ``test.json`` items carry a ``type``, one of the probe names;
``valid.json`` is the OOD test set) and ``vocab.json`` (the token list). Each of the three
split files may instead be stored gzip-compressed as ``train.json.gz`` (and so on; the same
JSON, ``gzip -9`` shrinks a tree run's train.json 10x): :func:`compress_split_files` does
that to a directory, and every reader here takes either form.

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

import gzip
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
SPLIT_FILES: tuple[str, ...] = ("train.json", "valid.json", "test.json")
"""The files that may be stored gzip-compressed (``NAME.gz``)."""


def split_file(directory: str | os.PathLike[str], name: str) -> Path:
    """The path of split file ``name`` in ``directory``: ``name`` itself, or ``name.gz`` when
    only the compressed form is there (``name`` when neither is, for the error message).

    Raises:
        ValueError: both forms are there (which one is the data would be a guess).
    """
    plain = Path(directory) / name
    packed = plain.with_name(name + ".gz")
    if plain.is_file() and packed.is_file():
        raise ValueError(f"{plain} and {packed.name} are both there; keep one")
    return packed if packed.is_file() else plain


def compress_split_files(directory: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Replace train/valid/test.json in ``directory`` by ``.json.gz`` (gzip level 9, no
    timestamp, so equal data give equal bytes); returns ``{name: (bytes before, after)}``.

    The compressed file is written under a temporary name and renamed before the plain one
    is removed: a crash between the two leaves both forms, which readers refuse by name,
    and calling this again finishes the job.

    Example:
        >>> import tempfile
        >>> from grokscope.tasks import composition
        >>> ds = composition(n_entities=20, n_relations=5, out_degree=5, phi=2.0)
        >>> d = tempfile.mkdtemp()
        >>> save_paper_format(ds, d)
        >>> sizes = compress_split_files(d)
        >>> sorted(sizes), sizes["train.json"][1] < sizes["train.json"][0]
        (['test.json', 'train.json', 'valid.json'], True)
        >>> load_paper_format(d).content_hash() == ds.content_hash()
        True
    """
    d = Path(directory)
    out: dict[str, tuple[int, int]] = {}
    for name in SPLIT_FILES:
        plain, packed = d / name, d / (name + ".gz")
        if not plain.is_file():
            if packed.is_file():
                continue
            raise FileNotFoundError(f"{plain}: missing")
        raw = plain.read_bytes()
        tmp = packed.with_name(packed.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(gzip.compress(raw, compresslevel=9, mtime=0))
        os.replace(tmp, packed)
        plain.unlink()
        out[name] = (len(raw), packed.stat().st_size)
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
    path.with_name(path.name + ".gz").unlink(missing_ok=True)  # an older compressed form is stale now


def save_paper_format(ds: TaskDataset, directory: str | os.PathLike[str]) -> None:
    """Write ``train.json``, ``valid.json``, ``test.json`` and ``vocab.json`` (paper format).

    Each file is written to a temporary name and renamed, so a crash leaves either the
    old file or the new one.
    """
    from grokscope.tasks.base import get_task

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    spec = get_task(ds.task)

    def items(split: Split, kind: str | None = None) -> list[dict[str, str]]:
        out = []
        for inp, tgt in spec.text_items(ds, split):
            item = {"input_text": inp, "target_text": tgt}
            if kind is not None:
                item["type"] = kind
            out.append(item)
        return out

    _write_json(d / "train.json", items(ds.splits["train"]))
    ood = ds.splits.get("test_inferred_ood")  # the paper's valid.json; tasks without OOD facts write []
    _write_json(d / "valid.json", items(ood) if ood is not None else [])
    probe_splits = spec.probe_splits
    _write_json(d / "test.json", [x for name in probe_splits for x in items(ds.splits[name], name)])
    _write_json(d / "vocab.json", list(ds.vocab.tokens))
    spec.save_files(ds, d)


def _read_list(path: Path) -> list[Any]:
    if path.name in SPLIT_FILES:
        path = split_file(path.parent, path.name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a paper-format directory needs {', '.join(PAPER_FILES)}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt") as f:
                data = json.load(f)
        else:
            with open(path) as f:
                data = json.load(f)
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise ValueError(f"{path}: not a readable gzip file ({e}); re-download or re-generate the dataset") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-download or re-generate the dataset") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _parse_items(
    items: list[Any], vocab: Vocab, where: str, *, multi: bool = False
) -> tuple[list[list[int]], list[Any]]:
    """(inputs, answers) token ids; with ``multi`` (a task whose answers are several tokens)
    each answer is the list of its tokens before ``</a>``."""
    inputs, answers = [], []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "input_text" not in item or "target_text" not in item:
            raise ValueError(f"{where}[{n}]: expected an object with input_text and target_text")
        inp, tgt = item["input_text"], item["target_text"]
        if not tgt.startswith(inp):
            raise ValueError(f"{where}[{n}]: target_text {tgt!r} does not repeat input_text {inp!r}")
        rest = split_tokens(tgt[len(inp) :])
        if multi:
            if len(rest) < 2 or rest[-1] != END or END in rest[:-1]:
                raise ValueError(f"{where}[{n}]: expected answer tokens then {END}, got {rest}")
            try:
                inputs.append(vocab.encode(inp))
                answers.append(vocab.encode(rest[:-1]))
            except KeyError as e:
                raise ValueError(f"{where}[{n}]: {e.args[0]}") from None
            continue
        if len(rest) != 2 or rest[1] != END:
            raise ValueError(f"{where}[{n}]: expected one answer token then {END}, got {rest}")
        try:
            inputs.append(vocab.encode(inp))
            answers.append(vocab[rest[0]])
        except KeyError as e:
            raise ValueError(f"{where}[{n}]: {e.args[0]}") from None
    return inputs, answers


def load_paper_format(directory: str | os.PathLike[str], task: str | None = None) -> TaskDataset:
    """Read a paper-format dataset directory into a :class:`TaskDataset`.

    With ``task`` (a registered task's name, as a run directory records it) that task
    builds the dataset. Without it the task is recognised from the vocabulary (relations:
    composition; attributes: comparison, or complex reasoning when OOD atomic facts are
    absent from train.json), as for the paper's released files.
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
    from grokscope.tasks.base import get_task

    spec = get_task(task) if task is not None else None
    probe_splits = spec.probe_splits if spec is not None else PROBE_SPLITS
    by_type: dict[str, list[Any]] = {name: [] for name in probe_splits}
    for n, item in enumerate(test_items):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in by_type:
            raise ValueError(f"{d / 'test.json'}[{n}]: type {kind!r} is not one of {', '.join(probe_splits)}")
        by_type[kind].append(item)
    if not split_file(d, "valid.json").is_file():
        raise FileNotFoundError(f"{d / 'valid.json'}: missing (nor valid.json.gz)")

    if spec is not None and spec.text_files:
        return spec.load_text(vocab, {"train": train_items, **by_type}, d)
    multi = bool(getattr(spec, "multi_token_answers", False))
    parsed = {"train": _parse_items(train_items, vocab, str(d / "train.json"), multi=multi)}
    for name, items in by_type.items():
        parsed[name] = _parse_items(items, vocab, f"{d / 'test.json'} ({name})", multi=multi)

    if spec is not None:
        return spec.load(vocab, parsed, d)
    if len(vocab.class_ids("relation")):
        return load_composition_items(vocab, parsed, d)
    if len(vocab.class_ids("attribute")):
        return load_comparison_items(vocab, parsed, d)
    raise ValueError(f"{d / 'vocab.json'}: neither relation nor attribute tokens; cannot tell the task")


def _group(inputs: list[list[int]], answers: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [i for i, x in enumerate(inputs) if len(x) == length]
    if not rows:
        return np.zeros((0, length), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.array([inputs[i] for i in rows], dtype=np.int64), np.array([answers[i] for i in rows], dtype=np.int64)


def load_composition_items(
    vocab: Vocab, parsed: dict[str, Any], d: Path, *, hops: int = 2, task: str = "composition"
) -> TaskDataset:
    """Composition (``hops`` = 2) or k-hop data from parsed items; every fact checked
    against the knowledge base rebuilt from the atomic facts."""
    ent, rel = vocab.entity_ids, vocab.relation_ids
    ent_index = np.full(len(vocab), -1)
    ent_index[ent] = np.arange(len(ent))
    rel_index = np.full(len(vocab), -1)
    rel_index[rel] = np.arange(len(rel))
    tail = np.full((len(ent), len(rel)), -1, dtype=np.int64)
    ood = np.zeros_like(tail, dtype=bool)
    bridges = ["bridge"] if hops == 2 else [f"b{i}" for i in range(1, hops)]
    rel_roles = [f"r{i}" for i in range(1, hops + 1)]

    for name, (inputs, answers) in parsed.items():
        bad = [i for i, x in enumerate(inputs) if len(x) not in (2, hops + 1)]
        if bad:
            raise ValueError(
                f"{d}: {name} example {bad[0]} has {len(inputs[bad[0]])} input tokens; {task} uses 2 or {hops + 1}"
            )
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
            meta = {"h": x[:, 0], "r1": x[:, 1], **{r: none for r in rel_roles[1:]}, **{b: none for b in bridges}, "t": y}
            parts.append(make_split(name, x, y, vocab, atomic=True, meta=meta, roles=ROLES_COMPOSITION_ATOMIC))
        x, y = _group(inputs, answers, hops + 1)
        if len(x):
            h = ent_index[x[:, 0]]
            rs = rel_index[x[:, 1:]]
            if (h < 0).any() or (rs < 0).any():
                raise ValueError(f"{d}: {name} holds an inferred fact that is not <e>{'<r>' * hops}")
            cur, nodes = h, []
            for j in range(hops):
                cur = np.where(cur >= 0, tail[np.maximum(cur, 0), rs[:, j]], -1)
                nodes.append(cur)
            wrong = (np.stack(nodes) < 0).any(axis=0) | (ent[np.maximum(cur, 0)] != y)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise ValueError(
                    f"{d}: {name} fact {vocab.decode(x[i])} -> {vocab.tokens[y[i]]} does not follow from the atomic facts"
                )
            meta = {"h": x[:, 0], **{r: x[:, j + 1] for j, r in enumerate(rel_roles)},
                    **{b: ent[nodes[j]] for j, b in enumerate(bridges)}, "t": y}
            roles = {"h": 0, **{r: j + 1 for j, r in enumerate(rel_roles)}}
            parts.append(make_split(name, x, y, vocab, atomic=False, meta=meta, roles=roles))
        return _merge(name, parts, vocab)

    splits = {name: split(name) for name in parsed}
    return _finish(task, vocab, kb, splits)


def load_comparison_items(vocab: Vocab, parsed: dict[str, Any], d: Path) -> TaskDataset:
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
    # every atomic fact is trained except, in complex reasoning, the OOD ones
    ood_trained = bool(train.atomic.sum() == kb.n_facts)
    n_id_trained_atomic = int(train.atomic.sum()) - (int(kb.ood.sum()) if ood_trained else 0)
    if n_id_trained_atomic > 0:
        counts["phi"] = counts["n_train_inferred"] / n_id_trained_atomic
    return TaskDataset(task=task, vocab=vocab, kb=kb, splits=splits, counts=counts, config=None)

