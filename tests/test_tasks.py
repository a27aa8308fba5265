"""The three tasks: exact splits, facts recomputed independently, counts, determinism."""

from __future__ import annotations

import json
from itertools import permutations

import numpy as np
import pytest

from grokscope.tasks import (
    PROBE_SPLITS,
    comparison,
    complex_reasoning,
    composition,
    load_paper_format,
    save_paper_format,
)
from grokscope.tasks.vocab import Vocab, parse_token


def _facts(ds, split):
    """Decode a split into (input token strings, answer string) tuples."""
    s = ds.splits[split]
    out = []
    for row, p in zip(s.tokens, s.target_pos):
        toks = [ds.vocab.tokens[i] for i in row[: p + 1]]
        out.append((tuple(toks), ds.vocab.tokens[row[p + 1]]))
    return out


def _atomic_dict(ds):
    """(h, r) -> t as strings, rebuilt from the train split's atomic facts only."""
    return {inp: ans for inp, ans in _facts(ds, "train") if len(inp) == 2}


@pytest.fixture(scope="module")
def comp():
    return composition(n_entities=120, n_relations=15, out_degree=10, phi=5.0, seed=3,
                       test_fraction=0.05, probe_size=400)


@pytest.fixture(scope="module")
def cmp_ds():
    return comparison(n_entities=60, n_attributes=4, n_values=8, phi=6.0, seed=5, probe_size=400)


def test_composition_inferred_facts_are_compositions(comp):
    atomic = _atomic_dict(comp)
    assert len(atomic) == 120 * 10
    for split in ("train", "train_inferred", "test_inferred_iid", "test_inferred_ood"):
        for inp, ans in _facts(comp, split):
            if len(inp) == 2:
                continue
            h, r1, r2 = inp
            bridge = atomic[(h, r1)]
            assert atomic[(bridge, r2)] == ans


def test_composition_metadata_bridge(comp):
    s = comp.splits["train_inferred"]
    atomic = _atomic_dict(comp)
    for i in range(len(s)):
        h, r1 = comp.vocab.tokens[s.meta["h"][i]], comp.vocab.tokens[s.meta["r1"][i]]
        assert comp.vocab.tokens[s.meta["bridge"][i]] == atomic[(h, r1)]
        assert s.tokens[i, s.roles["r2"]] == s.meta["r2"][i]


def test_composition_splits_disjoint_and_ood_hops(comp):
    atomic = _atomic_dict(comp)
    ood = {inp for inp, _ in _facts(comp, "ood_atomic")}
    assert len(ood) == round(0.05 * 1200)
    train = {inp for inp, _ in _facts(comp, "train")}
    iid = {inp for inp, _ in _facts(comp, "test_inferred_iid")}
    ood_inf = {inp for inp, _ in _facts(comp, "test_inferred_ood")}
    assert not (iid & train) and not (ood_inf & train) and not (iid & ood_inf)
    for h, r1, r2 in ood_inf:
        assert (h, r1) in ood and (atomic[(h, r1)], r2) in ood
    for h, r1, r2 in iid:
        assert (h, r1) not in ood and (atomic[(h, r1)], r2) not in ood
    # No mixed fact anywhere in the training set.
    for inp in train:
        if len(inp) == 3:
            h, r1, r2 = inp
            assert (h, r1) not in ood and (atomic[(h, r1)], r2) not in ood
    # Every atomic fact, ID and OOD, is trained.
    assert ood <= train


def test_composition_structure(comp):
    tail = comp.kb.tail
    assert ((tail >= 0).sum(axis=1) == 10).all()  # out-degree 10, distinct relations
    c = comp.counts
    assert c["n_train_inferred"] == round(5.0 * c["n_id_atomic"])
    assert c["n_id_id"] + c["n_ood_ood"] + c["n_mixed_dropped"] == 120 * 10 * 10


def test_composition_paper_scale_counts():
    ds = composition(phi=7.2)
    c = ds.counts
    assert c["n_atomic"] == 40_000 and c["n_ood_atomic"] == 2_000 and c["n_id_atomic"] == 38_000
    assert c["n_train_inferred"] == 273_600
    assert len(ds.splits["train"]) == 40_000 + 273_600
    assert c["n_inferred_candidates"] == 800_000
    # Held-out share of ID-ID candidates: 0.005 within 4 standard errors.
    p, n = c["n_test_inferred_iid"] / c["n_id_id"], c["n_id_id"]
    assert abs(p - 0.005) < 4 * np.sqrt(0.005 * 0.995 / n)
    assert all(len(ds.splits[s]) <= 3000 for s in PROBE_SPLITS)


def test_comparison_paper_scale_counts():
    ds = comparison()
    c = ds.counts
    assert c["n_atomic"] == 20_000 and c["n_ood_atomic"] == 2_000
    assert c["n_train_inferred"] == round(7.2 * 18_000)
    p, n = c["n_test_pairs_iid"] / c["n_id_id_pairs"], c["n_id_id_pairs"]
    assert abs(p - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
    assert c["n_test_inferred_ood"] == 20 * 100 * 99


def _values(ds):
    out = {}
    for inp, ans in _facts(ds, "train") + _facts(ds, "ood_atomic") + _facts(ds, "id_atomic"):
        if len(inp) == 2:
            out[inp] = int(ans.strip("<>"))
    return out


def test_comparison_labels_match_values(cmp_ds):
    vals = _values(cmp_ds)
    for split in ("train", "train_inferred", "test_inferred_iid", "test_inferred_ood"):
        for inp, ans in _facts(cmp_ds, split):
            if len(inp) == 2:
                continue
            attr, q, e1, mask, e2 = inp
            assert (q, mask) == ("<q>", "<mask>")
            v1, v2 = vals[(e1, attr)], vals[(e2, attr)]
            expected = 0 if v1 < v2 else 1 if v1 == v2 else 2
            assert ans == f"{attr[:-1]}_{expected}>"


def test_comparison_splits(cmp_ds):
    ood = {(e, a) for (e, a), _ in _facts(cmp_ds, "ood_atomic")}
    assert len(ood) == 4 * 6  # 10% of 60 entities per attribute
    train = {inp for inp, _ in _facts(cmp_ds, "train")}
    for split, want in (("test_inferred_iid", (False, False)), ("test_inferred_ood", (True, True))):
        for inp, _ in _facts(cmp_ds, split):
            attr, _, e1, _, e2 = inp
            assert ((e1, attr) in ood, (e2, attr) in ood) == want
            assert inp not in train
            # Held out as an unordered pair: the reverse order is not trained either.
            assert (attr, "<q>", e2, "<mask>", e1) not in train
    for inp in train:
        if len(inp) == 5:
            attr, _, e1, _, e2 = inp
            assert (e1, attr) not in ood and (e2, attr) not in ood


def _bfs_derivable(values, known_val, known_pairs, a, b):
    """Independent reference: is a < b derivable by a chain of known relations?

    Nodes are entities; known edges x -> y mean v_x <= v_y (with a strict flag).
    Known values give edges between every pair of known-value entities.
    """
    n = len(values)
    edges = {i: [] for i in range(n)}
    for i in range(n):
        for j in range(n):
            if i != j and known_val[i] and known_val[j] and values[i] <= values[j]:
                edges[i].append((j, values[i] < values[j]))
    for x, y in known_pairs:
        if values[x] < values[y]:
            edges[x].append((y, True))
        elif values[x] == values[y]:
            edges[x].append((y, False))
            edges[y].append((x, False))
        else:
            edges[y].append((x, True))
    # states: (node, strict_seen)
    seen = {(a, False)}
    stack = [(a, False)]
    while stack:
        node, strict = stack.pop()
        if node == b and strict:
            return True
        for nxt, s in edges[node]:
            st = (nxt, strict or s)
            if st not in seen:
                seen.add(st)
                stack.append(st)
    return False


def test_complex_reasoning_test_set_needs_chaining():
    ds = complex_reasoning(n_entities=40, n_attributes=2, n_values=10, seed=2,
                           id_id_fraction=0.1, id_ood_fraction=0.3, n_test_per_label=10)
    train = _facts(ds, "train")
    vals = {}
    for (e, a), ans in _facts(ds, "id_atomic") + _facts(ds, "ood_atomic"):
        vals[(e, a)] = int(ans.strip("<>"))
    ood = {inp for inp, _ in _facts(ds, "ood_atomic")}
    assert not ood & {inp for inp, _ in train}, "OOD atomic facts must not be trained"
    test = _facts(ds, "test_inferred_ood")
    assert len(test) > 0
    for (attr, _, e1, _, e2), ans in test:
        assert (e1, attr) in ood and (e2, attr) in ood
        ents = sorted({e for (e, a) in vals if a == attr}, key=lambda t: int(t[3:-1]))
        idx = {e: i for i, e in enumerate(ents)}
        values = [vals[(e, attr)] for e in ents]
        known = [(e, attr) not in ood for e in ents]
        pairs = [(idx[inp[2]], idx[inp[4]]) for inp, _ in train if len(inp) == 5 and inp[0] == attr]
        label = int(ans[-2])
        i, j = idx[e1], idx[e2]
        if label == 0:
            assert _bfs_derivable(values, known, pairs, i, j)
        elif label == 2:
            assert _bfs_derivable(values, known, pairs, j, i)
        else:
            assert values[i] == values[j]
    # And the generator misses nothing the reference derives (first attribute).
    attr = "<attr_0>"
    ents = sorted({e for (e, a) in vals if a == attr}, key=lambda t: int(t[3:-1]))
    idx = {e: i for i, e in enumerate(ents)}
    values = [vals[(e, attr)] for e in ents]
    known = [(e, attr) not in ood for e in ents]
    pairs = [(idx[inp[2]], idx[inp[4]]) for inp, _ in train if len(inp) == 5 and inp[0] == attr]
    oods = [idx[e] for (e, a) in ood if a == attr]
    n_lt = sum(_bfs_derivable(values, known, pairs, a, b) for a, b in permutations(oods, 2))
    from grokscope.tasks import derivable_order

    order = derivable_order(ds.kb, 0, (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])),
                            np.array(known))
    assert n_lt == int(sum(order[a, b] == 0 for a, b in permutations(oods, 2)))


def test_determinism_and_seed():
    a = composition(60, 10, 5, phi=3.0, seed=1)
    b = composition(60, 10, 5, phi=3.0, seed=1)
    c = composition(60, 10, 5, phi=3.0, seed=2)
    assert a.content_hash() == b.content_hash() != c.content_hash()
    x = comparison(40, 3, 6, phi=3.0, seed=1)
    assert x.content_hash() == comparison(40, 3, 6, phi=3.0, seed=1).content_hash()
    assert x.content_hash() != comparison(40, 3, 6, phi=3.0, seed=9).content_hash()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: composition(50, 10, 5, phi=100.0), "maximum phi"),
        (lambda: composition(50, 10, 20), "out_degree"),
        (lambda: composition(50, 10, 5, ood_fraction=0.0), "ood_fraction"),
        (lambda: composition(50, 10, 5, ood_fraction=1.0), "ood_fraction"),
        (lambda: comparison(20, 2, 5, phi=1000.0), "maximum phi"),
        (lambda: comparison(20, 2, 5, ood_fraction=1.5), "ood_fraction"),
    ],
)
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unknown_task_config():
    from grokscope.runs.config import task_config_from_dict

    with pytest.raises(ValueError, match="unknown task"):
        task_config_from_dict({"task": "sorting"})


@pytest.mark.parametrize("make", [
    lambda: composition(80, 10, 8, phi=4.0, seed=4),
    lambda: comparison(50, 3, 8, phi=4.0, seed=4),
    lambda: complex_reasoning(50, 3, 8, seed=4, n_test_per_label=5),
])
def test_paper_format_round_trip(tmp_path, make):
    ds = make()
    save_paper_format(ds, tmp_path)
    back = load_paper_format(tmp_path)
    assert back.task == ds.task
    assert back.vocab == ds.vocab
    assert back.content_hash() == ds.content_hash()
    for name in ds.splits:
        for key in ds.splits[name].meta:
            np.testing.assert_array_equal(back.splits[name].meta[key], ds.splits[name].meta[key])
    items = json.loads((tmp_path / "train.json").read_text())
    assert items[0]["target_text"].startswith(items[0]["input_text"])
    assert items[0]["target_text"].endswith("</a>")


@pytest.mark.parametrize("name, task", [
    ("paper-composition.200.20.7.2", "composition"),
    ("paper-comparison.100.5.7.2", "comparison"),
])
def test_loads_authors_files(paper_fixture, tmp_path, name, task):
    src = paper_fixture(name)
    ds = load_paper_format(src)
    assert ds.task == task
    assert ds.counts["phi"] == pytest.approx(7.2)
    if task == "composition":
        assert ds.kb.n_facts == 200 * 20 and int(ds.kb.ood.sum()) == 200
        assert ((ds.kb.tail >= 0).sum(axis=1) == 20).all()
    else:
        assert ds.kb.n_facts == 100 * 5 and int(ds.kb.ood.sum()) == 50
    # Every probe split recognised, and OOD test facts built only from OOD hops.
    assert all(len(ds.splits[s]) > 0 for s in PROBE_SPLITS)
    # Round trip writes the very same files back.
    save_paper_format(ds, tmp_path)
    for f in ("train.json", "valid.json", "test.json", "vocab.json"):
        assert json.loads((tmp_path / f).read_text()) == json.loads((src / f).read_text()), f


def test_compressed_split_files_read_as_the_plain_ones(tmp_path):
    """train/valid/test.json.gz hold the same JSON (gzip -9) and load to the same dataset; a
    directory with both forms, or a truncated .gz, is refused by name; a fresh save
    replaces a stale .gz."""
    import gzip

    from grokscope.tasks.paper_format import compress_split_files, split_file

    ds = composition(40, 6, 4, phi=2.0, seed=0)
    save_paper_format(ds, tmp_path)
    plain = {f: (tmp_path / f).read_bytes() for f in ("train.json", "valid.json", "test.json")}
    sizes = compress_split_files(tmp_path)
    for f, raw in plain.items():
        assert not (tmp_path / f).exists() and split_file(tmp_path, f) == tmp_path / (f + ".gz")
        assert gzip.decompress((tmp_path / (f + ".gz")).read_bytes()) == raw  # independent: plain gzip
        assert sizes[f] == (len(raw), (tmp_path / (f + ".gz")).stat().st_size)
    assert sizes["train.json"][1] * 4 < sizes["train.json"][0]
    assert load_paper_format(tmp_path).content_hash() == ds.content_hash()
    assert compress_split_files(tmp_path) == {}  # already compressed: nothing to do
    (tmp_path / "train.json").write_bytes(plain["train.json"])
    with pytest.raises(ValueError, match="both there"):
        load_paper_format(tmp_path)
    (tmp_path / "train.json").unlink()
    gz = tmp_path / "test.json.gz"
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(ValueError, match="test.json.gz: not a readable gzip file"):
        load_paper_format(tmp_path)
    save_paper_format(ds, tmp_path)  # writes plain files and drops the stale .gz
    assert not list(tmp_path.glob("*.gz"))
    assert load_paper_format(tmp_path).content_hash() == ds.content_hash()


def test_loader_rejects_inconsistent_fact(tmp_path):
    ds = composition(40, 6, 4, phi=2.0, seed=0)
    save_paper_format(ds, tmp_path)
    items = json.loads((tmp_path / "train.json").read_text())
    inferred = next(i for i, x in enumerate(items) if x["input_text"].count("<r_") == 2)
    wrong = "<e_0>" if not items[inferred]["target_text"].endswith("<e_0></a>") else "<e_1>"
    items[inferred]["target_text"] = items[inferred]["input_text"] + wrong + "</a>"
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(ValueError, match="does not follow"):
        load_paper_format(tmp_path)


def test_vocab_classes():
    v = Vocab.comparison(3, 2, 4)
    assert v.token_class("<attr_1_2>") == "label" and v.token_class("<3>") == "value"
    assert v.token_class("<attr_0>") == "attribute" and v.token_class("</a>") == "special"
    assert v.label_ids.shape == (2, 3)
    assert parse_token("<e_17>") == ("entity", (17,))
    with pytest.raises(ValueError):
        parse_token("<bogus>")
