"""Edge-level circuit discovery against independent references.

* the graph's nodes and edges are TransformerLens's (``Node`` hook names,
  ``enumerate_edges`` without the logits readers away from the prediction);
* EAP writer scores equal TransformerLens 4.3's ``attribution_patch(...,
  EdgeAttributionConfig(granularity="node"))`` (1e-4);
* batched exact edge patching equals a naive loop, one edge per forward pass, written
  here with plain ``run_with_hooks`` (a query/key/value edge goes through the model's
  own ``ln1`` and projection: the patched residual runs once, its head's value is
  copied into the clean run);
* every edge patched is the corrupt run, none the clean run, the full graph recovers 1;
* a hand-built model whose circuit is known: discovery finds those two edges and
  nothing else.
"""

from __future__ import annotations

import pytest
import torch

from grokscope.discovery.batched import patch_edge_sets
from grokscope.discovery.faithfulness import faithfulness_curve, recovered, select
from grokscope.discovery.graph import ComponentGraph, GraphNode, prune
from grokscope.discovery.scores import Corruption, prepare, score_edges, spearman
from grokscope.runs.config import ModelConfig
from grokscope.runs.model import build_model

N, POS, VOCAB = 6, 4, 20


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_range=0.3)
    model = build_model(cfg, d_vocab=VOCAB, n_ctx=POS, seed=0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (N, POS), generator=g)
    corrupt = clean.clone()
    corrupt[:, 1] = (clean[:, 1] + 1 + torch.randint(0, VOCAB - 1, (N,), generator=g)) % VOCAB
    answer, cf_answer = torch.randint(0, VOCAB, (2, N), generator=g)
    corruption = Corruption(clean, corrupt, answer, cf_answer)
    return model, corruption, prepare(model, corruption)


def _metric(logits, answer, cf_answer):
    return logits[..., answer] - logits[..., cf_answer]


def test_nodes_and_edges_are_transformer_lens_ones(tiny):
    from transformer_lens.tools.analysis.attribution_patching import GradientCache, enumerate_edges

    model, corruption, acts = tiny
    g = acts.graph
    H = g.n_heads
    fake = {"hook_embed": torch.zeros(1, POS, 1)}
    for layer in range(g.n_layers):
        for name in ("attn.hook_z", "attn.hook_result", "attn.hook_q_input", "attn.hook_k_input", "attn.hook_v_input"):
            fake[f"blocks.{layer}.{name}"] = torch.zeros(1, POS, H, 1)
        for name in ("hook_mlp_out", "hook_mlp_in", "hook_resid_post"):
            fake[f"blocks.{layer}.{name}"] = torch.zeros(1, POS, 1)
    tl = enumerate_edges(model, GradientCache(fake, {}, torch.tensor(0.0)))
    tl = {(w, r) for w, r in tl if not (r.kind == "logits" and r.position != g.read_pos)}
    ours = {(w.to_tl(), r.to_tl()) for w, r in g.edges_as_nodes()}
    assert ours == tl
    for w, r in g.edges_as_nodes()[:: 37]:
        assert w.hook_name == w.to_tl().hook_name and r.hook_name == r.to_tl().hook_name
        assert g.find_edge(w, r) == g.edges_as_nodes().index((w, r))


def test_eap_writer_scores_equal_transformer_lens_node_attribution(tiny):
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    model, c, acts = tiny
    sc = score_edges(model, c, "eap", acts=acts)
    ws = sc.writer_scores()
    ref: dict = {}
    for i in range(N):
        res = attribution_patch(
            model, c.clean[i : i + 1], c.corrupt[i : i + 1],
            lambda logits, i=i: _metric(logits[0, -1], c.answer[i], c.cf_answer[i]),
            EdgeAttributionConfig(granularity="node"),
        )
        for node, v in res.node_scores.items():
            ref[node] = ref.get(node, 0.0) + v / N
    g = acts.graph
    assert len(ref) == g.n_pos * g.n_writers
    biggest = max(abs(v) for v in ref.values())
    assert biggest > 0.1  # the comparison is not between zeros
    for node, v in ref.items():
        w = 0 if node.kind == "embed" else (
            g.head_writer(node.layer, node.head) if node.kind == "attn_head_out" else g.mlp_writer(node.layer))
        assert ws[node.position, w].item() == pytest.approx(v, abs=1e-4)


def _writer_values(model, g, tokens):
    names = ["hook_embed"] + [f"blocks.{layer}.{n}" for layer in range(g.n_layers) for n in ("attn.hook_z", "hook_mlp_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return cache


def _writer_value(model, cache, node: GraphNode):
    if node.kind == "embed":
        return cache["hook_embed"][:, node.position]
    if node.kind == "mlp_out":
        return cache[f"blocks.{node.layer}.hook_mlp_out"][:, node.position]
    z = cache[f"blocks.{node.layer}.attn.hook_z"][:, node.position, node.head]
    return z @ model.blocks[node.layer].attn.W_O[node.head]


def _naive_patch(model, c, g, writer: GraphNode, reader: GraphNode):
    """One edge patched, all examples, plain run_with_hooks (metric per example)."""
    clean_cache, corrupt_cache = _writer_values(model, g, c.clean), _writer_values(model, g, c.corrupt)
    delta = _writer_value(model, corrupt_cache, writer) - _writer_value(model, clean_cache, writer)
    p = reader.position

    def add(t, hook):
        t = t.clone()
        t[:, p] += delta
        return t

    with torch.no_grad():
        if reader.kind == "logits":
            logits = model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{g.n_layers - 1}.hook_resid_post", add)])
        elif reader.kind == "mlp_in":
            logits = model.run_with_hooks(c.clean, fwd_hooks=[(f"blocks.{reader.layer}.ln2.hook_in", add)])
        else:  # the whole attention input shifted, run once; keep only this head's q/k/v
            which = {"q_input": "hook_q", "k_input": "hook_k", "v_input": "hook_v"}[reader.kind]
            name = f"blocks.{reader.layer}.attn.{which}"
            store = {}
            model.run_with_hooks(
                c.clean,
                fwd_hooks=[(f"blocks.{reader.layer}.ln1.hook_in", add), (name, lambda t, hook: store.update(v=t.clone()))],
            )

            def put(t, hook):
                t = t.clone()
                t[:, p, reader.head] = store["v"][:, p, reader.head]
                return t

            logits = model.run_with_hooks(c.clean, fwd_hooks=[(name, put)])
    last = logits[:, -1]
    return last.gather(1, c.answer[:, None])[:, 0] - last.gather(1, c.cf_answer[:, None])[:, 0]


def test_exact_edge_patching_equals_a_naive_loop(tiny):
    model, c, acts = tiny
    g = acts.graph
    sc = score_edges(model, c, "exact", acts=acts)
    pick = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:30].tolist()
    # every reader kind at least once, and edges out of the changed position
    by_kind: dict = {}
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        if w.position in (1, g.read_pos):
            by_kind.setdefault((r.kind, w.kind), e)
    pick += list(by_kind.values())
    assert {g.edge_nodes(e)[1].kind for e in pick} == {"q_input", "k_input", "v_input", "mlp_in", "logits"}
    nonzero = 0
    for e in pick:
        w, r = g.edge_nodes(e)
        naive = (acts.clean_metric - _naive_patch(model, c, g, w, r)).mean()
        assert float(sc.scores[e]) == pytest.approx(float(naive), abs=2e-4), (w.label, r.label)
        nonzero += abs(float(naive)) > 1e-3
    assert nonzero >= 10


def test_all_edges_patched_is_the_corrupt_run_none_the_clean_run(tiny):
    model, c, acts = tiny
    with torch.no_grad():
        lc, lx = model(c.clean)[:, -1], model(c.corrupt)[:, -1]
    m_clean = _metric(lc, c.answer, c.cf_answer).diagonal()
    m_corrupt = _metric(lx, c.answer, c.cf_answer).diagonal()
    assert (m_clean - m_corrupt).abs().mean() > 0.1
    g = acts.graph
    full, empty = torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges, dtype=torch.bool)
    ends = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, torch.stack([full, empty]), acts.metric)
    assert torch.allclose(ends[0], m_clean, atol=1e-5)  # none patched: the clean run
    assert torch.allclose(ends[1], m_corrupt, atol=1e-4)  # all patched: the corrupt run
    assert torch.allclose(acts.clean_metric, m_clean, atol=1e-5)
    assert torch.allclose(acts.corrupt_metric, m_corrupt, atol=1e-4)
    rec, _ = recovered(model, acts, torch.stack([full, empty]))
    assert rec.tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    # the kept-set and the patched-set code paths agree on a half circuit
    half = torch.zeros(g.n_edges, dtype=torch.bool)
    half[::2] = True
    a = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, half[None], acts.metric)
    b = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, half[None], acts.metric, batch_size=2)
    assert torch.allclose(a, b, atol=1e-5)


def test_eap_ig_tracks_exact_better_than_eap_and_curve_is_bounded(tiny):
    model, c, acts = tiny
    exact = score_edges(model, c, "exact", acts=acts)
    eap = score_edges(model, c, "eap", acts=acts)
    ig = score_edges(model, c, "eap-ig", ig_steps=10, acts=acts)
    assert spearman(exact.scores, ig.scores) > spearman(exact.scores, eap.scores)
    curve = faithfulness_curve(model, acts, ig)
    assert curve.recovered[0] == pytest.approx(0.0, abs=1e-5) and curve.recovered[-1] == pytest.approx(1.0, abs=1e-5)
    assert 0 < curve.cpr <= 1.0 + 1e-6 and curve.cmd >= 0


def _hand_built():
    """Two layers; only layer 1 head 0 does anything: it averages LN(embedding) values
    (zero queries and keys) into dimensions the unembedding reads. Its circuit under a
    change of the token at position 0: embed@0 -> v_input(1.0)@0, and
    attn_head_out(1.0)@2 -> logits@2."""
    model = build_model(ModelConfig(n_layers=2, d_model=8, n_heads=2, d_mlp=8), d_vocab=6, n_ctx=3, seed=0)
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd["embed.weight"] = torch.randn(6, 8, generator=g)
    sd["unembed.weight"] = torch.randn(6, 8, generator=g)
    for name in ("blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"):
        sd[f"{name}.weight"] = torch.ones(8)
    for j in range(4):
        sd["blocks.1.attn.v.weight"][j, j] = 1.0  # head 0's values: residual dims 0..3
        sd["blocks.1.attn.o.weight"][4 + j, j] = 3.0  # written into dims 4..7
    model.load_state_dict(sd)
    model.eval()
    clean = torch.tensor([[0, 1, 2], [3, 4, 5], [1, 2, 3], [4, 0, 1]])
    corrupt = clean.clone()
    corrupt[:, 0] = torch.tensor([5, 0, 4, 2])
    return model, Corruption(clean, corrupt, torch.tensor([0, 1, 2, 3]), torch.tensor([5, 4, 3, 2]))


@pytest.mark.parametrize("method", ["eap", "eap-ig", "exact"])
def test_hand_built_model_circuit_is_found_and_nothing_else(method):
    from grokscope.discovery.circuit import discover

    model, c = _hand_built()
    g = ComponentGraph.of(model, 3)
    known = {
        g.find_edge(GraphNode("embed", 0), GraphNode("v_input", 0, 1, 0)),
        g.find_edge(GraphNode("attn_head_out", 2, 1, 0), GraphNode("logits", 2, 1)),
    }
    d = discover(model, c, method)
    assert set(d.circuit_edges()) == known
    assert d.circuit.recovered == pytest.approx(1.0, abs=1e-4)
    others = torch.ones(g.n_edges, dtype=torch.bool)
    others[list(known)] = False
    assert d.scores.scores[others].abs().max() < 1e-5
    assert d.scores.scores[list(known)].abs().min() > 0.05
    assert d.clean_metric != pytest.approx(d.corrupt_metric, abs=0.1)
    # exact effects of the circuit edges are measured and are what exact patching gives
    assert all(d.exact[e] == d.exact[e] for e in known)
    js = d.to_dict()
    assert len(js["edges"]) == g.n_edges and js["circuit"]["size"] == 2
    src = {js["nodes"][js["edges"][e]["src"]]["hook_name"] for e in known}
    assert src == {"hook_embed", "blocks.1.attn.hook_z"}


def test_prune_keeps_only_connected_edges():
    model, _ = _hand_built()
    g = ComponentGraph.of(model, 3)
    into_v = g.find_edge(GraphNode("embed", 0), GraphNode("v_input", 0, 1, 0))
    out = g.find_edge(GraphNode("attn_head_out", 2, 1, 0), GraphNode("logits", 2, 1))
    dangling = g.find_edge(GraphNode("embed", 1), GraphNode("q_input", 1, 0, 1))
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[[into_v, out, dangling]] = True
    assert torch.nonzero(prune(g, keep)).flatten().tolist() == sorted([into_v, out])
    keep[into_v] = False  # the head at position 2 is then fed by nothing
    assert not prune(g, keep).any()
    # a value read at position 2 cannot feed the head's write at position 0
    chain = [
        g.find_edge(GraphNode("attn_head_out", 0, 0, 0), GraphNode("v_input", 0, 1, 0)),
        g.find_edge(GraphNode("attn_head_out", 2, 1, 0), GraphNode("logits", 2, 1)),
    ]
    late = g.find_edge(GraphNode("embed", 2), GraphNode("v_input", 2, 0, 0))
    early = g.find_edge(GraphNode("embed", 0), GraphNode("v_input", 0, 0, 0))
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[chain + [late]] = True
    assert not prune(g, keep).any()
    keep[late], keep[early] = False, True
    assert torch.nonzero(prune(g, keep)).flatten().tolist() == sorted(chain + [early])


def test_greedy_grows_from_the_logits():
    model, c = _hand_built()
    acts = prepare(model, c)
    sc = score_edges(model, c, "exact", acts=acts)
    keep = select(sc, 2, "greedy")
    assert int(keep.sum()) == 2
    assert float(recovered(model, acts, keep)[0][0]) == pytest.approx(1.0, abs=1e-4)


def test_mean_ablation_and_logprob_metric(tiny):
    model, c, _ = tiny
    mean = Corruption(c.clean, None, c.answer, c.cf_answer, ablation="mean")
    acts = prepare(model, mean, "logprob")
    g = acts.graph
    rec, _ = recovered(model, acts, torch.stack([torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges, dtype=torch.bool)]))
    assert rec.tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    with torch.no_grad():
        lp = model(c.clean)[:, -1].log_softmax(-1).gather(1, c.answer[:, None])[:, 0]
    assert torch.allclose(acts.clean_metric, lp, atol=1e-5)
    exact = score_edges(model, mean, "exact", metric="logprob", acts=acts)
    ig = score_edges(model, mean, "eap-ig", metric="logprob", acts=acts)
    assert spearman(exact.scores, ig.scores) > 0.3


MICRO = {
    "model.n_layers": "2", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
    "train.batch_size": "32", "train.max_steps": "40", "train.eval_every": "10", "train.dense_every": "20",
    "train.dense_until": "20", "train.log_per_decade": "1", "train.warmup_steps": "5", "train.eval_size": "50",
    "task.n_entities": "30", "task.n_relations": "6", "task.out_degree": "4", "task.phi": "3", "task.ood_fraction": "0.2",
}


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    import sys

    from grokscope import cli

    monkeypatch.setattr(sys, "argv", ["grokscope", *args])
    monkeypatch.delenv("GROKSCOPE_DEBUG", raising=False)
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_discover_json_can_be_recomputed(tmp_path, monkeypatch, capsys):
    import json

    from grokscope.runs.presets import preset
    from grokscope.training.loop import train_new

    run = train_new(preset("composition-tiny").override(MICRO), tmp_path / "run", quiet=True)
    out = tmp_path / "d.json"
    code, text, err = _cli(monkeypatch, capsys, "discover", str(run.path), "--examples", "12", "--json", str(out))
    assert code == 0, err
    assert "circuit:" in text and "blocks." in text
    doc = json.loads(out.read_text())
    for key in ("step", "method", "metric", "examples", "nodes", "edges", "circuit", "curve"):
        assert key in doc, key
    assert doc["step"] == run.steps()[-1] and doc["method"] == "eap-ig" and doc["metric"] == "logit_diff"
    assert set(doc["examples"]) >= {"clean", "corrupt", "answer", "cf_answer"}
    node = doc["nodes"][5]
    assert set(node) >= {"kind", "layer", "head", "position", "hook_name", "score"}
    # a writer's score is the sum of its outgoing edges' scores
    for nd in doc["nodes"]:
        if nd["kind"] in ("embed", "attn_head_out", "mlp_out"):
            out_sum = sum(e["score"] for e in doc["edges"] if e["src"] == nd["id"])
            assert nd["score"] == pytest.approx(out_sum, abs=1e-4)
    in_circuit = [i for i, e in enumerate(doc["edges"]) if e["in_circuit"]]
    assert sorted(doc["circuit"]["edges"]) == in_circuit and doc["circuit"]["size"] == len(in_circuit)
    assert doc["circuit"]["recovered"] >= 0.9
    code, _, err = _cli(monkeypatch, capsys, "discover", str(run.path), "--method", "acdc")
    assert code == 2 and "--method" in err and "eap-ig" in err and len(err.strip().splitlines()) == 1


def test_cli_discover_compare_matches_the_two_circuits(tmp_path, monkeypatch, capsys):
    """``--compare`` reports the overlap of the circuits each run's own ``--json`` holds."""
    import json
    import re

    from grokscope.runs.presets import preset
    from grokscope.training.loop import train_new

    cfg = preset("composition-tiny").override(MICRO)
    a = train_new(cfg, tmp_path / "a", quiet=True)
    b = train_new(cfg.override({"seed": "1"}), tmp_path / "b", quiet=True)
    docs = []
    for run in (a, b):
        code, _, err = _cli(monkeypatch, capsys, "discover", str(run.path), "--examples", "12", "--json", str(tmp_path / "d.json"))
        assert code == 0, err
        docs.append(set(json.loads((tmp_path / "d.json").read_text())["circuit"]["edges"]))
    code, text, err = _cli(monkeypatch, capsys, "discover", str(a.path), "--examples", "12", "--compare", str(b.path))
    assert code == 0, err
    m = re.search(r"Jaccard ([0-9.]+); (\d+) edges in both, (\d+) only in the first, (\d+) only in the second", text)
    assert m, text
    sa, sb = docs
    assert float(m[1]) == pytest.approx(len(sa & sb) / len(sa | sb), abs=0.0051)  # printed to 2 decimals
    assert [int(m[i]) for i in (2, 3, 4)] == [len(sa & sb), len(sa - sb), len(sb - sa)]
    assert sa != sb  # two seeds: the comparison is not trivially the identity
    code, text, err = _cli(monkeypatch, capsys, "discover", str(a.path), "--examples", "12", "--compare", str(a.path))
    assert code == 0 and "Jaccard 1.00" in text and "0 only in the first, 0 only in the second" in text
    wide = train_new(cfg.override({"model.n_heads": "4"}), tmp_path / "wide", quiet=True)
    code, _, err = _cli(monkeypatch, capsys, "discover", str(a.path), "--examples", "12", "--compare", str(wide.path))
    assert code == 2 and "same shape" in err
