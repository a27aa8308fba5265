"""Which reported numbers moved between two summary.json files (e.g. float32 vs float16 weights):
the largest change per field (ids and node coordinates left out) and the discovered circuits.

Usage: python benchmarks/compare_half.py A/summary.json B/summary.json
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any


def numbers(x: Any, y: Any, path: str, out: list[tuple[float, str, Any, Any]]) -> None:
    """Every numeric leaf both documents hold at the same path: (|difference|, path, a, b)."""
    if isinstance(x, dict) and isinstance(y, dict):
        for k in x.keys() & y.keys():
            numbers(x[k], y[k], f"{path}/{k}", out)
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            numbers(u, v, f"{path}[{i}]", out)
    elif isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        out.append((abs(x - y), path, x, y))


def main() -> None:
    a, b = (json.loads(open(f).read()) for f in sys.argv[1:3])
    diffs: list[tuple[float, str, Any, Any]] = []
    numbers(a, b, "", diffs)
    largest: dict[str, tuple[float, str, Any, Any]] = {}
    for d in diffs:
        if re.search(r"/(id|position|layer|head)$", d[1]) or ("/edges[" in d[1] and "final_circuit" in d[1]):
            continue  # node coordinates and the final circuit's edge list (its size and recovered are kept)
        key = re.sub(r"\[\d+\]", "[]", d[1])
        if d[0] >= largest.get(key, (-1.0,))[0]:
            largest[key] = d
    for key, (d, path, x, y) in sorted(largest.items(), key=lambda t: -t[1][0])[:25]:
        print(f"{d:.4g}  {key}   (largest at {path}: {x} -> {y})")
    for split in a.get("discovery", {}).get("records", {}):
        ra, rb = a["discovery"]["records"][split], b["discovery"]["records"][split]
        print(f"{split}: circuit sizes {[r['size'] for r in ra]} -> {[r['size'] for r in rb]}; largest |recovered "
              f"change| {max(abs(x['recovered'] - y['recovered']) for x, y in zip(ra, rb)):.4f}")


if __name__ == "__main__":
    main()
