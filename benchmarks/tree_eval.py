"""Independent evaluator of a tree-task run (issue #23): no grokscope import.

Draws fresh trees from the issue's distribution with its own code (grown from a root,
each new node the child of a uniform node with fewer than two children; ``n_nodes``
distinct labels out of ``n_labels``; a uniform leaf as goal; edges shuffled), encodes
them with the run's ``data/vocab.json`` (label k is ``<k>``; ``>`` ``,`` ``|`` ``:`` are
``<->`` ``<,>`` ``<|>`` ``<:>``), loads a checkpoint with plain TransformerLens +
safetensors, decodes greedily from ``:`` until ``</a>`` and prints the exact-path
accuracy: overall, for goals shallower than the run's ``ood_depth`` (the trained
depths) and deeper, and on the fresh trees that are not in the run's train.json (or train.json.gz).

Usage::

    python benchmarks/tree_eval.py runs/tree-n3k --n 2000 --seed 7 [--step 4000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

import torch

SEP = {">": "<->", ",": "<,>", "|": "<|>", ":": "<:>"}
END = "</a>"


def draw(rng: random.Random, n_nodes: int, n_labels: int) -> tuple[list[tuple[int, int]], int, list[int]]:
    """(edges as (parent label, child label) in written order, goal label, path labels)."""
    parent, kids = [None], [0]
    for node in range(1, n_nodes):
        p = rng.choice([v for v in range(node) if kids[v] < 2])
        parent.append(p)
        kids[p] += 1
        kids.append(0)
    labels = rng.sample(range(n_labels), n_nodes)
    goal = rng.choice([v for v in range(n_nodes) if kids[v] == 0])
    edges = [(labels[parent[v]], labels[v]) for v in range(1, n_nodes)]
    rng.shuffle(edges)
    path = [goal]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return edges, labels[goal], [labels[v] for v in reversed(path)]


def encode(edges: list[tuple[int, int]], goal: int, index: dict[str, int]) -> list[int]:
    toks: list[str] = []
    for k, (a, b) in enumerate(edges):
        toks += ([SEP[","]] if k else []) + [f"<{a}>", SEP[">"], f"<{b}>"]
    toks += [SEP["|"], f"<{goal}>", SEP[":"]]
    return [index[t] for t in toks]


def answer(path: list[int], index: dict[str, int]) -> list[int]:
    toks: list[str] = []
    for k, v in enumerate(path):
        toks += ([SEP[">"]] if k else []) + [f"<{v}>"]
    return [index[t] for t in toks + [END]]


def train_keys(run: Path) -> set[frozenset[tuple[int, int]]]:
    """Edge sets of the run's training trees, read from train.json's strings (or from
    train.json.gz, the same file gzip-compressed, as a shipped run stores it)."""
    plain, packed = run / "data" / "train.json", run / "data" / "train.json.gz"
    text = plain.read_text() if plain.is_file() else gzip.decompress(packed.read_bytes()).decode()
    keys = set()
    for item in json.loads(text):
        toks = re.findall(r"<[^<>]+>", item["input_text"])
        toks = toks[: toks.index(SEP["|"])]
        keys.add(frozenset((int(toks[i][1:-1]), int(toks[i + 2][1:-1])) for i in range(0, len(toks), 4)))
    return keys


def load_model(run: Path, step: int | None):
    import safetensors.torch
    import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    steps = sorted(int(p.name[5:]) for p in (run / "checkpoints").iterdir() if (p / "model.safetensors").is_file())
    step = steps[-1] if step is None else step
    cfg = json.loads((run / "config.json").read_text())["model"]
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg))
    model.load_state_dict(safetensors.torch.load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors")),
                          strict=True)
    model.eval()
    return model, step, cfg["n_ctx"]


@torch.no_grad()
def greedy(model, inputs: torch.Tensor, max_new: int, end_id: int, batch: int = 500) -> list[list[int]]:
    """Greedy continuations (up to and including the first ``</a>``) of equal-length inputs."""
    out = []
    for lo in range(0, len(inputs), batch):
        seq = inputs[lo : lo + batch]
        for _ in range(max_new):
            nxt = model(seq)[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
        for row in seq[:, inputs.shape[1] :].tolist():
            out.append(row[: row.index(end_id) + 1] if end_id in row else row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=2000, help="fresh trees to draw")
    ap.add_argument("--seed", type=int, default=20231, help="seed of this script's own generator")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    task = json.loads((args.run / "config.json").read_text())["run"]["task"]
    assert task["task"] == "tree", f"{args.run} is a {task['task']} run, not a tree run"
    vocab = json.loads((args.run / "data" / "vocab.json").read_text())
    index = {t: i for i, t in enumerate(vocab)}
    model, step, n_ctx = load_model(args.run, args.step)
    seen = train_keys(args.run)

    rng = random.Random(args.seed)
    trees = [draw(rng, task["n_nodes"], task["n_labels"]) for _ in range(args.n)]
    inputs = torch.tensor([encode(e, g, index) for e, g, _ in trees])
    max_new = min(2 * task["n_nodes"], n_ctx - inputs.shape[1])
    got = greedy(model, inputs, max_new, index[END])
    right = [g == answer(p, index) for g, (_, _, p) in zip(got, trees)]
    ood = task.get("ood_depth")
    deep = [ood is not None and len(p) - 1 >= ood for _, _, p in trees]
    unseen = [frozenset(e) not in seen for e, _, _ in trees]
    assert "grokscope" not in sys.modules

    def acc(mask: list[bool]) -> str:
        n = sum(mask)
        return f"{sum(r for r, m in zip(right, mask) if m) / n:.4f} (n={n})" if n else "n/a (n=0)"

    print(f"run {args.run}  step {step}  trees: {task['n_nodes']} nodes, labels 0..{task['n_labels'] - 1}, "
          f"{args.n} fresh (seed {args.seed})")
    print(f"exact-path accuracy, greedy from ':'      {acc([True] * len(right))}")
    print(f"  not in train.json                      {acc(unseen)}")
    print(f"  goal depth <  {ood} (trained depths)      {acc([u and not d for u, d in zip(unseen, deep)])}")
    print(f"  goal depth >= {ood} (never trained, OOD)  {acc([u and d for u, d in zip(unseen, deep)])}")
    depths = sorted({len(p) - 1 for _, _, p in trees})
    print("  by goal depth (unseen trees):          " + ", ".join(
        f"{d}: {acc([u and len(p) - 1 == d for u, (_, _, p) in zip(unseen, trees)]).split()[0]}" for d in depths))
    print(json.dumps({"step": step, "n": args.n, "acc": sum(right) / len(right),
                      "acc_unseen_id": sum(r for r, u, d in zip(right, unseen, deep) if u and not d)
                      / max(1, sum(u and not d for u, d in zip(unseen, deep))),
                      "acc_ood": sum(r for r, u, d in zip(right, unseen, deep) if u and d)
                      / max(1, sum(u and d for u, d in zip(unseen, deep))),
                      "in_train": len(right) - sum(unseen)}))


if __name__ == "__main__":
    main()
