"""The package's shape and its public face: layers import downward only, one public API,
short reprs, errors that name the allowed values, honest warnings on noise."""

from __future__ import annotations

import ast
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import grokscope as gs

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "grokscope"
LAYERS = ["tasks", "runs", "training", "series", "lens", "patching", "discovery", "progress", "plots",
          "report", "cli"]
"""docs/ARCHITECTURE.md's layers, bottom first."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grokscope"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("grokscope"))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_import_runs_down_the_layers():
    """Each module imports only its own layer and the ones below it (no arrow runs back up)."""
    up = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        me = _layer(".".join(rel.parts))
        if me is None:
            continue
        for mod in _imports(path):
            other = _layer(mod)
            if other is not None and LAYERS.index(other) > LAYERS.index(me):
                up.append(f"{rel} -> {mod}")
    assert up == []


def test_no_module_over_500_lines_and_every_package_declares_all():
    long = [str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if len(p.read_text().splitlines()) > 500]
    assert long == []
    import importlib

    for init in PKG.rglob("__init__.py"):
        module = importlib.import_module(".".join(init.parent.relative_to(ROOT).parts))
        assert isinstance(getattr(module, "__all__", None), list) and module.__all__, f"{init} declares no __all__"


def test_dir_lists_every_public_name_and_api_md_documents_them():
    names = set(gs.__all__) - {"__version__"}
    assert names <= set(dir(gs))
    for name in names:
        assert getattr(gs, name) is not None
    api = (ROOT / "docs" / "API.md").read_text()
    missing = [n for n in names if n != "plots" and f"`{n}`" not in api]
    assert missing == []
    assert set(gs.plots.__all__) <= set(dir(gs.plots))
    assert [n for n in gs.plots.__all__ if f"`{n}`" not in api] == []


def test_notebooks_import_only_grokscope_and_its_plots():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        src = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        imports = set(re.findall(r"(?:from|import) (grokscope[\w.]*)", src))
        assert imports <= {"grokscope"}, (nb.name, imports)


def test_old_module_paths_still_import_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="grokscope.lens.logit"):
        from grokscope.analysis.lens import logit_lens  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from grokscope.analysis.series import checkpoint_lens
        from grokscope.config import preset
    assert preset is gs.preset and checkpoint_lens is gs.checkpoint_lens


@pytest.fixture(scope="module")
def shipped():
    run = gs.load_run(ROOT / "checkpoints" / "composition-small")
    return run, run.dataset(), run.load_model()


def test_every_result_repr_is_short_and_has_an_html_table(shipped):
    run, ds, model = shipped
    cfs = gs.make_counterfactuals(ds, "train_inferred", n=20)
    results = [
        run, ds,
        gs.lens_split(model, ds.splits["train_inferred"], ds.vocab, n=20),
        gs.trace(model, cfs),
        gs.discover(model, gs.Corruption.from_counterfactuals(cfs["h"]), measure_circuit_edges=5),
        gs.analyse_series(run, steps=[run.steps()[-1]], n=20, progress=False, cache=False),
    ]
    for r in results:
        text = repr(r)
        assert len(text) <= 300, (type(r).__name__, len(text))
        assert text.startswith(f"<{type(r).__name__} ")
        assert "<table>" in r._repr_html_()


def test_load_model_with_a_missing_step_names_the_steps(shipped):
    run = shipped[0]
    for bad in ("1500", 1500, "abc"):
        with pytest.raises(ValueError, match=r"available steps: 0?.*16750") as e:
            run.load_model(bad)
        assert isinstance(e.value, gs.RunError)


def test_unknown_config_keys_are_refused_with_the_closest_key(tmp_path):
    cfg = gs.preset("composition-tiny").to_dict()
    cfg["train"]["lrr"] = 1e-3
    with pytest.raises(ValueError, match=r"'lrr' \(did you mean 'lr'\?\)"):
        gs.RunConfig.from_dict(cfg)
    with pytest.raises(ValueError, match=r"did you mean train\.weight_decay"):
        gs.preset("composition-tiny").override({"train.weight_decy": "0.1"})
    # a typo in config.json's TransformerLens section is refused, not ignored
    run_dir = tmp_path / "run"
    shutil.copytree(ROOT / "checkpoints" / "modular-small", run_dir, ignore=shutil.ignore_patterns("step_*"))
    doc = json.loads((run_dir / "config.json").read_text())
    doc["model"]["n_layrs"] = doc["model"].pop("n_layers")
    (run_dir / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"'n_layrs' \(did you mean 'n_layers'\?\)"):
        gs.load_run(run_dir)
    doc["model"]["n_layers"] = 3
    del doc["model"]["n_layrs"]
    (run_dir / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"n_layers 3 \(run.model gives 1\)"):
        gs.load_run(run_dir)


def test_discovery_warns_and_marks_noise_when_clean_equals_corrupt(shipped):
    _, ds, model = shipped
    cf = gs.make_counterfactuals(ds, "train_inferred", n=16)["h"]
    same = gs.Corruption(cf.clean, cf.clean.clone(), cf.answer, cf.cf_answer)
    with pytest.warns(gs.errors.NoisyResultWarning, match="gap is 0"):
        d = gs.discover(model, same, measure_circuit_edges=0)
    assert d.reliable is False and d.to_dict()["reliable"] is False
    assert d.circuit.recovered == d.circuit.recovered  # never nan
    # a real corruption has a gap far above the rule's bar: no warning, reliable
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.errors.NoisyResultWarning)
        real = gs.discover(model, gs.Corruption.from_counterfactuals(cf), measure_circuit_edges=0)
    assert real.reliable is True
    # the rule itself, on hand-made metrics: a gap of 1 with spread 10 over 4 examples is noise
    ok, why = gs.discovery.scores.gap_reliable(torch.tensor([11.0, -9.0, 11.0, -9.0]), torch.zeros(4))
    assert not ok and "standard error" in why
    assert gs.discovery.scores.gap_reliable(torch.tensor([5.0, 5.2, 4.8]), torch.zeros(3)) == (True, "")


def test_edges_have_one_name_everywhere(shipped):
    _, ds, model = shipped
    cf = gs.make_counterfactuals(ds, "train_inferred", n=16)["h"]
    d = gs.discover(model, gs.Corruption.from_counterfactuals(cf), measure_circuit_edges=3)
    table = d.edges(5, circuit_only=True)
    doc = d.to_dict()
    for row in table.itertuples():
        writer, reader = d.graph.edge_nodes(row.index)
        assert row.name == f"{writer.name}->{reader.name}@{writer.position}" == doc["edges"][row.index]["name"]
    assert list(table["score"].abs()) == sorted(table["score"].abs(), reverse=True)
    assert d.graph.edge_name(0) == "input->a0.h0<q>@0"
    assert abs(table["share"].sum() - sum(abs(x) for x in table["score"]) /
               float(d.scores.scores[d.circuit.keep].abs().sum())) < 1e-6


def test_circuit_figure_labels_every_node_explains_itself_and_lists_edges(shipped):
    _, ds, model = shipped
    cf = gs.make_counterfactuals(ds, "train_inferred", n=16)["h"]
    d = gs.discover(model, gs.Corruption.from_counterfactuals(cf), measure_circuit_edges=5)
    fig = gs.plots.discovered_graph(d, table=5)
    node_traces = [t for t in fig.data if t.type == "scatter" and t.mode == "markers+text"]
    drawn = {(round(x, 6), round(y, 6)): label for t in node_traces for x, y, label in zip(t.x, t.y, t.text)}
    # every drawn node carries its component's name, in the edges' naming
    doc = d.to_dict()
    names = {n["name"].split("<")[0] for n in doc["nodes"]}
    assert drawn and set(drawn.values()) <= names
    legend = [t.name for t in fig.data if t.type == "scatter" and t.showlegend is not False and t.name]
    assert any("score > 0" in n for n in legend) and any("dotted" in n for n in legend)
    table = next(t for t in fig.data if t.type == "table")
    rows = gs.plots.edge_table(d, 5)
    assert list(table.cells.values[0]) == [r["name"] for r in rows]
    assert [r["name"] for r in rows] == [e.name for e in d.edge_records(5, circuit_only=True)]
    # circuit_only=False draws more edges (the strongest of all) than the circuit alone when the circuit is small
    wide = gs.plots.discovered_graph(d, circuit_only=False, max_edges=d.graph.n_edges, table=0)
    hover = next(t for t in wide.data if t.type == "scatter" and t.mode == "markers" and t.text is not None
                 and any("score" in s for s in t.text))
    assert len(hover.text) == d.graph.n_edges


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file()))
def test_every_shipped_run_loads_with_plain_transformer_lens(name, tmp_path):
    """Every shipped checkpoint (the float16 ones too) loads with TransformerLens + safetensors
    only, and gives grokscope's logits."""
    import subprocess
    import sys

    import numpy as np

    run = gs.load_run(ROOT / "checkpoints" / name)
    step = run.steps()[-1]
    ds = run.dataset()
    split = next(s for s in ds.splits.values() if s.roles and len(s))
    tokens = split.input_ids[:8]
    ours = run.load_model(step)(torch.from_numpy(tokens)).detach()
    np.save(tmp_path / "tokens.npy", tokens)
    script = f"""
import json, sys, numpy as np, torch, safetensors.torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
import transformer_lens.model_bridge.sources  # registers boot_native
cfg = json.load(open(r"{run.path / 'config.json'}"))["model"]
m = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg))
m.load_state_dict(safetensors.torch.load_file(r"{run.checkpoint_path(step) / 'model.safetensors'}"), strict=True)
out = m(torch.from_numpy(np.load(r"{tmp_path / 'tokens.npy'}"))).detach()
torch.save(out, r"{tmp_path / 'out.pt'}")
assert "grokscope" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_tracing_warns_when_clean_equals_counterfactual(shipped):
    import dataclasses

    _, ds, model = shipped
    cfs = gs.make_counterfactuals(ds, "train_inferred", n=16, perturbations=["h"])
    same = {"h": dataclasses.replace(cfs["h"], corrupt=cfs["h"].clean.clone())}
    with pytest.warns(gs.errors.NoisyResultWarning, match="tracing under 'h'"):
        res = gs.trace(model, same)
    assert res.reliable == {"h": False} and res.to_dict(per_example=False)["reliable"] == {"h": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.errors.NoisyResultWarning)
        assert gs.trace(model, cfs).reliable == {"h": True}


def test_usage_errors_are_one_line_like_every_other_error(monkeypatch, capsys):
    import sys

    from grokscope import cli

    for argv, want in [(["train", "--preset", "quickstart", "--out", "/tmp/x", "--max-steps", "abc"], "'--max-steps'"),
                       (["report", "--nope"], "No such option: --nope")]:
        monkeypatch.setattr(sys, "argv", ["grokscope", *argv])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            cli.main()
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and want in err[0], err
        assert "--help" in err[0]
