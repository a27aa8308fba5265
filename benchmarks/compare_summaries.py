"""Compare two summary.json files: keys added or removed, values that differ, and the largest
numeric difference.

Usage: python benchmarks/compare_summaries.py A/summary.json B/summary.json
"""

from __future__ import annotations

import collections
import json
import re
import sys
from typing import Any


def differences(a: Any, b: Any, path: str = "") -> list[tuple[Any, ...]]:
    """Every difference between two JSON documents: ``(kind, path, ...)``; floats to 1e-9 relative."""
    out: list[tuple[Any, ...]] = []
    if isinstance(a, dict) and isinstance(b, dict):
        out += [("removed", f"{path}/{k}") for k in a.keys() - b.keys()]
        out += [("added", f"{path}/{k}") for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += differences(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [("length", path, len(a), len(b))]
        for i, (u, v) in enumerate(zip(a, b)):
            out += differences(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        if abs(a - b) > 1e-9 * max(1.0, abs(a)):
            out.append(("value", path, a, b))
    elif a != b:
        out.append(("value", path, a, b))
    return out


def main() -> None:
    a, b = (json.loads(open(f).read()) for f in sys.argv[1:3])
    diffs = differences(a, b)
    kinds: collections.Counter[tuple[str, str]] = collections.Counter()
    first: dict[tuple[str, str], tuple[Any, ...]] = {}
    for d in diffs:
        key = (d[0], re.sub(r"\[\d+\]", "[]", d[1]))
        kinds[key] += 1
        first.setdefault(key, d)
    for key, n in kinds.items():
        print(n, "x", str(first[key][:4])[:300])
    print("total differences:", len(diffs))
    nums = [abs(d[2] - d[3]) for d in diffs if d[0] == "value" and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in d[2:4])]
    print("largest numeric difference:", max(nums) if nums else 0.0)


if __name__ == "__main__":
    main()
