"""When a run groks: the grokking summary of its evaluation records.

Example:
    >>> summarize_metrics([{"step": 0, "acc": {"train_inferred": 0.1, "test_inferred_iid": 0.0}},
    ...                    {"step": 100, "acc": {"train_inferred": 0.995, "test_inferred_iid": 0.4}},
    ...                    {"step": 200, "acc": {"train_inferred": 1.0, "test_inferred_iid": 0.96}}])["grokking_gap"]
    100
"""

from __future__ import annotations

from typing import Any

TRAIN_SATURATED = 0.99
TEST_GENERALIZED = 0.95
GROKS_IID_AT_SATURATION = 0.6
"""A run groks only if test ID was at most this when train accuracy saturated."""


def summarize_metrics(
    metrics: list[dict[str, Any]],
    train_threshold: float = TRAIN_SATURATED,
    test_threshold: float = TEST_GENERALIZED,
) -> dict[str, Any]:
    """Grokking statistics of one run's evaluation records.

    Returns:
        ``train_saturated_step`` (first step with train_inferred >= train_threshold),
        ``iid_at_saturation`` (test ID accuracy then), ``iid_generalized_step`` (first
        step with test ID >= test_threshold), ``grokking_gap`` (their difference),
        ``groks`` (saturation came first, test ID <= ``GROKS_IID_AT_SATURATION`` (0.6) then, and it later reached the
        threshold), final and best accuracies, ``max_ood``, the final step and wall time,
        and ``collapses`` (evaluations where train accuracy fell by more than 0.3).
    """
    out: dict[str, Any] = {
        "train_saturated_step": None, "iid_at_saturation": None, "iid_generalized_step": None,
        "grokking_gap": None, "groks": False, "collapses": 0,
    }
    if not metrics:
        return out
    prev_train = None
    for m in metrics:
        acc = m.get("acc", {})
        tr, iid = acc.get("train_inferred"), acc.get("test_inferred_iid")
        if tr is not None and out["train_saturated_step"] is None and tr >= train_threshold:
            out["train_saturated_step"] = m["step"]
            out["iid_at_saturation"] = iid
        if iid is not None and out["iid_generalized_step"] is None and iid >= test_threshold:
            out["iid_generalized_step"] = m["step"]
        if tr is not None and prev_train is not None and prev_train - tr > 0.3:
            out["collapses"] += 1
        if tr is not None:
            prev_train = tr
    if out["train_saturated_step"] is not None and out["iid_generalized_step"] is not None:
        out["grokking_gap"] = out["iid_generalized_step"] - out["train_saturated_step"]
        out["groks"] = bool(
            out["grokking_gap"] > 0 and out["iid_at_saturation"] is not None and out["iid_at_saturation"] <= GROKS_IID_AT_SATURATION
        )
    last = metrics[-1]
    out["final_step"] = last["step"]
    out["wall_time"] = last.get("wall_time")
    for k, v in last.get("acc", {}).items():
        out[f"final_{k}"] = v
    oods = [m["acc"]["test_inferred_ood"] for m in metrics if "test_inferred_ood" in m.get("acc", {})]
    out["max_ood"] = max(oods) if oods else None
    return out
