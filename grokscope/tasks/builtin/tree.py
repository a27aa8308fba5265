"""Path finding in a binary tree (issue #23): one file, one registration.

A random binary tree of ``n_nodes`` nodes is grown from a root, one node at a time,
each new node the child of a uniformly chosen existing node that has fewer than two
children. The nodes carry ``n_nodes`` distinct labels sampled from ``0 .. n_labels-1``;
the goal is a uniformly random leaf; the edges (``parent>child``) are shuffled. The
model reads the edge list and the goal and writes the path from the root to the goal::

    input   12>3,3>7,12>5|7:
    target  12>3,3>7,12>5|7:12>3>7

In the vocabulary (:mod:`grokscope.tasks.vocab`: every token is one ``<...>`` string,
the run's ``vocab.json`` lists them) a label is its value token ``<12>`` and the
separators are the specials ``<->`` (the ``>`` of an edge and of the path), ``<,>``,
``<|>`` and ``<:>``; so the example above is
``<12><-><3><,><3><-><7><,><12><-><5><|><7><:>`` then ``<12><-><3><-><7></a>``
(:func:`plain_text` gives back the short form). Every token after ``<:>`` is an answer
token (the path, its separators and ``</a>``); the loss covers them all and the
trainer's ``acc`` of a tree split is the share of trees whose whole path (and its
``</a>``) is right under teacher forcing, which is exactly when greedy decoding from
``<:>`` writes the right path.

Splits: ``train`` (``n_train`` trees), ``train_inferred`` (a probe of at most
``train_probe`` of them), ``test_inferred_iid`` (``n_test`` trees never trained on, the
same distribution) and ``test_inferred_ood`` (``n_test`` trees whose goal is at depth
``>= ood_depth``). With ``ood_depth`` set, train and test ID hold only goals at depth
``< ood_depth``: the distribution above conditioned on the goal's depth; OOD asks for
paths longer than any trained. Every tree (its edge set) occurs once in all splits.

Counterfactuals: ``goal``, the same tree with the goal replaced by another leaf; and
``rewire``, the same goal with one edge on its path rewired (the child keeps its
subtree and gets another parent with a free slot, not below it: a new path). Both are
scored where the two paths part (``score_pos = target_pos + 2 * cf_index``, on the
teacher-forced path): at ``<:>`` the prediction is the root for every goal of a tree.
Lens targets: the next path token at each answer position, the goal at ``<:>``.

Example:
    >>> from grokscope.tasks.builtin.tree import TreeConfig, generate_tree
    >>> ds = generate_tree(TreeConfig(n_nodes=6, n_labels=8, n_train=50, n_test=10, ood_depth=4))
    >>> len(ds.splits["train"]), len(ds.splits["test_inferred_ood"])
    (50, 10)
    >>> inp, tgt = ds.splits["train"].texts(ds.vocab)[0]
    >>> plain_text(tgt).startswith(plain_text(inp)) and plain_text(inp).endswith(":")
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from grokscope.tasks.base import CounterfactualDraw, LensTarget, Task, pick_per_row, register_task

if TYPE_CHECKING:
    from grokscope.tasks.base import AttentionProbe
from grokscope.tasks.builtin.tree_positions import (  # noqa: F401  (the separators: re-exported)
    ARROW,
    BAR,
    COLON,
    COMMA,
    PLAIN,
    SEPARATORS,
    parse_edges,
    path_from_edges,
    rewire_draw,
    tree_attention_probes,
)
from grokscope.tasks.dataset import Split, TaskDataset
from grokscope.tasks.vocab import END, Vocab

MAX_DRAWS_PER_TREE = 2000
"""Give up when the trees asked for need more draws than this many per tree (a depth too rare)."""



def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class TreeConfig:
    """Path finding in random binary trees. Defaults: 16-node trees, labels 0..15.

    Attributes:
        n_nodes: nodes per tree (>= 3).
        n_labels: label pool (>= n_nodes); each tree uses ``n_nodes`` distinct labels.
        n_train: training trees.
        n_test: trees of each test split (ID and OOD).
        train_probe: cap on the ``train_inferred`` probe (None: every training tree).
        ood_depth: goals at depth >= this are held out (the OOD split); train and test
            ID hold goals at depth < this. None: no depth split (OOD empty). The default
            7 leaves about 3% of 16-node goals out (depth = edges from the root).
        seed: data seed.
    """

    n_nodes: int = 16
    n_labels: int = 16
    n_train: int = 10_000
    n_test: int = 1000
    train_probe: int | None = 1000
    ood_depth: int | None = 7
    seed: int = 0
    task: Literal["tree"] = "tree"

    def __post_init__(self) -> None:
        _check(self.task == "tree", f"task must be 'tree', got {self.task!r}")
        _check(self.n_nodes >= 3, f"n_nodes must be >= 3, got {self.n_nodes}")
        _check(self.n_labels >= self.n_nodes, f"n_labels must be >= n_nodes={self.n_nodes}, got {self.n_labels}")
        _check(self.n_train >= 1, f"n_train must be >= 1, got {self.n_train}")
        _check(self.n_test >= 1, f"n_test must be >= 1, got {self.n_test}")
        _check(self.train_probe is None or self.train_probe >= 1, f"train_probe must be >= 1 or None, got {self.train_probe}")
        _check(self.ood_depth is None or 2 <= self.ood_depth <= self.n_nodes - 1,
               f"ood_depth must be None or in [2, n_nodes - 1 = {self.n_nodes - 1}], got {self.ood_depth}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @property
    def input_len(self) -> int:
        """Input tokens: ``n-1`` edges of 3 tokens, ``n-2`` commas, ``|``, goal, ``:``."""
        return 3 * (self.n_nodes - 1) + (self.n_nodes - 2) + 3


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Tree:
    """One tree with its goal; nodes are numbered in order of creation (0 is the root).

    Attributes:
        parent: ``parent[i]`` of node i (-1 for the root).
        labels: ``labels[i]`` the label of node i.
        goal: the goal node (a leaf).
        edge_order: the child nodes ``1..n-1`` in the order their edges are written.
    """

    parent: tuple[int, ...]
    labels: tuple[int, ...]
    goal: int
    edge_order: tuple[int, ...]

    @property
    def path(self) -> list[int]:
        """Node indices from the root to the goal."""
        out = [self.goal]
        while self.parent[out[-1]] >= 0:
            out.append(self.parent[out[-1]])
        return out[::-1]

    @property
    def depth(self) -> int:
        return len(self.path) - 1

    @property
    def leaves(self) -> list[int]:
        has_child = set(self.parent)
        return [i for i in range(len(self.parent)) if i not in has_child]

    def key(self) -> frozenset[tuple[int, int]]:
        """The tree as a set of labelled edges (goal and edge order left out)."""
        return frozenset((self.labels[self.parent[c]], self.labels[c]) for c in range(1, len(self.parent)))


def draw_tree(rng: np.random.Generator, n_nodes: int, n_labels: int) -> Tree:
    """One tree: grown node by node, labelled, a uniform leaf as goal, edges shuffled.

    Example:
        >>> t = draw_tree(np.random.default_rng(0), 5, 10)
        >>> t.parent[0], len(set(t.labels)), t.goal in t.leaves
        (-1, 5, True)
    """
    parent, n_children = [-1], [0]
    for i in range(1, n_nodes):
        open_nodes = [j for j in range(i) if n_children[j] < 2]
        p = open_nodes[int(rng.integers(len(open_nodes)))]
        parent.append(p)
        n_children[p] += 1
        n_children.append(0)
    labels = rng.choice(n_labels, size=n_nodes, replace=False)
    leaves = [j for j in range(n_nodes) if n_children[j] == 0]
    goal = leaves[int(rng.integers(len(leaves)))]
    order = 1 + rng.permutation(n_nodes - 1)
    return Tree(tuple(parent), tuple(int(x) for x in labels), goal, tuple(int(x) for x in order))


def tree_vocab(n_labels: int) -> Vocab:
    """Labels ``<0>`` .. ``<n_labels-1>`` (ids 0..n_labels-1), the separators, ``</a>``."""
    return Vocab(tuple(f"<{i}>" for i in range(n_labels)) + SEPARATORS + (END,))


def encode_tree(tree: Tree, vocab: Vocab) -> tuple[list[int], list[int]]:
    """(input ids ending in ``<:>``, answer ids: the path with ``<->`` between nodes)."""
    lab = vocab.value_ids
    inp: list[int] = []
    for k, c in enumerate(tree.edge_order):
        if k:
            inp.append(vocab[COMMA])
        inp += [int(lab[tree.labels[tree.parent[c]]]), vocab[ARROW], int(lab[tree.labels[c]])]
    inp += [vocab[BAR], int(lab[tree.labels[tree.goal]]), vocab[COLON]]
    ans: list[int] = []
    for k, node in enumerate(tree.path):
        if k:
            ans.append(vocab[ARROW])
        ans.append(int(lab[tree.labels[node]]))
    return inp, ans


def plain_text(text: str) -> str:
    """The issue's short form of a tree string: ``<12><-><3>...<:>`` -> ``12>3...:``.

    Example:
        >>> plain_text("<12><-><3><|><3><:><12><-><3></a>")
        '12>3|3:12>3'
    """
    from grokscope.tasks.vocab import split_tokens

    return "".join(PLAIN.get(t, t[1:-1]) for t in split_tokens(text))


def _split(name: str, trees: list[Tree], vocab: Vocab) -> Split:
    """Rows ``input, path, </a>``, right-padded with ``</a>``; meta in token ids."""
    enc = [encode_tree(t, vocab) for t in trees]
    p = len(enc[0][0]) if enc else 0
    width = p + max((len(a) for _, a in enc), default=1) + 1
    tokens = np.full((len(trees), width), vocab[END], dtype=np.int64)
    for i, (inp, ans) in enumerate(enc):
        tokens[i, :p] = inp
        tokens[i, p : p + len(ans)] = ans
    lab = vocab.value_ids
    meta = {
        "goal": np.array([lab[t.labels[t.goal]] for t in trees], dtype=np.int64),
        "root": np.array([lab[t.labels[0]] for t in trees], dtype=np.int64),
        "depth": np.array([t.depth for t in trees], dtype=np.int64),
    }
    return Split(name=name, tokens=tokens, target_pos=np.full(len(trees), p - 1, dtype=np.int64),
                 atomic=np.zeros(len(trees), dtype=bool), meta=meta, roles={"goal": p - 2, "colon": p - 1})


def draw_splits(cfg: TreeConfig) -> dict[str, list[Tree]]:
    """The trees of every split, from one seeded stream (same config, same trees).

    Each drawn tree goes, in order of drawing, to OOD if its goal is at depth
    ``>= ood_depth`` (until ``n_test`` are there), else to train (until ``n_train``), then
    to test ID (until ``n_test``); a tree whose edge set was drawn before is skipped.
    """
    rng = np.random.default_rng([cfg.seed, 0x7EE])
    want = {"train": cfg.n_train, "test_inferred_iid": cfg.n_test,
            "test_inferred_ood": cfg.n_test if cfg.ood_depth is not None else 0}
    out: dict[str, list[Tree]] = {k: [] for k in want}
    seen: set[frozenset[tuple[int, int]]] = set()
    budget = MAX_DRAWS_PER_TREE * sum(want.values())
    for _ in range(budget):
        if all(len(out[k]) >= want[k] for k in want):
            break
        t = draw_tree(rng, cfg.n_nodes, cfg.n_labels)
        if cfg.ood_depth is not None and t.depth >= cfg.ood_depth:
            dest = "test_inferred_ood"
        else:
            dest = "train" if len(out["train"]) < want["train"] else "test_inferred_iid"
        if len(out[dest]) >= want[dest]:
            continue
        key = t.key()
        if key in seen:
            continue
        seen.add(key)
        out[dest].append(t)
    short = {k: f"{len(out[k])}/{want[k]}" for k in want if len(out[k]) < want[k]}
    if short:
        raise ValueError(f"could not draw enough distinct trees in {budget:,} draws ({short}); "
                         f"lower n_train/n_test, raise n_labels, or lower ood_depth")
    return out


def generate_tree(cfg: TreeConfig) -> TaskDataset:
    """Generate the tree task from its frozen config (same config, same bytes)."""
    trees = draw_splits(cfg)
    vocab = tree_vocab(cfg.n_labels)
    probe = trees["train"]
    if cfg.train_probe is not None and cfg.train_probe < len(probe):
        rows = np.sort(np.random.default_rng([cfg.seed, 0x7EE, 1]).choice(len(probe), cfg.train_probe, replace=False))
        probe = [probe[i] for i in rows]
    splits = {
        "train": _split("train", trees["train"], vocab),
        "train_inferred": _split("train_inferred", probe, vocab),
        "test_inferred_iid": _split("test_inferred_iid", trees["test_inferred_iid"], vocab),
        "test_inferred_ood": _split("test_inferred_ood", trees["test_inferred_ood"], vocab),
    }
    counts = {k: len(v) for k, v in trees.items()} | {"n_nodes": cfg.n_nodes, "ood_depth": cfg.ood_depth}
    return TaskDataset(task="tree", vocab=vocab, kb=None, splits=splits,  # type: ignore[arg-type]
                       counts=counts, config=dataclasses.asdict(cfg))


# --------------------------------------------------------------------------- the task


class TreeTask(Task):
    """Path finding ``edges|goal:`` -> ``root>...>goal``: answers of several tokens."""

    name = "tree"
    config_cls = TreeConfig
    probe_splits = ("train_inferred", "test_inferred_iid", "test_inferred_ood")
    inferred_roles = ("goal", "colon")
    perturbations = ("goal", "rewire")
    diagnoses = ("attention_probes",)
    hypothesis = None
    """No circuit hypothesis as data yet: the protocol allows none (Brinkmann et al. 2024
    describe a backward chain from the goal, one edge per layer, that the staged form
    cannot hold with a depth that varies per example)."""
    multi_token_answers = True
    """Answers are several tokens ended by ``</a>`` (read by the paper-format loader)."""
    cli_params = {"n_nodes": "--nodes", "n_labels": "--labels", "n_train": "--train-trees",
                  "n_test": "--test-trees", "ood_depth": "--ood-depth"}

    def generate(self, cfg: TreeConfig) -> TaskDataset:
        return generate_tree(cfg)

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        """Rebuild the splits from the files, checking every path against its edge list."""
        if vocab.tokens[-5:] != (*SEPARATORS, END) or vocab.tokens != tree_vocab(len(vocab.value_ids)).tokens:
            raise ValueError(f"{directory / 'vocab.json'}: not a tree vocabulary (<0>..<n-1>, {' '.join(SEPARATORS)}, {END})")
        lab = vocab.value_ids
        splits, keys = {}, {}
        for name, (inputs, answers) in parsed.items():
            trees = []
            for i, (x, y) in enumerate(zip(inputs, answers)):
                parent_of, goal = parse_edges(np.asarray(x), vocab)
                want = path_from_edges(parent_of, goal)
                got = [int(t) for t in y[::2]]
                if got != [int(lab[v]) for v in want] or any(t != vocab[ARROW] for t in y[1::2]):
                    raise ValueError(f"{directory}: {name} item {i}: path {vocab.decode(y)} is not the root-goal "
                                     f"path {'>'.join(map(str, want))} of its edges")
                trees.append(_tree_from_edges(parent_of, goal, x, vocab))
            splits[name] = _split(name, trees, vocab)
            keys[name] = {t.key() for t in trees}
        for other in ("test_inferred_iid", "test_inferred_ood"):
            if other in keys and keys["train"] & keys[other]:
                raise ValueError(f"{directory}: a tree of {other} is also in train.json")
        if "test_inferred_ood" not in splits:
            splits["test_inferred_ood"] = _split("test_inferred_ood", [], vocab)
        counts = {k: len(v) for k, v in splits.items()}
        return TaskDataset(task=self.name, vocab=vocab, kb=None, splits=splits,  # type: ignore[arg-type]
                           counts=counts, config=None)

    def describe(self, dataset: TaskDataset) -> TreeConfig:
        s = dataset.splits
        n_nodes = (s["train"].target_pos[0] + 3) // 4  # inputs are 4 * n_nodes - 2 tokens
        ood = s["test_inferred_ood"].meta["depth"]
        return TreeConfig(n_nodes=int(n_nodes), n_labels=len(dataset.vocab.value_ids), n_train=len(s["train"]),
                          n_test=max(len(s["test_inferred_iid"]), 1), train_probe=len(s["train_inferred"]),
                          ood_depth=int(ood.min()) if len(ood) else None)

    def counterfactuals(
        self, dataset: TaskDataset, split: Split, rows: np.ndarray, perturbation: str,
        rng: np.random.Generator, *, id_only: bool = True,
    ) -> CounterfactualDraw:
        """``goal``: the goal replaced by another leaf of the same tree; ``rewire``: the
        same goal, the parent token of one edge on its path replaced (-1: none valid).

        ``goal``: the paths share their prefix from the root. ``rewire``: the edge
        ``p>c`` (``c`` on the goal's path) becomes ``q>c``, ``q`` a uniformly drawn
        (edge, new parent) pair over the path's edges and the nodes ``q != p`` with fewer
        than two children that are not ``c`` or below it; the tree stays a binary tree
        with the same nodes and goal, and the goal's path changes. In both, ``answer``
        and ``cf_answer`` are the two paths' labels at the first node where they part,
        scored at ``score_pos = target_pos + 2 * cf_index`` (``cf_index`` in ``cf_meta``;
        >= 1, since the root is shared), the prefix before it teacher-forced and equal in
        both. ``cf_meta`` also holds ``cf_goal`` (goal) or ``cf_parent`` and
        ``cf_edge_pos`` (rewire: the new parent's label token and its input position,
        which ``position`` also gives). ``id_only`` has no effect.
        """
        if perturbation not in self.perturbations:
            raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(self.perturbations)}")
        self.check_inferred(split)
        vocab, lab = dataset.vocab, dataset.vocab.value_ids
        n_labels = len(lab)
        rows = np.asarray(rows)
        parents = []
        for r in rows:
            parents.append(parse_edges(split.tokens[r, : split.target_pos[r] + 1], vocab))
        if perturbation == "rewire":

            return rewire_draw(parents, split, rows, lab, rng)
        valid = np.zeros((len(rows), n_labels), dtype=bool)
        for i, (parent_of, goal) in enumerate(parents):
            nodes = set(parent_of) | set(parent_of.values())
            inner = set(parent_of.values())
            for leaf in nodes - inner - {goal}:
                valid[i, leaf] = True
        j = pick_per_row(rng, valid)
        answer = np.zeros(len(rows), dtype=np.int64)
        cf_answer = np.zeros(len(rows), dtype=np.int64)
        index = np.full(len(rows), -1, dtype=np.int64)
        for i, (parent_of, goal) in enumerate(parents):
            if j[i] < 0:
                answer[i] = cf_answer[i] = lab[goal]
                continue
            a, b = path_from_edges(parent_of, goal), path_from_edges(parent_of, int(j[i]))
            k = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])  # where the paths part
            answer[i], cf_answer[i], index[i] = lab[a[k]], lab[b[k]], k
        keep = j >= 0
        return CounterfactualDraw(
            new_token=np.where(keep, lab[np.maximum(j, 0)], -1), answer=answer, cf_answer=cf_answer,
            cf_meta={"cf_goal": lab[j[keep]], "cf_index": index[keep]},
            score_pos=split.target_pos[rows] + 2 * np.maximum(index, 0),
        )

    def attention_probes(self, split: Split, vocab: Vocab, rows: np.ndarray) -> list[AttentionProbe]:
        """:func:`grokscope.tasks.builtin.tree_positions.tree_attention_probes`."""

        return tree_attention_probes(split, vocab, rows)

    def lens_targets(self, split: Split, vocab: Vocab, *, within_class: bool = False) -> list[LensTarget]:
        """``goal@colon`` (the goal at ``<:>``) and ``next@a{k}``: the token after answer
        position ``target_pos + k`` (a path label, ``<->`` or ``</a>``), for every ``k`` at
        which each example still has a path token or its ``</a>`` to predict. Positions
        past ``<:>`` read the teacher-forced answer: give the lens
        ``split.tokens[:, : split.answer_end.max()]``, not ``split.input_ids``."""
        self.check_inferred(split)
        labels_end = np.concatenate([vocab.value_ids, [vocab[END]]])
        allowed = vocab.value_ids if within_class else None
        out = [LensTarget("goal@colon", split.roles["colon"], split.meta["goal"], allowed)]
        n_rows = np.arange(len(split))
        last = int((split.answer_end - split.target_pos).min())  # predicting positions 0..last-1 exist in every row
        for k in range(last):
            pos = split.target_pos + k
            tok = split.tokens[n_rows, pos + 1]
            node = k % 2 == 0  # even offsets predict a label (or </a>), odd ones <->
            allow = (labels_end if node else None) if within_class else None
            out.append(LensTarget(f"next@a{k}", pos, tok, allow))
        return out


def _tree_from_edges(parent_of: dict[int, int], goal: int, input_ids: Any, vocab: Vocab) -> Tree:
    """The :class:`Tree` written in an input row (nodes renumbered root-first by edge order)."""
    children = list(parent_of)
    root = next(p for p in parent_of.values() if p not in parent_of)
    order = [root, *children]
    index = {lab_: i for i, lab_ in enumerate(order)}
    parent = tuple([-1] + [index[parent_of[c]] for c in children])
    return Tree(parent, tuple(order), index[goal], tuple(range(1, len(order))))


register_task(TreeTask())
