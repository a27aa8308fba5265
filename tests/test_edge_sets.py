"""Circuits measured many at a time (grokscope.discovery.edge_sets) against independent references.

* nothing patched is the clean run and everything patched the corrupt run, with plain
  forward passes as the reference;
* a circuit that keeps every edge but one is that one edge patched alone: the naive
  one-edge loop of test_discovery (plain ``run_with_hooks``);
* many random circuits in one call, split across forward passes at any row, equal the
  (row, edge)-pair engine (``batched.patch_edge_sets``), circuit by circuit.
"""

from __future__ import annotations

import pytest
import torch

from grokscope.discovery import batched
from grokscope.discovery.edge_sets import patch_edge_sets, patched_masks
from tests.test_discovery import _metric, _naive_patch, tiny  # noqa: F401  (fixture)


def test_ends_are_the_clean_and_the_corrupt_run(tiny):  # noqa: F811
    model, c, acts = tiny
    g = acts.graph
    with torch.no_grad():
        m_clean = _metric(model(c.clean)[:, -1], c.answer, c.cf_answer).diagonal()
        m_corrupt = _metric(model(c.corrupt)[:, -1], c.answer, c.cf_answer).diagonal()
    full, empty = torch.ones(g.n_edges, dtype=torch.bool), torch.zeros(g.n_edges, dtype=torch.bool)
    ends = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, torch.stack([full, empty]), acts.metric)
    assert (m_clean - m_corrupt).abs().mean() > 0.1
    assert torch.allclose(ends[0], m_clean, atol=1e-5)
    assert torch.allclose(ends[1], m_corrupt, atol=1e-4)


def test_all_but_one_edge_kept_is_that_edge_patched_alone(tiny):  # noqa: F811
    model, c, acts = tiny
    g = acts.graph
    picks = {}
    for e in range(g.n_edges):
        w, r = g.edge_nodes(e)
        if w.position in (1, g.read_pos):
            picks.setdefault(r.kind, e)
    keep = torch.ones(len(picks), g.n_edges, dtype=torch.bool)
    for i, e in enumerate(picks.values()):
        keep[i, e] = False
    got = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, keep, acts.metric)
    moved = 0
    for i, e in enumerate(picks.values()):
        w, r = g.edge_nodes(e)
        naive = _naive_patch(model, c, g, w, r)
        assert torch.allclose(got[i], naive, atol=2e-4), (w.label, r.label)
        moved += float((naive - acts.clean_metric).abs().max()) > 1e-3
    assert set(picks) == {"q_input", "k_input", "v_input", "mlp_in", "logits"}
    assert moved >= 3


@pytest.mark.parametrize("batch_size", [None, 5])
def test_random_circuits_equal_the_pair_engine(tiny, batch_size):  # noqa: F811
    model, c, acts = tiny
    g = acts.graph
    gen = torch.Generator().manual_seed(3)
    keep = torch.rand(7, g.n_edges, generator=gen) < torch.tensor([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])[:, None]
    got = patch_edge_sets(model, g, c.clean, acts.corrupt_writers, keep, acts.metric, batch_size=batch_size)
    ref = batched.patch_edge_sets(model, g, c.clean, acts.corrupt_writers, keep, acts.metric)
    assert torch.allclose(got, ref, atol=1e-4)
    assert float((ref[0] - ref[-1]).abs().max()) > 0.1  # the circuits really differ


def test_masks_mark_exactly_the_patched_edges(tiny):  # noqa: F811
    _, _, acts = tiny
    g = acts.graph
    keep = torch.zeros(1, g.n_edges, dtype=torch.bool)
    keep[0, :10] = True
    m = patched_masks(g, keep)
    p, r, w = g.edge_index[:10].unbind(1)
    assert int(m.sum()) == g.n_edges - 10
    assert float(m[0, p, r, w].sum()) == 0.0
