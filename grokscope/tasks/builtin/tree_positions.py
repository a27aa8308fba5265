"""How a tree example is written and where its parts sit: the separators, reading the edges
and the path back from a row, the rewire counterfactual, and the places to read a model
(issue #23).

:func:`rewire_draw` draws the ``rewire`` counterfactual (one edge of the goal's path
rewired) and the position where the two paths part.
:func:`position_kinds` names every position of a row, :func:`path_layout` gives, per
example, the path, the input position of each path edge and the position that predicts
each path node, and :func:`tree_attention_probes` turns them into the places the tree
task's ``attention_probes`` diagnosis reads (Brinkmann et al.'s claims as places to look).

Example:
    >>> from grokscope.tasks.builtin.tree import TreeConfig, generate_tree
    >>> ds = generate_tree(TreeConfig(n_nodes=5, n_labels=8, n_train=5, n_test=5, ood_depth=3))
    >>> lay = path_layout(ds.splits["train"], ds.vocab)
    >>> bool((lay.query[:, 0] == lay.colon_pos).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grokscope.tasks.base import AttentionProbe, CounterfactualDraw, get_task, pick_per_row
from grokscope.tasks.dataset import Split
from grokscope.tasks.vocab import END, Vocab, register_special_tokens

ARROW, COMMA, BAR, COLON = "<->", "<,>", "<|>", "<:>"
"""The separators: ``>`` (edge and path), ``,`` (between edges), ``|`` (before the goal), ``:``."""
SEPARATORS: tuple[str, ...] = (ARROW, COMMA, BAR, COLON)
PLAIN = {ARROW: ">", COMMA: ",", BAR: "|", COLON: ":", END: ""}

register_special_tokens(*SEPARATORS)

EDGE_ROLES: tuple[str, ...] = ("parent", "arrow", "child", "comma")
"""The four input positions of an edge ``a>b,`` (edge ``k`` starts at ``4k``)."""



def parse_edges(input_ids: np.ndarray, vocab: Vocab) -> tuple[dict[int, int], int]:
    """(child label -> parent label, goal label) read back from one input row."""
    lab_of = {int(t): i for i, t in enumerate(vocab.value_ids)}
    ids = [int(x) for x in input_ids]
    bar = ids.index(vocab[BAR])
    parent_of = {}
    for k in range(0, bar, 4):
        a, arrow, b = ids[k : k + 3]
        if arrow != vocab[ARROW] or a not in lab_of or b not in lab_of:
            raise ValueError(f"malformed edge at input position {k}: {vocab.decode(ids[k : k + 3])}")
        parent_of[lab_of[b]] = lab_of[a]
    return parent_of, lab_of[ids[bar + 1]]


def path_from_edges(parent_of: dict[int, int], goal: int) -> list[int]:
    """Labels from the root to ``goal``, following ``parent_of``."""
    out = [goal]
    while out[-1] in parent_of:
        out.append(parent_of[out[-1]])
        if len(out) > len(parent_of) + 1:
            raise ValueError("the edges hold a cycle")
    return out[::-1]


def position_kinds(n_nodes: int) -> list[str]:
    """The kind of every position of the longest possible row (a path through every
    node): ``parent`` / ``arrow`` / ``child`` / ``comma`` of an edge, ``bar``, ``goal``,
    ``colon``, then ``node`` and ``arrow`` along the path, ``end`` (its last ``</a>``).

    Example:
        >>> position_kinds(3)[:8]
        ['parent', 'arrow', 'child', 'comma', 'parent', 'arrow', 'child', 'bar']
        >>> position_kinds(3)[8:]
        ['goal', 'colon', 'node', 'arrow', 'node', 'arrow', 'node', 'end']
    """
    n_in = 4 * n_nodes - 2
    edges = [EDGE_ROLES[k % 4] for k in range(n_in - 3)]
    return edges + ["bar", "goal", "colon"] + ["node", "arrow"] * (n_nodes - 1) + ["node", "end"]


@dataclass(frozen=True)
class PathLayout:
    """Where the parts of each example's tree and path sit (numpy, one row per example).

    Attributes:
        depth: ``[example]`` edges from the root to the goal.
        path: ``[example, t]`` label token ids of the path, root first (-1 past the goal).
        path_edge: ``[example, t]`` input position of the edge whose child is ``path[t]``
            (its parent token; the child is at ``+2``), -1 for the root and past the goal.
        query: ``[example, k]`` the position that predicts ``path[k]`` (``target_pos +
            2k``; ``k = 0`` is ``<:>``), -1 past the goal.
        goal_pos, colon_pos: the goal token's and ``<:>``'s positions.
    """

    depth: np.ndarray
    path: np.ndarray
    path_edge: np.ndarray
    query: np.ndarray
    goal_pos: int
    colon_pos: int

    def edge_tokens(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``[example, t, 3]`` positions of the parent, ``>`` and child of each path edge (-1: none)."""
        e = self.path_edge if rows is None else self.path_edge[rows]
        out = e[..., None] + np.arange(3)
        return np.where(e[..., None] >= 0, out, -1)


def path_layout(split: Split, vocab: Vocab, rows: np.ndarray | None = None) -> PathLayout:
    """The :class:`PathLayout` of ``rows`` of a tree split (default every row).

    Example:
        >>> from grokscope.tasks.builtin.tree import TreeConfig, generate_tree
        >>> ds = generate_tree(TreeConfig(n_nodes=5, n_labels=8, n_train=5, n_test=5, ood_depth=3))
        >>> lay = path_layout(ds.splits["train"], ds.vocab)
        >>> bool((lay.path_edge[:, 0] == -1).all())
        True
    """
    get_task("tree").check_inferred(split)
    rows = np.arange(len(split)) if rows is None else np.asarray(rows)
    lab = vocab.value_ids
    n_nodes = (int(split.target_pos[0]) + 3) // 4
    depth = np.zeros(len(rows), dtype=np.int64)
    path = np.full((len(rows), n_nodes), -1, dtype=np.int64)
    path_edge = np.full((len(rows), n_nodes), -1, dtype=np.int64)
    query = np.full((len(rows), n_nodes), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        p = int(split.target_pos[r])
        parent_of, goal = parse_edges(split.tokens[r, : p + 1], vocab)
        slot = {c: k for k, c in enumerate(parent_of)}
        labels = path_from_edges(parent_of, goal)
        depth[i] = len(labels) - 1
        path[i, : len(labels)] = lab[labels]
        path_edge[i, 1 : len(labels)] = [4 * slot[c] for c in labels[1:]]
        query[i, : len(labels)] = p + 2 * np.arange(len(labels))
    return PathLayout(depth, path, path_edge, query, int(split.roles["goal"]), int(split.roles["colon"]))


def tree_attention_probes(split: Split, vocab: Vocab, rows: np.ndarray) -> list[AttentionProbe]:
    """The tree's attention probes (Brinkmann et al.'s claims as places to look).

    - ``child -> own edge``: from every edge's child token onto its own parent and ``>``
      (edge information gathered at the child), the child itself, and the other edges;
    - ``path -> next edge, goal``: from each path position (``k >= 1``) onto the parent,
      ``>`` and child of the edge whose child it predicts, the goal token, and the
      current node (the token before it);
    - ``path -> path edge by height``: from each path position ``k`` with ``k < depth``
      onto the child token of the path edge whose child is ``h`` levels above the goal
      (``h = 0``: the goal's own edge), for ``h`` with ``depth - h >= k`` (a deduction
      head reads the edge whose child is the current node of a backward chain).
    """
    lay = path_layout(split, vocab, rows)
    rows = np.asarray(rows)
    n_edges = (lay.colon_pos - 1) // 4
    n_nodes = n_edges + 1
    edge_starts = 4 * np.arange(n_edges)
    # child -> own edge
    r1 = np.repeat(rows, n_edges)
    q1 = np.tile(edge_starts + 2, len(rows))
    others = np.array([[x + 2 for x in edge_starts if x != e] for e in edge_starts])  # other edges' child tokens
    k1 = np.full((len(r1), 4, max(others.shape[1], 1)), -1)
    k1[:, 0, 0] = q1 - 2
    k1[:, 1, 0] = q1 - 1
    k1[:, 2, 0] = q1
    k1[:, 3, : others.shape[1]] = np.tile(others, (len(rows), 1))
    probes = [AttentionProbe("child -> own edge", r1, q1, k1, ("own parent", "own >", "the child itself", "other edges' children"))]
    # path -> next edge, goal, current node
    r2, q2, k2 = [], [], []
    for i, r in enumerate(rows):
        for k in range(1, int(lay.depth[i]) + 1):
            e = int(lay.path_edge[i, k])
            r2.append(r)
            q2.append(int(lay.query[i, k]))
            k2.append([[e], [e + 1], [e + 2], [lay.goal_pos], [int(lay.query[i, k]) - 1]])
    probes.append(AttentionProbe("path -> next edge, goal", np.array(r2), np.array(q2), np.array(k2).reshape(len(r2), 5, 1),
                                 ("next edge: parent", "next edge: >", "next edge: child", "goal", "current node")))
    # path -> path edge by height above the goal
    r3, q3, k3 = [], [], []
    for i, r in enumerate(rows):
        d = int(lay.depth[i])
        for k in range(1, d):
            keys = np.full(n_nodes - 1, -1)
            for h in range(d - k + 1):
                keys[h] = lay.path_edge[i, d - h] + 2
            r3.append(r)
            q3.append(int(lay.query[i, k]))
            k3.append(keys)
    groups = tuple("goal's edge" if h == 0 else f"{h} above" for h in range(n_nodes - 1))
    probes.append(AttentionProbe("path -> path edge by height", np.array(r3, dtype=np.int64), np.array(q3, dtype=np.int64),
                                 np.array(k3, dtype=np.int64).reshape(len(r3), n_nodes - 1, 1), groups))
    return probes


# --------------------------------------------------------------------------- the rewire counterfactual


def _parting(a: list[int], b: list[int]) -> int:
    """The first index where two root-first paths differ (they share the root)."""
    return next(k for k in range(min(len(a), len(b))) if a[k] != b[k])


def rewire_draw(parents: list[tuple[dict[int, int], int]], split: Split, rows: np.ndarray, lab: np.ndarray,
            rng: np.random.Generator) -> CounterfactualDraw:
    """The ``rewire`` counterfactual (see ``TreeTask.counterfactuals``), vectorized in its
    draw: one random key per (edge slot, new parent label) cell, the arg-max per row."""
    n_edges = max((len(p) for p, _ in parents), default=0)
    n_labels = len(lab)
    valid = np.zeros((len(rows), n_edges * n_labels), dtype=bool)
    for i, (parent_of, goal) in enumerate(parents):
        path = path_from_edges(parent_of, goal)
        kids: dict[int, int] = {}
        for par in parent_of.values():
            kids[par] = kids.get(par, 0) + 1
        nodes = set(parent_of) | set(parent_of.values())
        slot = {c: k for k, c in enumerate(parent_of)}  # child label -> its edge's index in the input
        for c in path[1:]:
            below = {c}
            for node in nodes:  # nodes whose chain to the root passes through c
                x = node
                while x in parent_of and x not in below:
                    x = parent_of[x]
                if x in below:
                    below.add(node)
            for q in nodes - below - {parent_of[c]}:
                if kids.get(q, 0) < 2:
                    valid[i, slot[c] * n_labels + q] = True
    pick = pick_per_row(rng, valid)
    new_token = np.full(len(rows), -1, dtype=np.int64)
    position = np.zeros(len(rows), dtype=np.int64)
    answer = np.zeros(len(rows), dtype=np.int64)
    cf_answer = np.zeros(len(rows), dtype=np.int64)
    index = np.zeros(len(rows), dtype=np.int64)
    for i, (parent_of, goal) in enumerate(parents):
        if pick[i] < 0:
            answer[i] = cf_answer[i] = lab[goal]
            continue
        k, q = divmod(int(pick[i]), n_labels)
        c = list(parent_of)[k]
        a = path_from_edges(parent_of, goal)
        b = path_from_edges({**parent_of, c: q}, goal)
        j = _parting(a, b)
        new_token[i], position[i] = lab[q], 4 * k  # edge k is written at 4k: parent, >, child, ","
        answer[i], cf_answer[i], index[i] = lab[a[j]], lab[b[j]], j
    keep = new_token >= 0
    return CounterfactualDraw(
        new_token=new_token, answer=answer, cf_answer=cf_answer,
        cf_meta={"cf_parent": new_token[keep], "cf_edge_pos": position[keep], "cf_index": index[keep]},
        score_pos=split.target_pos[rows] + 2 * index, position=position,
    )
