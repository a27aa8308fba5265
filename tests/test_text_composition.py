"""The text-composition task (issue #24), checked from its files with independent readers.

The split files are parsed back with regular expressions built from the templates, the
knowledge base is rebuilt from the atomic sentences of ``train.json``, and every two-hop
answer, every split's definition and every token row is checked against it with plain
``tokenizers``; the shipped run's accuracies are recomputed with plain TransformerLens +
``tokenizers`` (greedy decoding up to ``<eos>``, ``benchmarks/text_eval.py``, no grokscope).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from grokscope.tasks.builtin.text_composition import (
    ATOMIC_TEMPLATES,
    QUERY_TEMPLATES,
    TextCompositionConfig,
    generate_text_composition,
)
from grokscope.tasks.paper_format import load_paper_format, save_paper_format

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "text-composition-small"
CFG = TextCompositionConfig(n_entities=20, n_relations=12, out_degree=12, phi=3.6, n_templates=3, probe_size=300)
NAME = r"[A-Z][a-z]+(?: [A-Z][a-z]+){0,2}"


def _pattern(template: str) -> re.Pattern[str]:
    out = re.escape(template)
    for key, sub in (("h", f"(?P<h>{NAME})"), ("r1", "(?P<r1>[a-z]+)"), ("r2", "(?P<r2>[a-z]+)"), ("r", "(?P<r>[a-z]+)")):
        out = out.replace(re.escape("{" + key + "}"), sub)
    return re.compile("^" + out + "$")


ATOMIC = [_pattern(t) for t in ATOMIC_TEMPLATES]
QUERY = [_pattern(t) for t in QUERY_TEMPLATES]


def parse(item: dict) -> tuple[str, int, dict[str, str], str]:
    """(kind, template, fields, answer) of one file item: exactly one template must match."""
    inp, tgt = item["input_text"], item["target_text"]
    assert tgt.startswith(inp) and tgt.endswith("<eos>")
    answer = tgt[len(inp) : -len("<eos>")]
    assert answer.startswith(" ") and re.fullmatch(NAME, answer[1:]), answer
    hits = [("atomic", i, m) for i, p in enumerate(ATOMIC) if (m := p.match(inp))]
    hits += [("query", i, m) for i, p in enumerate(QUERY) if (m := p.match(inp))]
    assert len(hits) == 1, (inp, hits)
    kind, i, m = hits[0]
    return kind, i, m.groupdict(), answer[1:]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    ds = generate_text_composition(CFG)
    d = tmp_path_factory.mktemp("text")
    save_paper_format(ds, d)
    train = [parse(x) for x in json.loads((d / "train.json").read_text())]
    test = {}
    for x in json.loads((d / "test.json").read_text()):
        test.setdefault(x["type"], []).append(parse(x))
    return ds, d, train, test


def test_files_hold_the_knowledge_base_and_every_split_is_what_it_claims(files):
    ds, d, train, test = files
    kb: dict[tuple[str, str], str] = {}
    templates: dict[str, set[int]] = {}
    for kind, i, f, ans in train:
        if kind == "atomic":
            assert kb.setdefault((f["h"], f["r"]), ans) == ans, "two tails for one (h, r)"
            templates.setdefault(f["r"], set()).add(i)
    names = {h for h, _ in kb} | set(kb.values())
    assert len({h for h, _ in kb}) == CFG.n_entities and names == {h for h, _ in kb}
    assert Counter(len(n.split()) for n in names).keys() <= {1, 2, 3} and len(kb) == CFG.n_atomic
    assert all(len(v) == CFG.n_templates for v in templates.values()) and len(templates) == CFG.n_relations
    ood = {(f["h"], f["r"]) for _, _, f, _ in test["ood_atomic"]}
    assert {(f["h"], f["r"]) for _, _, f, _ in test["id_atomic"]} == set(kb) - ood
    assert all(kb[(f["h"], f["r"])] == a for s in ("id_atomic", "ood_atomic") for _, _, f, a in test[s])

    def two_hop(f: dict[str, str]) -> tuple[str, bool, bool]:
        b = kb[(f["h"], f["r1"])]
        return kb[(b, f["r2"])], (f["h"], f["r1"]) in ood, (b, f["r2"]) in ood

    queries = [(i, f, a) for kind, i, f, a in train if kind == "query"]
    trained = {(f["h"], f["r1"], f["r2"]) for _, f, _ in queries}
    assert len(queries) == len(trained) == round(CFG.phi * (len(kb) - len(ood)))
    assert {i for i, _, _ in queries} == set(range(CFG.n_templates))
    for _, f, a in queries:
        assert two_hop(f) == (a, False, False)
    for kind, i, f, a in test["test_inferred_iid"]:
        assert kind == "query" and i < CFG.n_templates and two_hop(f) == (a, False, False)
        assert (f["h"], f["r1"], f["r2"]) not in trained
    for _, _, f, a in test["test_inferred_ood"]:
        assert two_hop(f) == (a, True, True)
    new = test["test_new_template"]
    assert {i for _, i, _, _ in new} <= set(range(CFG.n_templates, CFG.n_templates + CFG.held_out_templates))
    key = lambda rows: sorted((f["h"], f["r1"], f["r2"], a) for _, _, f, a in rows)  # noqa: E731
    assert new and key(new) == key(test["test_inferred_iid"])
    assert all(two_hop(f)[0] == a for _, _, f, a in test["train_inferred"])


def test_tokenizer_file_gives_exactly_the_model_rows(files):
    from tokenizers import Tokenizer

    ds, d, _, _ = files
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    eos = tok.token_to_id("<eos>")
    vocab = json.loads((d / "vocab.json").read_text())
    assert len(vocab) == tok.get_vocab_size() == len(ds.vocab)
    assert all(v == (p if p in ("<bos>", "<eos>") else f"<w:{p}>") for v, p in zip(vocab, (tok.id_to_token(i) for i in range(len(vocab)))))
    items = json.loads((d / "test.json").read_text())
    for name in ds.probe_splits:
        split = ds.splits[name]
        rows = [x for x in items if x["type"] == name]
        assert len(rows) == len(split)
        for x, row, p, end in zip(rows, split.tokens, split.target_pos, split.answer_end):
            ids = tok.encode(x["input_text"]).ids
            assert ids[0] == tok.token_to_id("<bos>") and ids == row[: p + 1].tolist()
            full = tok.encode(x["target_text"]).ids
            assert full == row[: end + 1].tolist() and full[-1] == eos and eos not in full[:-1]
            answer = x["target_text"][len(x["input_text"]) : -len("<eos>")]
            assert len(full) - len(ids) - 1 == len(answer.split())  # a name of k words is k tokens


def test_files_round_trip_and_the_analysis_split_is_aligned(files):
    ds, d, _, _ = files
    back = load_paper_format(d, task="text-composition")
    assert back.content_hash() == ds.content_hash()
    a, b = ds.splits["analysis"], back.splits["analysis"]
    assert len(a) > 20 and np.array_equal(a.tokens, b.tokens) and a.roles == {"h": 1, "h_s": 2, "r1": 3, "r1_s": 4, "r2": 5, "last": 6}
    inv = {i: t for i, t in enumerate(ds.vocab.tokens)}
    for row in a.tokens[:50]:
        words = [inv[int(t)] for t in row[:7]]
        assert words[0] == "<bos>" and words[2] == words[4] == "<w:'s>" and words[6] == "<w:Ġis>"


def test_counterfactuals_swap_a_whole_name_of_the_same_length(files):
    from grokscope.patching import make_counterfactuals

    ds, d, train, _ = files
    kb = {(f["h"], f["r"]): a for kind, _, f, a in train if kind == "atomic"}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    first = lambda name: tok.encode(" " + name, add_special_tokens=False).ids[0]  # noqa: E731
    word = lambda i: tok.decode([int(i)]).strip()  # noqa: E731
    cfs = make_counterfactuals(ds, n=120, seed=0)
    for pert, pos in (("h", 1), ("r1", 3), ("r2", 5)):
        cf = cfs[pert]
        assert len(cf) > 20
        clean, corrupt = cf.clean.numpy(), cf.corrupt.numpy()
        changed = clean != corrupt
        assert changed[:, pos].all() and changed.sum() == len(cf)
        for c, k, ans, cf_ans in zip(clean, corrupt, cf.answer.tolist(), cf.cf_answer.tolist()):
            h, r1, r2 = word(k[1]), word(k[3]), word(k[5])
            cf_t = kb[(kb[(h, r1)], r2)]
            assert cf_ans == first(cf_t) != ans == first(kb[(kb[(word(c[1]), word(c[3]))], word(c[5]))])


def test_lens_targets_read_the_bridge_at_the_first_relation(files):
    from grokscope.lens import lens_targets

    ds, d, train, _ = files
    kb = {(f["h"], f["r"]): a for kind, _, f, a in train if kind == "atomic"}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    split = ds.splits["analysis"]
    targets = {t.name: t for t in lens_targets(split, ds.vocab)}
    assert set(targets) == {"bridge@r1", "bridge@r1_s", "bridge@h_s", "r2@r2", "t@last", "r2@r2/rel"}
    for row, b, t in zip(split.tokens[:40], targets["bridge@r1"].token_ids[:40], targets["t@last"].token_ids[:40]):
        h, r1, r2 = (tok.decode([int(row[i])]).strip() for i in (1, 3, 5))
        assert b == tok.encode(" " + kb[(h, r1)], add_special_tokens=False).ids[0]
        assert t == tok.encode(" " + kb[(kb[(h, r1)], r2)], add_special_tokens=False).ids[0]
    assert targets["bridge@r1"].position == 3 and targets["bridge@r1_s"].position == 4
    assert targets["bridge@h_s"].position == 2 and targets["t@last"].position == 6


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="checkpoints/text-composition-small not shipped")
def test_shipped_metrics_equal_plain_transformer_lens_greedy_decoding():
    """The accuracies in metrics.jsonl equal greedy decoding with plain TransformerLens +
    tokenizers (benchmarks/text_eval.py, run without grokscope importable) within 0.02."""
    metrics = {json.loads(x)["step"]: json.loads(x) for x in (SHIPPED / "metrics.jsonl").read_text().splitlines() if x.strip()}
    steps = sorted(int(p.name.split("_")[1]) for p in (SHIPPED / "checkpoints").iterdir())
    script = (f"import runpy, sys; sys.argv = ['text_eval', {str(SHIPPED)!r}, '--match-subsets', '--step', '{steps[-1]}']; "
              f"runpy.run_path({str(ROOT / 'benchmarks' / 'text_eval.py')!r}, run_name='__main__'); "
              "assert not any(m.startswith('grokscope') for m in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd="/")
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = metrics[steps[-1]]["acc"]
    assert set(ours) == set(theirs) - {"step"}
    for name, acc in ours.items():
        assert abs(acc - theirs[name]) <= 0.02, (name, acc, theirs[name])


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="checkpoints/text-composition-small not shipped")
def test_find_circuit_reads_the_task_s_own_default_split():
    """Without a split, the located circuit is built on the text task's aligned ``analysis``
    rows (its ``default_split``), not on ``train_inferred``, whose templates differ per row."""
    import numpy as np

    from grokscope.patching.hypothesis import find_circuit
    from grokscope.runs.run import Run

    run = Run.open(SHIPPED)
    model, ds = run.load_model(run.steps()[-1]).eval(), run.dataset()
    default = find_circuit(model, ds, n=20)
    analysis = find_circuit(model, ds, "analysis", n=20)
    np.testing.assert_equal(default.to_dict(), analysis.to_dict())
    assert default.to_dict()["layers"]["bridge@r1_s"] == 3  # measured: the bridge resolves at S[3] of r1_s (20 rows)
    with pytest.raises(ValueError, match="rows line up, such as 'analysis'"):
        find_circuit(model, ds, "train_inferred", n=20)
