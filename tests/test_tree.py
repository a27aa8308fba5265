"""The tree task (issue #23): its trees follow the stated distribution (checked against an
independent generator written here), every path is the root-goal path of its edges, no
test tree is trained on, files round-trip, and a tiny run trains and scores whole paths."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from grokscope.runs.config import ModelConfig, RunConfig, TrainConfig
from grokscope.runs.presets import preset
from grokscope.tasks import get_task
from grokscope.tasks.builtin.tree import TreeConfig, generate_tree, plain_text
from grokscope.tasks.paper_format import load_paper_format, save_paper_format
from grokscope.tasks.vocab import split_tokens

SHIPPED_LAST_STEP = 10_000  # checkpoints/tree-small's last checkpoint

# --------------------------------------------------------------------------- an independent reference


def reference_tree(rng: random.Random, n_nodes: int, n_labels: int) -> tuple[list[tuple[int, int]], int, list[int]]:
    """The issue's generator as a plain loop: (edges as labels, goal label, path labels)."""
    parent = {0: None}
    kids = {0: 0}
    for node in range(1, n_nodes):
        choices = [v for v in range(node) if kids[v] < 2]
        p = rng.choice(choices)
        parent[node] = p
        kids[p] += 1
        kids[node] = 0
    labels = rng.sample(range(n_labels), n_nodes)
    leaves = [v for v in range(n_nodes) if kids[v] == 0]
    goal = rng.choice(leaves)
    edges = [(labels[parent[v]], labels[v]) for v in range(1, n_nodes)]
    rng.shuffle(edges)
    path = [goal]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return edges, labels[goal], [labels[v] for v in reversed(path)]


def parse_plain(text: str) -> tuple[list[tuple[int, int]], int, list[int]]:
    """``12>3,3>7|7:12>3>7`` -> (edges, goal, path), by string splitting."""
    head, path = text.split(":")
    edges_text, goal = head.split("|")
    edges = [tuple(int(x) for x in e.split(">")) for e in edges_text.split(",")]
    return edges, int(goal), [int(x) for x in path.split(">")] if path else []  # type: ignore[misc]


def plain_path(edges: list[tuple[int, int]], goal: int) -> list[int]:
    """Root -> goal by a plain loop over the edge list."""
    path = [goal]
    while True:
        parents = [a for a, b in edges if b == path[-1]]
        assert len(parents) <= 1, "a node with two parents"
        if not parents:
            return path[::-1]
        path.append(parents[0])


def tree_stats(edges: list[tuple[int, int]], goal: int) -> tuple[int, int, int]:
    """(goal depth, number of leaves, children of the root)."""
    children = Counter(a for a, _ in edges)
    nodes = {a for a, _ in edges} | {b for _, b in edges}
    root = (nodes - {b for _, b in edges}).pop()
    return len(plain_path(edges, goal)) - 1, sum(1 for v in nodes if children[v] == 0), children[root]


def examples(ds, split: str) -> list[tuple[list[tuple[int, int]], int, list[int]]]:
    return [parse_plain(plain_text(tgt)) for _, tgt in ds.splits[split].texts(ds.vocab)]


# --------------------------------------------------------------------------- distribution


def test_every_example_is_a_binary_tree_with_its_root_goal_path():
    cfg = TreeConfig(n_nodes=8, n_labels=12, n_train=400, n_test=100, ood_depth=5, seed=3)
    ds = generate_tree(cfg)
    for split in ds.split_names:
        for edges, goal, path in examples(ds, split):
            children = Counter(a for a, _ in edges)
            nodes = {a for a, _ in edges} | {b for _, b in edges}
            assert len(edges) == cfg.n_nodes - 1 and len(nodes) == cfg.n_nodes  # distinct labels
            assert all(0 <= v < cfg.n_labels for v in nodes)
            assert max(children.values()) <= 2  # binary
            assert len({b for _, b in edges}) == len(edges)  # one parent each
            assert len(nodes - {b for _, b in edges}) == 1  # one root
            assert children[goal] == 0  # the goal is a leaf
            assert path == plain_path(edges, goal)  # the path, recomputed from the edges
            depth = len(path) - 1
            assert (depth >= cfg.ood_depth) == (split == "test_inferred_ood")


def test_distribution_matches_an_independent_generator():
    n, n_labels, count = 8, 16, 3000
    ds = generate_tree(TreeConfig(n_nodes=n, n_labels=n_labels, n_train=count, n_test=1, ood_depth=None, seed=1))
    ours = [tree_stats(e, g) for e, g, _ in examples(ds, "train")]
    rng = random.Random(12345)
    ref = [tree_stats(e, g) for e, g, _ in (reference_tree(rng, n, n_labels) for _ in range(count))]
    for k, name in enumerate(("goal depth", "leaves", "root children")):
        a, b = Counter(x[k] for x in ours), Counter(x[k] for x in ref)
        tv = 0.5 * sum(abs(a[v] - b[v]) for v in set(a) | set(b)) / count
        assert tv < 0.05, f"{name}: total variation {tv:.3f} between grokscope's trees and the reference"
    labels = Counter(v for e, _, _ in examples(ds, "train") for edge in e for v in edge)
    # each label is used by n/n_labels of the trees; every node but the root appears once as a child
    freq = np.array([labels[v] for v in range(n_labels)], dtype=float)
    assert freq.min() > 0.8 * freq.mean() and freq.max() < 1.2 * freq.mean()
    # the edge order is shuffled: the first edge is not always the root's
    roots_first = sum(e[0][0] == p[0] for e, _, p in examples(ds, "train"))
    assert roots_first < 0.6 * count


def test_test_trees_are_never_trained_and_draws_are_seeded():
    cfg = TreeConfig(n_nodes=6, n_labels=8, n_train=300, n_test=100, ood_depth=4)
    ds = generate_tree(cfg)

    def keys(split: str) -> set[frozenset]:
        return {frozenset(e) for e, _, _ in examples(ds, split)}

    train = keys("train")
    assert len(train) == cfg.n_train  # distinct trees
    assert not train & keys("test_inferred_iid") and not train & keys("test_inferred_ood")
    assert keys("train_inferred") <= train
    assert generate_tree(cfg).content_hash() == ds.content_hash()
    assert generate_tree(TreeConfig(**{**cfg.__dict__, "seed": 1})).content_hash() != ds.content_hash()


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="n_labels"):
        TreeConfig(n_nodes=8, n_labels=5)
    with pytest.raises(ValueError, match="ood_depth"):
        TreeConfig(n_nodes=8, ood_depth=8)


# --------------------------------------------------------------------------- tokens and files


def test_tokens_round_trip_and_file_format(tmp_path):
    ds = generate_tree(TreeConfig(n_nodes=6, n_labels=10, n_train=50, n_test=20, ood_depth=4))
    v = ds.vocab
    assert v.tokens[:10] == tuple(f"<{i}>" for i in range(10))  # a label's string is <decimal>
    for name in ds.split_names:
        s = ds.splits[name]
        for row, (inp, tgt) in zip(s.tokens, s.texts(v)):
            assert v.encode(tgt) == [int(t) for t in row[: len(v.encode(tgt))]]
            assert v.decode(v.encode(inp)) == inp and tgt.endswith("</a>")
            assert plain_text(inp).endswith(":") and len(v.encode(inp)) == 4 * 6 - 2
    save_paper_format(ds, tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text()) == list(v.tokens)
    back = load_paper_format(tmp_path, task="tree")
    assert back.content_hash() == ds.content_hash()
    assert get_task("tree").describe(back).n_nodes == 6
    # a corrupted path is refused
    items = json.loads((tmp_path / "train.json").read_text())
    inp, tgt = items[0]["input_text"], items[0]["target_text"]
    path = split_tokens(tgt[len(inp):])
    path[0] = "<9>" if path[0] != "<9>" else "<8>"  # a wrong root
    items[0]["target_text"] = inp + "".join(path)
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(ValueError):
        load_paper_format(tmp_path, task="tree")


def test_counterfactuals_and_lens_targets():
    ds = generate_tree(TreeConfig(n_nodes=8, n_labels=16, n_train=200, n_test=50, ood_depth=5))
    task, split = get_task("tree"), ds.splits["test_inferred_iid"]
    rows = np.arange(len(split))
    cf = task.counterfactuals(ds, split, rows, "goal", np.random.default_rng(0))
    lab = {int(t): i for i, t in enumerate(ds.vocab.value_ids)}
    parsed = examples(ds, "test_inferred_iid")
    valid = cf.new_token >= 0
    assert valid.mean() > 0.9
    for i in np.flatnonzero(valid):
        edges, goal, path = parsed[i]
        new_goal = lab[int(cf.new_token[i])]
        assert new_goal != goal and new_goal not in {a for a, _ in edges}  # another leaf
        new_path = plain_path(edges, new_goal)
        assert new_path != path and lab[int(cf.answer[i])] in path and lab[int(cf.cf_answer[i])] in new_path
        assert cf.answer[i] != cf.cf_answer[i]
    targets = {t.name: t for t in task.lens_targets(split, ds.vocab)}
    assert np.array_equal(targets["goal@colon"].token_ids, split.meta["goal"])
    assert np.array_equal(targets["next@a0"].token_ids, split.meta["root"])  # at ':' the root comes next


def _parse_row(ids, vocab) -> tuple[list[tuple[int, int]], int, list[int]]:
    """(edges, goal, path-so-far) of one teacher-forced row of token ids, by string splitting."""
    return parse_plain(plain_text(vocab.decode([int(t) for t in ids])).rstrip(">"))


def test_counterfactuals_are_scored_where_the_two_paths_part():
    """Both perturbations, checked by plain loops over the edge lists: the corrupt row is a
    binary tree with the same nodes and goal (rewire) or another leaf as goal (goal); its
    root-goal path differs; score_pos predicts the first node where the paths part; the
    teacher-forced prefix up to it is the same in both paths."""
    from grokscope.patching.counterfactuals import make_counterfactuals

    ds = generate_tree(TreeConfig(n_nodes=8, n_labels=16, n_train=200, n_test=60, ood_depth=5))
    v, colon = ds.vocab, ds.splits["test_inferred_iid"].target_pos[0]
    cfs = make_counterfactuals(ds, "test_inferred_iid", n=60, seed=1)
    assert set(cfs) == {"goal", "rewire"} and cfs["goal"].clean.shape == cfs["rewire"].clean.shape
    for pert, cf in cfs.items():
        assert len(cf) >= 55 and cf.position == (colon - 1 if pert == "goal" else -1)
        for i in range(len(cf)):
            edges, goal, prefix = _parse_row(cf.clean[i], v)
            edges2, goal2, prefix2 = _parse_row(cf.corrupt[i], v)
            diff = np.flatnonzero((cf.clean[i] != cf.corrupt[i]).numpy()).tolist()
            assert diff == [int(cf.changed_pos[i])] and diff[0] < colon  # one input token
            if pert == "goal":
                assert goal2 != goal and goal2 not in {a for a, _ in edges} and edges2 == edges
            else:
                nodes = {a for a, _ in edges} | {b for _, b in edges}
                assert goal2 == goal and {a for a, _ in edges2} | {b for _, b in edges2} == nodes
                assert max(Counter(a for a, _ in edges2).values()) <= 2 and len({b for _, b in edges2}) == 7
                (old,), (new,) = set(edges) - set(edges2), set(edges2) - set(edges)
                assert old[1] == new[1] and old[1] in plain_path(edges, goal)  # an edge of the path
            a, b = plain_path(edges, goal), plain_path(edges2, goal2)  # plain_path asserts one parent each
            j = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
            assert j >= 1 and int(cf.score_pos[i]) == colon + 2 * j
            assert prefix[: j] == a[: j] == b[: j]  # teacher forced up to the scored position
            got = {int(t): k for k, t in enumerate(v.value_ids)}
            assert (got[int(cf.answer[i])], got[int(cf.cf_answer[i])]) == (a[j], b[j])
            full = ds.splits["test_inferred_iid"].tokens[int(cf.example_index[i])]
            assert int(full[cf.score_pos[i] + 1]) == int(cf.answer[i])  # the clean path's next token
        assert cf.clean.shape[1] == int(max(c.score_pos.max() for c in cfs.values())) + 1


@pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")  # a random model
def test_tracing_scores_each_example_at_its_own_position():
    """trace() on the tree against a reference written here: plain run_with_hooks with one
    hook per (layer, position), the logits read at each example's own score_pos."""
    from grokscope.patching.tracing import make_counterfactuals, trace
    from grokscope.runs.model import build_model

    ds = generate_tree(TreeConfig(n_nodes=6, n_labels=8, n_train=40, n_test=30, ood_depth=4))
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64), len(ds.vocab), ds.n_ctx, 0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(torch.randn(prm.shape, generator=g) * 0.3)
    cfs = make_counterfactuals(ds, "test_inferred_iid", n=10, seed=3)
    res = trace(model, cfs, site="resid", batch_size=17)
    for pert, cf in cfs.items():
        n, width = cf.clean.shape
        assert len(set(cf.score_pos.tolist())) > 1  # the positions really differ per example
        rows = torch.arange(n)
        names = [f"blocks.{layer}.hook_resid_pre" for layer in range(2)] + ["blocks.1.hook_resid_post"]
        with torch.no_grad():
            _, cache = model.run_with_cache(cf.corrupt)
            clean = model(cf.clean)[rows, cf.score_pos]
            corrupt = model(cf.corrupt)[rows, cf.score_pos]
        def ld_of(lg, rows=rows, cf=cf):
            return lg[rows, cf.answer] - lg[rows, cf.cf_answer]
        ref = torch.empty(n, len(names), width)
        for li, name in enumerate(names):
            for pos in range(width):
                def hook(act, hook, name=name, pos=pos, cache=cache):
                    act = act.clone()
                    act[:, pos] = cache[name][:, pos]
                    return act
                with torch.no_grad():
                    ref[:, li, pos] = ld_of(model.run_with_hooks(cf.clean, fwd_hooks=[(name, hook)])[rows, cf.score_pos])
        torch.testing.assert_close(res.ld_patched[pert], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res.ld_clean[pert], ld_of(clean), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res.ld_cf[pert], ld_of(corrupt), atol=1e-5, rtol=1e-5)
        assert float((ld_of(clean) - ld_of(corrupt)).abs().min()) > 1e-4  # an effect at every example
        # patching S[0] at the replaced token is the counterfactual run; at the scored
        # position's future (pos > score_pos) it is nothing
        for i in range(n):
            torch.testing.assert_close(res.ld_patched[pert][i, 0, cf.changed_pos[i]], ld_of(corrupt)[i], atol=1e-5, rtol=1e-5)
            after = res.ld_patched[pert][i, :, int(cf.score_pos[i]) + 1 :]
            torch.testing.assert_close(after, torch.full_like(after, float(ld_of(clean)[i])), atol=1e-5, rtol=1e-5)
        assert torch.equal(res.clean_top1[pert], clean.argmax(-1))


def test_path_layout_and_position_kinds_by_plain_loops():
    from grokscope.tasks.builtin.tree_positions import path_layout, position_kinds

    ds = generate_tree(TreeConfig(n_nodes=8, n_labels=16, n_train=50, n_test=40, ood_depth=5))
    split = ds.splits["test_inferred_iid"]
    lay = path_layout(split, ds.vocab)
    kinds = position_kinds(8)
    assert len(kinds) == 4 * 8 - 2 + 2 * 8 >= ds.n_ctx and kinds[lay.goal_pos] == "goal" and kinds[lay.colon_pos] == "colon"
    got = {int(t): k for k, t in enumerate(ds.vocab.value_ids)}
    for i, (_edges, _goal, path) in enumerate(examples(ds, "test_inferred_iid")):
        row = [plain_text(ds.vocab.tokens[int(t)]) for t in split.tokens[i]]
        assert lay.depth[i] == len(path) - 1 and [got[int(x)] for x in lay.path[i, : len(path)]] == path
        assert (lay.path[i, len(path):] == -1).all() and lay.path_edge[i, 0] == -1
        for t in range(1, len(path)):  # the edge written at path_edge is path[t-1] > path[t]
            e = int(lay.path_edge[i, t])
            assert (row[e], row[e + 1], row[e + 2]) == (str(path[t - 1]), ">", str(path[t]))
            assert [kinds[e + j] for j in range(3)] == ["parent", "arrow", "child"]
        for k in range(len(path)):  # the query position is followed by path[k]
            assert row[lay.query[i, k] + 1] == str(path[k]) and kinds[lay.query[i, k] + 1] == "node"
        assert lay.edge_tokens()[i, 1].tolist() == [lay.path_edge[i, 1] + j for j in range(3)]


def test_attention_probes_point_at_the_right_tokens_and_the_diagnosis_averages_them():
    from grokscope.lens.attention import attention_patterns
    from grokscope.progress.diagnoses import run_diagnosis
    from grokscope.runs.model import build_model
    from grokscope.series.sampling import sample_rows

    ds = generate_tree(TreeConfig(n_nodes=6, n_labels=8, n_train=40, n_test=30, ood_depth=4))
    split, v = ds.splits["test_inferred_iid"], ds.vocab
    rows = sample_rows(len(split), 12, 0)
    probes = {p.name: p for p in get_task("tree").attention_probes(split, v, rows)}
    parsed = examples(ds, "test_inferred_iid")
    text = lambda r, pos: plain_text(v.tokens[int(split.tokens[r, pos])])  # noqa: E731
    own = probes["child -> own edge"]
    for r, q, keys in zip(own.rows, own.query_pos, own.key_pos):
        assert (text(r, keys[0, 0]), text(r, keys[1, 0])) == (text(r, q - 2), ">") and q % 4 == 2
    nxt = probes["path -> next edge, goal"]
    assert len(nxt.rows) == sum(len(parsed[r][2]) - 1 for r in rows)
    for r, q, keys in zip(nxt.rows, nxt.query_pos, nxt.key_pos):
        k = (q - split.target_pos[r]) // 2  # predicts path[k]
        path = parsed[r][2]
        assert [text(r, keys[g, 0]) for g in range(3)] == [str(path[k - 1]), ">", str(path[k])]
        assert text(r, keys[3, 0]) == str(parsed[r][1]) and text(r, keys[4, 0]) == str(path[k - 1])
    hgt = probes["path -> path edge by height"]
    for r, q, keys in zip(hgt.rows, hgt.query_pos, hgt.key_pos):
        k, path = (q - split.target_pos[r]) // 2, parsed[r][2]
        d = len(path) - 1
        assert [text(r, keys[h, 0]) for h in range(d - k + 1)] == [str(path[d - h]) for h in range(d - k + 1)]
        assert (keys[d - k + 1 :] == -1).all()
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64), len(v), ds.n_ctx, 0)
    res = run_diagnosis("attention_probes", model, ds, n=12, seed=0)
    got = {p["name"]: p for p in res["probes"]}
    pat = attention_patterns(model, split.tokens[:, : split.tokens.shape[1]])
    want = np.mean([float(pat[1, 0, r, q, keys[3, 0]]) for r, q, keys in zip(nxt.rows, nxt.query_pos, nxt.key_pos)])
    assert got["path -> next edge, goal"]["mass"][1][0][3] == pytest.approx(want, abs=1e-4)  # goal, L1.H0


def test_lens_targets_run_through_the_logit_lens():
    from grokscope.lens.logit import lens_split, lens_tokens, logit_lens
    from grokscope.runs.model import build_model

    ds = generate_tree(TreeConfig(n_nodes=6, n_labels=8, n_train=40, n_test=20, ood_depth=4))
    split = ds.splits["test_inferred_iid"]
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64), len(ds.vocab), ds.n_ctx, 0)
    targets = get_task("tree").lens_targets(split, ds.vocab, within_class=True)
    tokens = torch.from_numpy(split.tokens[:, : int(split.answer_end.max())])  # teacher-forced answers
    res = logit_lens(model, tokens, targets)
    assert set(res.names) == {t.name for t in targets} and res.ranks["goal@colon"].shape == (3, len(split))
    assert int(res.ranks["next@a0"].max()) <= len(ds.vocab.value_ids) + 1  # within labels and </a>
    width = int(split.target_pos.max() + (split.answer_end - split.target_pos).min())  # the last next@a{k} + 1
    assert np.array_equal(lens_tokens(split, targets), split.tokens[:, :width])  # what lens_split and the series read
    assert lens_split(model, split, ds.vocab, task=get_task("tree")).names == res.names


# --------------------------------------------------------------------------- training


def _tiny_run(n_train: int = 200) -> RunConfig:
    return RunConfig(
        TreeConfig(n_nodes=5, n_labels=8, n_train=n_train, n_test=40, train_probe=40, ood_depth=3),
        ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64),
        TrainConfig(lr=3e-3, warmup_steps=5, batch_size=32, max_steps=30, eval_every=10, eval_size=None,
                    dense_every=10, dense_until=30, log_per_decade=0),
        name="tree-test",
    )


def test_loss_covers_every_path_token():
    from grokscope.training.loop import target_loss

    ds = generate_tree(TreeConfig(n_nodes=5, n_labels=8, n_train=20, n_test=5, ood_depth=3))
    s = ds.splits["train"]
    tok = torch.from_numpy(s.tokens)
    pos, end = torch.from_numpy(s.target_pos), torch.from_numpy(s.answer_end)
    logits = torch.randn(*tok.shape, len(ds.vocab))
    total, count = target_loss(logits, tok, pos, end)
    expect, n = 0.0, 0
    for i in range(len(s)):
        for p in range(int(pos[i]), int(end[i])):  # the path tokens and </a>
            expect += float(torch.nn.functional.cross_entropy(logits[i, p][None], tok[i, p + 1][None]))
            n += 1
    assert int(count) == n == int((s.answer_end - s.target_pos).sum())
    assert float(total) == pytest.approx(expect, rel=1e-5)


def test_tiny_training_runs_and_records_path_metrics(tmp_path):
    from grokscope.runs.run import Run
    from grokscope.training.loop import train_new

    run = train_new(_tiny_run(), tmp_path / "run", quiet=True)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 10, 20, 30]
    assert set(recs[-1]["acc"]) == {"train_inferred", "test_inferred_iid", "test_inferred_ood"}
    assert set(recs[-1]["token_acc"]) == set(recs[-1]["acc"])
    assert recs[-1]["loss"]["train_inferred"] < recs[0]["loss"]["train_inferred"]
    ds = Run.open(tmp_path / "run").dataset()  # the run's files read back
    assert ds.content_hash() == run.data_info["content_hash"]


class _Oracle(torch.nn.Module):
    """Predicts each next answer token of the split's rows, wrong at one path position in
    every third tree (the positions cycle), so whole-path accuracy is 2/3 by construction."""

    def __init__(self, split, d_vocab: int) -> None:
        super().__init__()
        self.rows = {tuple(int(t) for t in r[: p + 1]): (i, r, p) for i, (r, p) in enumerate(zip(split.tokens, split.target_pos))}
        self.d_vocab = d_vocab

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*tok.shape, self.d_vocab)
        for b in range(tok.shape[0]):
            key = next(k for k in self.rows if tuple(int(t) for t in tok[b, : len(k)]) == k)
            i, row, p = self.rows[key]
            for t in range(p, min(tok.shape[1], len(row) - 1)):
                want = int(row[t + 1])
                if i % 3 == 0 and t == p + 2 * (i % 2):  # a wrong label (the root or the next node)
                    want = (want + 1) % 8
                out[b, t, want] = 1.0
        return out


def test_exact_path_accuracy_is_greedy_decoding():
    from grokscope.training.loop import evaluate

    ds = generate_tree(TreeConfig(n_nodes=6, n_labels=8, n_train=30, n_test=30, ood_depth=4))
    s = ds.splits["train"]
    oracle, end_id = _Oracle(s, len(ds.vocab)), ds.vocab["</a>"]
    right = 0
    for row, p, e in zip(s.tokens, s.target_pos, s.answer_end):
        seq = [int(t) for t in row[: p + 1]]
        for _ in range(e - p + 2):  # greedy, until </a> (a little past where it should come)
            seq.append(int(oracle(torch.tensor([seq]))[0, -1].argmax()))
            if seq[-1] == end_id:
                break
        right += seq == [int(t) for t in row[: e + 1]]
    assert right == 20  # 10 of 30 trees have a wrong token
    res = evaluate(oracle, {"x": s})
    assert res["acc"]["x"] == pytest.approx(right / len(s))
    assert res["token_acc"]["x"] == pytest.approx(1 - 10 / float((s.answer_end - s.target_pos).sum()))


def test_preset_is_registered():
    cfg = preset("tree-small")
    assert cfg.task.task == "tree" and cfg.task.n_nodes == 8
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_shipped_tree_run_solves_unseen_trees_by_an_independent_evaluator():
    """benchmarks/tree_eval.py draws fresh trees with its own generator and decodes greedily
    with plain TransformerLens (no grokscope code); the shipped run's last checkpoint."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "tree_eval.py"), str(repo / "checkpoints" / "tree-small"),
                          "--n", "1000"], capture_output=True, text=True, check=True, timeout=300)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["step"] == SHIPPED_LAST_STEP and res["in_train"] == 0
    assert res["acc"] >= 0.9            # the Must show: every fresh tree of the default distribution
    assert res["acc_unseen_id"] >= 0.9  # goals at trained depths; deeper goals are the OOD split


@pytest.mark.slow
def test_report_of_the_shipped_tree_run(tmp_path):
    """`grokscope report` on a tree run: the task has no located hypothesis (the circuit is
    left empty and says so), the lens reads the teacher-forced path, discovery scores at
    score_pos, and the attention probes get their figure."""
    import json
    from pathlib import Path

    from grokscope.report.build import write_report

    repo = Path(__file__).resolve().parents[1]
    rep = write_report(repo / "checkpoints" / "tree-small", tmp_path / "rep", steps=str(SHIPPED_LAST_STEP), n=10,
                       progress=False, cache=False)
    page = rep.html.read_text()
    assert "Attention per head" in page and "Discovered circuit" in page
    summary = json.loads(rep.summary.read_text())
    own = summary["diagnoses"]["attention_probes"]["probes"][0]
    gather = max(m[0] for layer in own["mass"] for m in layer)
    assert own["name"] == "child -> own edge" and gather > 0.9  # one head reads each edge's parent at its child
    assert summary["discovery"]["final_circuit"]["test_inferred_iid"]["size"] > 0
