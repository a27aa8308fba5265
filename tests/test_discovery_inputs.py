"""``discover(model, clean, corrupt, answer=..., ...)`` on a researcher's prompts, checked against
references that never pad: each prompt run alone through the plain HF model or with plain
``run_with_hooks``, scored at its own last token.

* strings of different lengths are right-padded and each scored at its own last real token;
* ``positions="sum"``: an edge's exact score is the edge patched at every position, prompt by
  prompt (mean ablation: the mean over the prompts that reach each position);
* a callable metric that looks up its own labels by example index gives the built-in scores
  while the batch is chunked;
* mean / zero ablation need no counterfactual answer.
"""

from __future__ import annotations

import pytest
import torch
from hf_tiny import bridge, hf_model, prompts, save

from grokscope.discovery.circuit import discover
from grokscope.discovery.inputs import PromptError, encode
from grokscope.discovery.scores import exact_summed, prepare, score_edges

N = 6
pytestmark = pytest.mark.filterwarnings("ignore::grokscope.errors.NoisyResultWarning")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    path = save("gpt2", tmp_path_factory.mktemp("hf"))
    return bridge(path), hf_model("gpt2")


def _ids(model, words):
    return [int(model.to_tokens(w, prepend_bos=False)[0, 0]) for w in words]


def test_strings_are_right_padded_and_scored_at_their_own_last_token(gpt2):
    model, hf = gpt2
    clean, corrupt, ans, cf = prompts(N, 0)
    c = encode(model, clean, corrupt, answer=ans, cf_answer=cf)
    lengths = [len(p.split()) + 1 for p in clean]  # + BOS
    assert len(set(lengths)) > 2 and c.score_pos.tolist() == [n - 1 for n in lengths]
    assert c.attention_mask.sum(1).tolist() == lengths
    acts = prepare(model, c)
    a, b = _ids(model, ans), _ids(model, cf)
    for i in range(N):
        for prompt, got in ((clean[i], acts.clean_metric[i]), (corrupt[i], acts.corrupt_metric[i])):
            with torch.no_grad():
                last = hf(model.to_tokens(prompt)).logits[0, -1]  # the plain HF model, no padding
            assert float(got) == pytest.approx(float(last[a[i]] - last[b[i]]), abs=1e-4)
    assert (acts.clean_metric - acts.corrupt_metric).abs().mean() > 0.1


def _one_prompt_patch(model, tokens, deltas, node, answer, cf_answer):
    """Plain run_with_hooks on one unpadded prompt: the writer's delta added at every position of
    the reader (query/key/value: the shifted input run once, that head's value copied in)."""
    L = model.cfg.n_layers

    def add(t, hook):
        return t + deltas[None]

    with torch.no_grad():
        if node.kind == "logits":
            logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{L - 1}.hook_resid_post", add)])
        elif node.kind == "mlp_in":
            logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{node.layer}.ln2.hook_in", add)])
        else:
            name = f"blocks.{node.layer}.attn.{node.kind[0]}.hook_out"
            store = {}
            model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{node.layer}.ln1.hook_in", add),
                                                   (name, lambda t, hook: store.update(v=t.clone()))])

            def put(t, hook):
                t = t.clone()
                t[:, :, node.head] = store["v"][:, :, node.head]
                return t

            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, put)])
    last = logits[0, -1]
    return float(last[answer] - last[cf_answer])


def _writer_value(model, cache, node):
    if node.kind == "embed":
        return cache["hook_embed"][0]
    if node.kind == "mlp_out":
        return cache[f"blocks.{node.layer}.hook_mlp_out"][0]
    return cache[f"blocks.{node.layer}.attn.hook_z"][0, :, node.head] @ model.blocks[node.layer].attn.W_O[node.head]


@pytest.mark.parametrize("ablation", ["counterfactual", "mean"])
def test_summed_exact_scores_equal_each_prompt_patched_alone(gpt2, ablation):
    model, _ = gpt2
    clean, corrupt, ans, cf = prompts(N, 1)
    c = encode(model, clean, corrupt if ablation == "counterfactual" else None, answer=ans, cf_answer=cf,
               ablation=ablation)
    acts = prepare(model, c, positions="sum")
    g = acts.scored_graph
    pick = {}
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        pick.setdefault((w.kind, r.kind), e)
    ids = sorted(pick.values())
    ours = exact_summed(model, acts, ids)
    toks = [model.to_tokens(p) for p in clean]
    caches = []
    for t in toks:
        with torch.no_grad():
            caches.append(model.run_with_cache(t)[1])
    a, b = _ids(model, ans), _ids(model, cf)
    n_nonzero = 0
    for j, e in enumerate(ids):
        w, r = g.edge_nodes(e)
        vals = [_writer_value(model, ca, w) for ca in caches]
        if ablation == "counterfactual":
            with torch.no_grad():
                xc = [model.run_with_cache(model.to_tokens(p))[1] for p in corrupt]
            repl = [_writer_value(model, ca, w) for ca in xc]
        else:  # the mean over the prompts that reach each position, from the unpadded runs
            P = max(len(v) for v in vals)
            tot, cnt = torch.zeros(P, vals[0].shape[-1]), torch.zeros(P, 1)
            for v in vals:
                tot[: len(v)] += v
                cnt[: len(v)] += 1
            mean = tot / cnt
            repl = [mean[: len(v)] for v in vals]
        effects = []
        for i in range(N):
            clean_m = _one_prompt_patch(model, toks[i], torch.zeros_like(vals[i]), r, a[i], b[i])
            patched = _one_prompt_patch(model, toks[i], repl[i] - vals[i], r, a[i], b[i])
            effects.append(clean_m - patched)
        ref = sum(effects) / N
        assert float(ours[j]) == pytest.approx(ref, abs=2e-4), (g.edge_name(e), ablation)
        n_nonzero += abs(ref) > 1e-3
    assert n_nonzero >= len(ids) // 2


def test_eap_summed_is_the_per_position_sum(gpt2):
    model, _ = gpt2
    clean, corrupt, ans, cf = prompts(N, 2)
    c = encode(model, clean, corrupt, answer=ans, cf_answer=cf)
    per = score_edges(model, c, "eap", acts=prepare(model, c))
    summed = score_edges(model, c, "eap", acts=prepare(model, c, positions="sum"))
    ref = torch.zeros(summed.graph.n_edges).index_add_(0, per.graph.position_map(), per.scores)
    assert torch.allclose(summed.scores, ref, atol=1e-6) and ref.abs().max() > 0.01
    assert summed.graph.summed and "@" not in summed.graph.edge_name(0)


def test_callable_metric_with_its_own_labels_equals_the_built_in_one(gpt2):
    model, _ = gpt2
    clean, corrupt, ans, cf = prompts(N, 3)
    a, b = torch.tensor(_ids(model, ans)), torch.tensor(_ids(model, cf))
    seen = []

    def my_metric(logits, example):
        seen.extend(example.tolist())
        return logits[torch.arange(len(example)), a[example]] - logits[torch.arange(len(example)), b[example]]

    mine = discover(model, clean, corrupt, metric=my_metric, method="eap-ig", batch_size=2, top=10)
    built = discover(model, clean, corrupt, answer=ans, cf_answer=cf, method="eap-ig", top=10)
    assert mine.metric == "my_metric" and built.metric == "logit_diff"
    assert set(seen) == set(range(N)) and max(len(seen), 0) > N  # chunked: many calls, each with its rows
    assert torch.allclose(mine.scores.scores, built.scores.scores, atol=1e-5)
    assert mine.circuit.recovered == pytest.approx(built.circuit.recovered, abs=1e-5)
    with pytest.raises(ValueError, match=r"shape \[batch\]"):
        discover(model, clean, corrupt, metric=lambda logits, ex: logits, method="eap")


def test_mean_and_zero_ablation_need_no_counterfactual_answer(gpt2):
    model, hf = gpt2
    clean, _, ans, _ = prompts(N, 4)
    d = discover(model, clean, answer=ans, method="eap", top=20)
    assert d.metric == "logprob" and d.corruption.ablation == "mean" and d.corruption.cf_answer is None
    a = _ids(model, ans)
    for i in range(N):
        with torch.no_grad():
            lp = hf(model.to_tokens(clean[i])).logits[0, -1].log_softmax(-1)[a[i]]
        assert float(prepare(model, d.corruption, "logprob").clean_metric[i]) == pytest.approx(float(lp), abs=1e-4)
    z = discover(model, clean, answer=ans, ablation="zero", method="eap", top=20)
    assert z.corruption.ablation == "zero" and z.clean_metric != pytest.approx(z.corrupt_metric, abs=1e-3)
    assert 0.0 <= d.circuit.recovered and len(d.to_dict()["edges"]) == d.graph.n_edges


def test_prompt_errors_name_the_problem(gpt2):
    model, _ = gpt2
    with pytest.raises(PromptError, match=r"answer\[0\] = 'w1 w2' is 2 tokens"):
        encode(model, ["w1 w2"], ["w1 w3"], answer=["w1 w2"], cf_answer=["w3"])
    with pytest.raises(PromptError, match="prompt 0: clean 'w1 w2' is 3 tokens, corrupt 'w1' 2"):
        encode(model, ["w1 w2"], ["w1"], answer=["w1"], cf_answer=["w3"])
    with pytest.raises(ValueError, match="right padding"):
        encode(model, torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="logit_diff metric needs the counterfactual answers"):
        discover(model, ["w1 w2"], answer=["w1"], metric="logit_diff")
