"""An independent evaluator of a text-composition run: plain TransformerLens + ``tokenizers``.

No grokscope code: the model is booted from ``config.json["model"]`` with TransformerLens and
its weights read with safetensors; each probe item of ``data/test.json`` is encoded with
``tokenizers.Tokenizer.from_file("data/tokenizer.json")``, decoded greedily one token at a
time until ``<eos>`` (at most ``--max-new`` tokens), and scored by exact match of the decoded
answer with the text between ``input_text`` and ``<eos>`` in ``target_text``.

The trainer scores a random subset of ``eval_size`` items of a larger split; ``--match-subsets``
takes the same rows (``numpy.random.default_rng([seed, 2, i]).choice(n, eval_size,
replace=False)``, sorted, ``i`` the split's index among the probe splits), so the numbers are
comparable with ``metrics.jsonl``.

    python benchmarks/text_eval.py RUN [--step S] [--match-subsets]   # prints JSON {split: acc}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PROBES = ("id_atomic", "ood_atomic", "train_inferred", "test_inferred_iid", "test_inferred_ood", "test_new_template")


def load_model(run: Path, step: int):
    import safetensors.torch
    import transformer_lens.model_bridge.sources  # noqa: F401  (registers boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = json.loads((run / "config.json").read_text())["model"]
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg))
    state = safetensors.torch.load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval()
    return model


@torch.no_grad()
def greedy_accuracy(model, tok, items: list[dict], max_new: int = 6, batch: int = 512) -> float:
    """Share of items whose greedy continuation, up to ``<eos>``, is exactly the answer."""
    eos = tok.token_to_id("<eos>")
    right = 0
    by_len: dict[int, list[tuple[list[int], str]]] = {}
    for it in items:
        ids = tok.encode(it["input_text"]).ids
        answer = it["target_text"][len(it["input_text"]):]
        assert answer.endswith("<eos>"), answer
        by_len.setdefault(len(ids), []).append((ids, answer[: -len("<eos>")]))
    for rows in by_len.values():
        for lo in range(0, len(rows), batch):
            chunk = rows[lo : lo + batch]
            x = torch.tensor([r[0] for r in chunk])
            out = torch.empty(len(chunk), 0, dtype=torch.long)
            for _ in range(min(max_new, model.cfg.n_ctx - x.shape[1])):
                nxt = model(torch.cat([x, out], dim=1))[:, -1].argmax(-1, keepdim=True)
                out = torch.cat([out, nxt], dim=1)
                if (out == eos).any(dim=1).all():
                    break
            for (_, answer), gen in zip(chunk, out.tolist()):
                if eos in gen:
                    right += tok.decode(gen[: gen.index(eos)]) == answer
    return right / max(len(items), 1)


def main() -> None:
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    ap.add_argument("--match-subsets", action="store_true")
    a = ap.parse_args()
    steps = sorted(int(p.name.split("_")[1]) for p in (a.run / "checkpoints").iterdir() if p.name.startswith("step_"))
    step = steps[-1] if a.step is None else a.step
    tok = Tokenizer.from_file(str(a.run / "data" / "tokenizer.json"))
    items = json.loads((a.run / "data" / "test.json").read_text())
    run_cfg = json.loads((a.run / "config.json").read_text())["run"]
    eval_size, seed = run_cfg["train"]["eval_size"], run_cfg["seed"]
    model = load_model(a.run, step)
    out = {"step": step}
    for i, name in enumerate(PROBES):
        rows = [x for x in items if x["type"] == name]
        if a.match_subsets and eval_size is not None and len(rows) > eval_size:
            pick = np.sort(np.random.default_rng([seed, 2, i]).choice(len(rows), eval_size, replace=False))
            rows = [rows[j] for j in pick]
        if rows:
            out[name] = greedy_accuracy(model, tok, rows)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
