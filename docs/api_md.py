"""Write docs/API.md from grokscope's public names and their docstrings' first paragraph.

Run: python docs/api_md.py  (tests/test_api.py checks every public name is listed).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import grokscope as gs

TITLES = {
    "tasks": "Tasks (`grokscope/tasks/`)", "runs": "Runs (`grokscope/runs/`)",
    "training": "Training (`grokscope/training/`)", "lens": "Lens (`grokscope/lens/`)",
    "patching": "Patching and tracing (`grokscope/patching/`)",
    "discovery": "Circuit discovery (`grokscope/discovery/`)",
    "series": "The checkpoint series (`grokscope/series/`)",
    "progress": "Progress measures and diagnoses (`grokscope/progress/`)",
    "report": "Reports (`grokscope/report/`)",
}


def first_paragraph(obj: object) -> str:
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        return f"constant ({type(obj).__name__})"
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").replace("|", "/").strip()


def main() -> None:
    groups: dict[str, list[str]] = {}
    for name in gs.__all__:
        if name in ("plots", "__version__"):
            continue
        module = gs._EXPORTS[name][0] if name in gs._EXPORTS else "grokscope.tasks"
        groups.setdefault(module.split(".")[1], []).append(name)
    out = ["# The public API", "",
           "`import grokscope as gs`: every name below is `gs.NAME` (loaded on first use; `dir(gs)` lists them).",
           "Figures are `gs.plots.NAME` (below). The layers are described in docs/ARCHITECTURE.md.",
           "Written by `python docs/api_md.py`.", ""]
    for layer, title in TITLES.items():
        out += [f"## {title}", "", "| name | what it is |", "|---|---|"]
        out += [f"| `{n}` | {first_paragraph(getattr(gs, n))} |" for n in groups.get(layer, [])]
        out.append("")
    out += ["## `gs.plots`", "", "| figure | what it shows |", "|---|---|"]
    out += [f"| `{n}` | {first_paragraph(getattr(gs.plots, n))} |" for n in gs.plots.__all__]
    out += ["", "## Result types", "",
            "Every result is plain data with `to_dict()` (JSON-ready) and prints in one line of at most 300",
            "characters (`<Discovery method=eap-ig edges=1395 circuit=119 recovered=0.903 ...>`); in Jupyter it",
            "shows a small table (`_repr_html_`); `.summary()` gives the same numbers as a dict.", "",
            "One name per concept: the circuit located from the task's hypothesis is a `LocatedCircuit`",
            "(`gs.find_circuit`); a discovered edge set with its faithfulness is an `EdgeCircuit`",
            "(`Discovery.circuit`). An edge has one string name, the EAP-IG / MIB one plus its position",
            "(`m0->a2.h1<v>@3`): JSON, `Discovery.edges()`, the figures and the CLI use it.",
            "Deprecated for one release: `grokscope.patching.hypothesis.Circuit` and",
            "`grokscope.discovery.faithfulness.Circuit`, and the 0.1 module paths listed in CHANGELOG.md.", ""]
    Path(__file__).with_name("API.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
