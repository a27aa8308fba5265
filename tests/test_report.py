"""Tests for grokscope.report and the report/lens/trace/circuit commands: both files are
written, summary.json is strict JSON with the promised keys, report.html embeds
plotly.js exactly once and loads nothing from the network, and (slow) a headless
Chromium renders every figure without a JavaScript error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokscope.report import REPORT_FILE, SUMMARY_FILE, write_report
from grokscope.runs.presets import preset
from grokscope.runs.run import Run

N = 20
MICRO = {
    "model.n_layers": "3", "model.d_model": "32", "model.n_heads": "2", "model.d_mlp": "64",
    "train.batch_size": "32", "train.max_steps": "40", "train.eval_every": "10", "train.dense_every": "20",
    "train.dense_until": "20", "train.log_per_decade": "1", "train.warmup_steps": "5", "train.eval_size": "50",
}
TASKS = {
    "composition": {"task.n_entities": "30", "task.n_relations": "6", "task.out_degree": "4", "task.phi": "3",
                    "task.ood_fraction": "0.2"},
    "comparison": {"task.n_entities": "20", "task.n_attributes": "3", "task.n_values": "6"},
}
# figures per report: curves, lens, tracing, circuit, early circuit, two sliders, measures (+ OOD),
# discovered circuit (one graph per split with counterfactuals, faithfulness, formation)
N_FIGURES = {"composition": 14, "comparison": 14}  # comparison: OOD by value distance; both: the grokking forecast


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    from grokscope.training.loop import train_new

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report-runs")
    return {t: train_new(preset(f"{t}-tiny").override({**MICRO, **ov}), root / t, quiet=True) for t, ov in TASKS.items()}


@pytest.fixture(scope="module")
def reports(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    return {t: write_report(run, root / t, n=N, progress=False) for t, run in runs.items()}


def _strict(text: str):
    def bad(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=bad)


@pytest.mark.parametrize("task", ["composition", "comparison"])
def test_report_writes_both_files(reports, runs, task):
    rep = reports[task]
    assert rep.html.name == REPORT_FILE and rep.html.is_file() and rep.summary.name == SUMMARY_FILE
    s = _strict(rep.summary.read_text())
    for key in ("grokscope_version", "run", "steps", "checkpoints", "lens", "tracing", "circuit", "grokking",
                "analysis", "measures", "ood"):
        assert key in s, key
    run = runs[task]
    assert s["run"]["config"] == run.config.to_dict() and s["steps"] == run.steps()
    assert [c["step"] for c in s["checkpoints"]] == run.steps()
    assert s["checkpoints"][-1]["acc"] == run.metrics()[-1]["acc"]
    L = run.config.model.n_layers
    assert s["lens"]["hook_names"][-1] == f"blocks.{L - 1}.hook_resid_post"
    assert s["tracing"]["hook_names"] == s["lens"]["hook_names"]
    pert = s["tracing"]["perturbations"][0]
    assert len(s["tracing"]["strength"][pert]) == len(run.steps())
    assert len(s["tracing"]["strength"][pert][0]) == L + 1
    target = next(iter(s["lens"]["targets"]))
    assert len(s["lens"]["targets"][target]["mrr"][0]) == L + 1
    assert s["circuit"]["hook_names"] == s["lens"]["hook_names"] and s["circuit"]["nodes"]
    assert "train_saturated_step" in s["grokking"]
    assert s["ood"] is not None
    assert ("n_values" in s["ood"]) == (task == "comparison")  # comparison: accuracy by |v1 - v2|
    html = rep.html.read_text()
    # the run table names the settings that decide whether a run groks
    assert f"init_range={run.config.model.init_range}" in html
    assert f"weight_decay={run.config.train.weight_decay}" in html
    if task == "composition":  # an untied run: no r2 column, and the caption says why
        assert not run.config.model.tie_embeddings and set(s["lens"]["undecodable"]) == {"r2@r2", "r2@r2/rel"}
        assert "Not shown: r2@r2, not decodable: its tokens are never answers" in html


@pytest.mark.parametrize("task", ["composition", "comparison"])
def test_html_embeds_plotlyjs_once_and_needs_no_network(reports, task):
    from plotly.offline import get_plotlyjs

    page = reports[task].html.read_text(encoding="utf-8")
    js = get_plotlyjs()
    assert page.count(js) == 1
    rest = page.replace(js, "")
    assert "cdn.plot.ly" not in rest
    assert not re.search(r"<script[^>]+src=", rest, re.I)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", rest, re.I)
    assert len(re.findall(r'<div id="fig-[^"]+" class="plotly-graph-div"', rest)) == N_FIGURES[task]
    assert "blocks.0.hook_resid_pre" in rest
    # every section is reachable from the navigation, the discovered circuit included
    nav = re.search(r"<nav>(.*?)</nav>", rest, re.S).group(1)
    for anchor in re.findall(r'<h2 id="([^"]+)"', rest):
        if anchor not in ("run", "grokking", "checkpoints", "lens-table", "notes"):
            assert f'href="#{anchor}"' in nav or anchor.startswith("fig"), anchor
    assert 'href="#discovered"' in nav


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
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


def test_cli_report_default_dir_and_cache(runs, tmp_path, monkeypatch, capsys):
    run = runs["comparison"]
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(monkeypatch, capsys, "report", str(run.path), "--steps", "0,40", "--examples", str(N), "-q")
    assert code == 0, err
    html = Path("reports") / run.path.name / REPORT_FILE
    assert html.is_file() and (html.parent / SUMMARY_FILE).is_file()
    assert str(html) in out and SUMMARY_FILE in out
    assert _strict((html.parent / SUMMARY_FILE).read_text())["steps"] == [0, 40]
    code, out, _ = _main(monkeypatch, capsys, "report", str(run.path), "--steps", "0,40", "--examples", str(N), "-q")
    assert code == 0 and "0 computed" in out


@pytest.mark.parametrize("args, needles", [
    (["report", "{run}", "--steps", "3,40"], ["--steps", "available steps: 0, 20, 40"]),
    (["report", "{run}", "--steps", "last"], ["--steps", "all"]),
    (["report", "{run}", "--examples", "0"], ["--examples"]),
    (["trace", "{run}", "--site", "neuron"], ["--site", "resid, attn, mlp, head"]),
    (["trace", "{run}", "--perturb", "e1,h"], ["--perturb", "h, r1, r2"]),
    (["lens", "{run}", "--step", "7"], ["--step", "0, 20, 40"]),
    (["lens", "{run}", "--step", "20", "--all"], ["--step", "--all"]),
    (["lens", "{run}", "--split", "train"], ["--split", "train_inferred, test_inferred_iid"]),
    (["circuit", "{run}", "--threshold", "2"], ["--threshold"]),
    (["report", "{missing}"], ["no such run directory"]),
])
def test_cli_bad_arguments_name_the_argument(runs, tmp_path, monkeypatch, capsys, args, needles):
    args = [a.format(run=runs["composition"].path, missing=tmp_path / "nope") for a in args]
    code, _, err = _main(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_cli_lens_trace_circuit_tables_and_json(runs, tmp_path, monkeypatch, capsys):
    run = runs["composition"]
    code, out, err = _main(monkeypatch, capsys, "lens", str(run.path), "--all", "--examples", str(N),
                           "--json", str(tmp_path / "lens.json"))
    assert code == 0, err
    assert "S[0] blocks.0.hook_resid_pre" in out and "bridge@r1 (pos 1)" in out
    assert "r2@r2: not decodable" in out  # the micro run is untied
    d = _strict((tmp_path / "lens.json").read_text())
    assert [c["step"] for c in d["checkpoints"]] == run.steps()
    c = d["checkpoints"][-1]
    assert len(c["inputs"]) == N and c["hook_names"][0] == "blocks.0.hook_resid_pre"
    assert len(c["targets"]["bridge@r1"]["ranks"][0]) == N

    code, out, err = _main(monkeypatch, capsys, "trace", str(run.path), "--step", "40", "--perturb", "h,r2",
                           "--site", "attn", "--examples", str(N), "--json", str(tmp_path / "trace.json"))
    assert code == 0, err
    assert "blocks.0.hook_attn_out" in out and "h' run" in out and "r2' run" in out
    t = json.loads((tmp_path / "trace.json").read_text())["checkpoints"][0]
    assert t["perturbations"] == ["h", "r2"] and t["site"] == "attn"
    assert t["examples"]["h"]["clean"] and t["per_example"]["h"]["changed"]

    code, out, err = _main(monkeypatch, capsys, "circuit", str(run.path), "--examples", str(N),
                           "--json", str(tmp_path / "circuit.json"))
    assert code == 0, err
    assert "resolve layers" in out and "S[0,h]" in out
    c = json.loads((tmp_path / "circuit.json").read_text())
    assert c["step"] == 40 and c["nodes"] and len(c["examples"]["inputs"]) == N and c["hook_names"]


# --------------------------------------------------------------------------- in a real browser

_PROBE = """<script>
window.__gsErrors = [];
function __gsNote(msg) {
  window.__gsErrors.push(String(msg));
  document.title = "JSERROR " + window.__gsErrors.join(" | ");
  var d = document.getElementById("gs-js-errors");
  if (!d) { d = document.createElement("pre"); d.id = "gs-js-errors"; (document.body || document.documentElement).appendChild(d); }
  d.textContent = window.__gsErrors.join("\\n");
}
window.onerror = function (m) { __gsNote(m); };
window.addEventListener("unhandledrejection", function (e) { __gsNote("unhandled rejection: " + e.reason); });
var __gsConsoleError = console.error;
console.error = function () { __gsNote("console.error: " + Array.prototype.join.call(arguments, " ")); __gsConsoleError.apply(console, arguments); };
window.addEventListener("load", function () {
  setTimeout(function () {
    // The slider check reads what plotly holds in the page: every slider step names a
    // registered frame, and the first and last frames carry different data. (Animating to
    // a frame and awaiting Plotly.animate's promise, as before, never resolves in most
    // runs of headless chromium under a virtual-time budget once the page holds 14
    // figures: measured 0-2 of 4 runs; the frame data are what the slider shows.)
    var out = [];
    document.querySelectorAll(".plotly-graph-div").forEach(function (gd) {
      var frames = (gd._transitionData && gd._transitionData._frames) || [];
      if (!frames.length) return;
      var names = frames.map(function (f) { return f.name; });
      var steps = (gd.layout.sliders && gd.layout.sliders[0] && gd.layout.sliders[0].steps) || [];
      var wired = steps.length === frames.length && steps.every(function (st) {
        return names.indexOf(st.args[0][0]) >= 0;
      });
      // z travels as a typed array; the hover text (which holds every value) is plain JSON
      var first = JSON.stringify(frames[0].data[0].text), last = JSON.stringify(frames[frames.length - 1].data[0].text);
      out.push(gd.id + (wired && first !== last ? ":frame-ok" : ":frame-mismatch"));
    });
    var d = document.createElement("pre"); d.id = "gs-frames"; d.textContent = out.sort().join(" ");
    document.body.appendChild(d);
  }, 500);
});
</script>"""

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--virtual-time-budget=10000"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe:
            return exe
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it (apt-get install -y chromium) needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        res = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            res = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"could not install chromium (apt-get install -y chromium): {e}")
    exe = shutil.which("chromium")
    if res.returncode != 0 or not exe:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        pytest.skip(f"could not install chromium (apt-get install -y chromium failed: {tail[0]})")
    return exe


@pytest.mark.slow
@pytest.mark.parametrize("task", ["composition", "comparison"])
def test_report_renders_in_headless_chromium(reports, tmp_path, task):
    exe = _chromium()
    page = reports[task].html.read_text(encoding="utf-8")
    ids = re.findall(r'<div id="(fig-[^"]+)" class="plotly-graph-div"', page)
    assert len(ids) == N_FIGURES[task]
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    profile = tmp_path / "profile"
    res = subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180)
    dom = res.stdout
    assert res.returncode == 0 and "</html>" in dom, res.stderr[-2000:]
    errors = re.search(r'<pre id="gs-js-errors">(.*?)</pre>', dom, re.S)
    assert errors is None, f"JavaScript errors: {errors.group(1)}"
    assert "<title>JSERROR" not in dom
    # every figure div received its SVG
    starts = [(dom.index(f'id="{i}"'), i) for i in ids]
    starts.sort()
    for k, (pos, fid) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(dom)
        assert 'class="main-svg"' in dom[pos:end], f"{fid} was not drawn"
    assert dom.count('class="main-svg"') >= len(ids)
    frames = re.search(r'<pre id="gs-frames">(.*?)</pre>', dom, re.S)
    assert frames is not None, "the slider check did not run"
    assert frames.group(1).split() == ["fig-lens-formation:frame-ok", "fig-tracing-formation:frame-ok"]
    # a screenshot for a person to look at (kept where GROKSCOPE_SCREENSHOT_DIR points)
    shot = tmp_path / f"report-{task}.png"
    res = subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,3000",
                          f"--screenshot={shot}", reports[task].html.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000, res.stderr[-2000:]
    keep = os.environ.get("GROKSCOPE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_cli_runs_grokking_table(runs, monkeypatch, capsys):
    root = runs["composition"].path.parent
    code, out, err = _main(monkeypatch, capsys, "runs", str(root), "--grokking")
    assert code == 0, err
    header, rule, *rows = out.strip().splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[0] == "run" and "task.task" in cols and "groks" in cols and "max_ood" in cols
    assert "name" not in cols and "train.max_time_s" not in cols  # not settings that change learning
    assert len(rows) == 2 and rule.count("---") == len(cols)
    for line in rows:
        cells = dict(zip(cols, (c.strip() for c in line.strip("|").split("|"))))
        final = runs[cells["task.task"]].metrics()[-1]
        assert cells["final_step"] == str(final["step"])
        assert cells["final_test_inferred_iid"] == f"{final['acc']['test_inferred_iid']:.3f}"
        assert cells["status"] == "done: max_steps"


def test_r2_note_reads_the_papers_claim_off_the_series_or_says_nothing():
    from grokscope.report import r2_note
    from grokscope.series.records import SeriesResult

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"]
    ck = lambda step, v: {"step": step, "lens": {"r2@r2": [1.0, v, 2 * v, 0.01], "r2@r2/rel": [1.0, 0.5, 0.6, 0.2]}}  # noqa: E731
    s = SeriesResult(run="r", run_name="r", task="composition", args={}, steps=[100, 900], hook_names=hooks,
                     position_roles=["h", "r1", "r2"], perturbations=[], lens_targets={"r2@r2": 2, "r2@r2/rel": 2},
                     checkpoints=[ck(100, 0.01), ck(900, 0.2)], metrics=[], grokking={})
    note = r2_note(s, 100)
    assert "S[1..2, r2]" in note and "0.010, 0.020 at step 100 and 0.200, 0.400 at step 900" in note
    assert "among relations 0.500, 0.600" in note
    s.lens_undecodable = {"r2@r2": "why", "r2@r2/rel": "why"}
    assert r2_note(s, 100) == ""


def test_report_on_two_worker_processes_has_the_same_content(runs, reports, tmp_path, monkeypatch):
    """A cold report whose checkpoints ran in two spawned processes equals the one-process report."""
    import shutil

    from grokscope.series.cache import CACHE_DIR_NAME

    src = runs["composition"].path
    copy = tmp_path / "run"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns(CACHE_DIR_NAME))
    rep = write_report(Run.open(copy), tmp_path / "out", n=N, progress=False, workers=2)
    assert rep.series.cache_misses == 0  # every analysis came from the workers
    # Warm, the jobs' markers say they are done: no process is started.
    import grokscope.report.parallel as parallel

    def no_pool(*a, **k):
        raise AssertionError("a warm report started worker processes")

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", no_pool)
    warm = write_report(Run.open(copy), tmp_path / "warm", n=N, progress=False, workers=2)
    assert warm.summary.read_text() == rep.summary.read_text().replace(str(tmp_path / "out"), str(tmp_path / "warm"))
    a = _strict(reports["composition"].summary.read_text())
    b = _strict(rep.summary.read_text())
    for doc in (a, b):
        doc.pop("run", None)
        doc.get("analysis", {}).pop("cache", None)
    assert a == b
