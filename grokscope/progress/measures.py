"""The circuit's measures over a run's checkpoints, read from the task's hypothesis.

:func:`circuit_measures` turns a :class:`~grokscope.series.records.SeriesResult` into
time series at one reference layer ``b`` (the last checkpoint's resolve layer of the
hypothesis' entry stages, else ``L // 2``): for every stage of the task's circuit
hypothesis the lens MRR of its content at ``S[b, role]`` and the causal strength there
under its perturbation; the answer's MRR at the output; and the circuit's share of the
prediction (the hypothesis' ``share`` pairs at ``S[L-1]``). No task is named here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from grokscope.series.records import register_series_measure
from grokscope.tasks.base import get_task

if TYPE_CHECKING:
    from grokscope.series.records import SeriesResult


@register_series_measure
def circuit_measures(series: SeriesResult) -> dict[str, Any]:
    """Time series of the circuit's measures at a fixed reference layer.

    Composition: MRR of the bridge at ``S[b, r1]`` and of ``r2`` at ``S[b, r2]``, the
    strength of ``S[b, r1]`` under ``h'`` (the link that grows during grokking) and of
    ``S[b, r2]`` under ``r2'``, the MRR of ``t`` at ``S[L, r2]``. Comparison: MRR of
    ``v1``/``v2``/the labels at ``S[b, e1|e2|attr]`` and their strengths. Both: the
    circuit share (``S[L-1]`` of the entity position(s) under their perturbation).

    Returns:
        ``{"reference_layer", "hook_name", "measures": {label: [value per step]},
        "resolve_layers": {target: [layer or None per step]}, "weight_norm": [...]}``.
    """
    task = get_task(series.task).for_roles(series.position_roles)
    hyp = task.hypothesis
    cks = series.checkpoints
    L = series.n_layers
    roles = {r: i for i, r in enumerate(series.position_roles)}
    m: dict[str, list[float]] = {}
    names = sorted({k for c in cks for k in c.circuit["layers"]})
    out: dict[str, Any] = {
        "resolve_layers": {k: [c.circuit["layers"].get(k) for c in cks] for k in names},
        "weight_norm": [c.weight_norm for c in cks],
    }
    if hyp is None or not cks:
        b = max(1, L // 2)
        return {"reference_layer": b, "hook_name": series.hook_names[b], "measures": m, **out}
    share_roles = {r for _, r in hyp.share}
    last = cks[-1].circuit["layers"]
    cand = [last.get(st.target) for st in hyp.stages if st.role in share_roles]
    cand = [c for c in cand if c is not None and 0 < c < L]
    b = max(cand) if cand else max(1, L // 2)

    def mrr_at(c: Any, target: str, layer: int) -> float:
        parts = hyp.derived.get(target, (target,))
        return float(np.mean([c.lens[x][layer] for x in parts]))

    def decodable(target: str) -> bool:
        parts = hyp.derived.get(target, (target,))
        return all(x in series.lens_targets and x not in series.lens_undecodable for x in parts)

    for st in hyp.stages:
        # a target this model cannot decode (an untied unembedding's never-answer tokens)
        # keeps its causal strength but no MRR
        if decodable(st.target):
            m[f"MRR {st.content} @ S[{b},{st.role}]"] = [mrr_at(c, st.target, b) for c in cks]
        if decodable(f"{st.target}/rel"):
            m[f"MRR {st.content} among relations @ S[{b},{st.role}]"] = [mrr_at(c, f"{st.target}/rel", b) for c in cks]
        if st.perturbation in series.perturbations and st.role in roles:
            m[f"strength {st.perturbation}' @ S[{b},{st.role}]"] = [
                float(c.strength[st.perturbation][b][roles[st.role]]) for c in cks
            ]
    if hyp.output_target in series.lens_targets:
        m[f"MRR {hyp.output_target.split('@')[0]} @ S[{L},{series.position_roles[-1]}]"] = [
            float(c.lens[hyp.output_target][L]) for c in cks
        ]
    # Share of the prediction the generalizing circuit explains: how often copying the
    # top intermediate state of the entity position(s) from a counterfactual run changes
    # the prediction. A memorizing model reads the answer off the input tokens: ~0 here.
    share = hyp.share
    if L >= 2 and share and all(p in series.perturbations and r in roles for p, r in share):
        m[f"circuit share (S[{L - 1},{'+'.join(r for _, r in share)}])"] = [
            float(np.mean([c.strength[p][L - 1][roles[r]] for p, r in share])) for c in cks
        ]
    return {"reference_layer": b, "hook_name": series.hook_names[b], "measures": m, **out}
