"""Compare two summary.json files: keys added or removed, values that differ, and the largest
numeric difference. Usage: python benchmarks/compare_summaries.py A/summary.json B/summary.json"""
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
diffs = []
def walk(x, y, path):
    if isinstance(x, dict) and isinstance(y, dict):
        for k in x.keys() - y.keys(): diffs.append(("removed", path + "/" + str(k)))
        for k in y.keys() - x.keys(): diffs.append(("added", path + "/" + str(k)))
        for k in x.keys() & y.keys(): walk(x[k], y[k], path + "/" + str(k))
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y): diffs.append(("length", path, len(x), len(y))); return
        for i, (u, v) in enumerate(zip(x, y)): walk(u, v, f"{path}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
        if abs(x - y) > 1e-9 * max(1, abs(x)): diffs.append(("value", path, x, y))
    elif x != y:
        diffs.append(("value", path, x, y))
import re, collections
kinds = collections.Counter()
walk(a, b, "")
shown = collections.OrderedDict()
for d in diffs:
    key = (d[0], re.sub(r"\[\d+\]", "[]", d[1]))
    kinds[key] += 1
    shown.setdefault(key, d)
for key, n in kinds.items():
    print(n, "x", shown[key][:4] if len(str(shown[key])) < 300 else str(shown[key])[:300])
print("total differences:", len(diffs))
nums = [abs(d[2] - d[3]) for d in diffs if d[0] == "value" and isinstance(d[2], (int, float)) and isinstance(d[3], (int, float))
        and not isinstance(d[2], bool)]
print("largest numeric difference:", max(nums) if nums else 0.0)
