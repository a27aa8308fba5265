"""Phase classification on synthetic metrics (hand-computed), the phase grid of a sweep
directory, its figure and the ``grokscope phase`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from grokscope.plots.phase import phase_diagram
from grokscope.training.phase import PHASES, PhaseGrid, classify_phase, phase_cell, phase_grid


def recs(*rows: tuple[int, float, float]) -> list[dict]:
    """(step, train accuracy, test ID accuracy) rows as metrics.jsonl records."""
    return [{"step": s, "acc": {"train_inferred": tr, "test_inferred_iid": te}} for s, tr, te in rows]


def test_confusion_when_train_never_reaches_099():
    assert classify_phase(recs((0, 0.0, 0.0), (100, 0.5, 0.1), (200, 0.985, 0.9))) == "confusion"


def test_memorizing_when_train_fits_and_test_never_reaches_095():
    assert classify_phase(recs((0, 0.0, 0.0), (100, 1.0, 0.3), (5000, 1.0, 0.949))) == "memorizing"


def test_grokking_when_test_comes_after_one_and_a_half_times_the_fit():
    # train >= 0.99 at 200, test ID >= 0.95 at 400 > 1.5 * 200 = 300
    assert classify_phase(recs((100, 0.8, 0.1), (200, 0.99, 0.2), (300, 1.0, 0.5), (400, 1.0, 0.95))) == "grokking"


def test_late_but_already_generalising_when_train_fits_is_comprehension():
    # t_test = 1000 > 1.5 * 100, but test ID was 0.8 > 0.6 when train fitted at step 100
    rows = recs((100, 1.0, 0.8), (1000, 1.0, 0.96))
    assert classify_phase(rows) == "comprehension"
    assert classify_phase(rows, grok_iid_max=0.85) == "grokking"
    assert classify_phase(recs((100, 1.0, 0.6), (1000, 1.0, 0.96))) == "grokking"  # 0.6 is still low


def test_comprehension_at_exactly_one_and_a_half_times_and_when_test_comes_first():
    # t_test = 300 = 1.5 * 200: not later than the bound
    assert classify_phase(recs((100, 0.8, 0.1), (200, 0.99, 0.2), (300, 1.0, 0.95))) == "comprehension"
    # test ID reaches 0.95 (step 100) before train reaches 0.99 (step 200)
    assert classify_phase(recs((100, 0.97, 0.96), (200, 0.995, 0.97))) == "comprehension"


def test_rule_parameters_and_no_data():
    rows = recs((200, 0.99, 0.2), (300, 1.0, 0.95))
    assert classify_phase(rows) == "comprehension"
    assert classify_phase(rows, grok_ratio=1.2) == "grokking"  # 300 > 240
    assert classify_phase(recs((100, 0.985, 0.96)), train_threshold=0.98) == "comprehension"
    assert classify_phase(recs((100, 1.0, 0.9)), test_threshold=0.9) == "comprehension"
    assert classify_phase([]) is None


def test_phase_cell_numbers():
    c = phase_cell(recs((0, 0.0, 0.0), (250, 1.0, 0.1), (1000, 1.0, 0.96), (1250, 1.0, 1.0)))
    assert c == {"phase": "grokking", "train_saturated_step": 250, "iid_at_saturation": 0.1,
                 "time_to_grok": 1000, "gap": 750,
                 "final_step": 1250, "final_iid": 1.0, "final_ood": None}


def _fake_sweep(root, cells):
    """A sweep directory: one run directory per (train_fraction, weight_decay, records)."""
    for frac, wd, rows in cells:
        d = root / f"train_fraction={frac}_weight_decay={wd}"
        d.mkdir(parents=True)
        run = {"name": "m", "seed": 0, "task": {"task": "modular", "p": 23, "train_fraction": frac},
               "train": {"weight_decay": wd, "lr": 0.003}, "model": {"weight_decay": 0}}
        (d / "config.json").write_text(json.dumps({"run": run}))
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


GROK = recs((100, 1.0, 0.1), (1000, 1.0, 0.97))
MEMO = recs((100, 1.0, 0.1), (1000, 1.0, 0.5))
COMP = recs((100, 0.9, 0.5), (200, 1.0, 0.96))
CONF = recs((100, 0.5, 0.1), (1000, 0.7, 0.2))


@pytest.fixture
def sweep_dir(tmp_path):
    return _fake_sweep(tmp_path / "sw", [(0.3, 0.0, MEMO), (0.3, 1.0, GROK), (0.6, 0.0, MEMO),
                                         (0.6, 1.0, COMP), (0.3, 3.0, CONF)])


def test_phase_grid_lays_runs_out_by_value(sweep_dir):
    g = phase_grid(sweep_dir, "train_fraction", "train.weight_decay")
    assert (g.x_key, g.y_key) == ("task.train_fraction", "train.weight_decay")
    assert g.x_values == [0.3, 0.6] and g.y_values == [0.0, 1.0, 3.0]
    assert g.matrix("phase") == [["memorizing", "memorizing"], ["grokking", "comprehension"], ["confusion", None]]
    assert g.matrix("time_to_grok") == [[None, None], [1000, 200], [None, None]]
    assert g.matrix("gap") == [[None, None], [900, 0], [None, None]]
    assert g.counts() == {"comprehension": 1, "grokking": 1, "memorizing": 2, "confusion": 1}
    assert "grokking (1000)" in g.markdown() and repr(g).startswith("PhaseGrid(train.weight_decay x task.train_fraction: 3 x 2")
    assert PhaseGrid.from_dict(json.loads(json.dumps(g.to_dict()))).matrix("phase") == g.matrix("phase")
    assert "<table>" in g._repr_html_()


def test_phase_grid_errors(sweep_dir, tmp_path):
    with pytest.raises(ValueError, match="names several settings"):
        phase_grid(sweep_dir, "weight_decay", "train_fraction")
    with pytest.raises(ValueError, match="not a setting of these runs; settings that vary: task.train_fraction, train.weight_decay"):
        phase_grid(sweep_dir, "phi", "train.weight_decay")
    with pytest.raises(ValueError, match="no test_inferred_ood split"):
        phase_grid(sweep_dir, "train_fraction", "train.weight_decay", color="final_ood")
    with pytest.raises(ValueError, match="color must be one of"):
        phase_grid(sweep_dir, "train_fraction", "train.weight_decay", color="speed")
    with pytest.raises(ValueError, match="one run per cell"):
        phase_grid(sweep_dir, "train_fraction", "lr")
    with pytest.raises(ValueError, match="holds no run directories"):
        (tmp_path / "empty").mkdir()
        phase_grid(tmp_path / "empty", "a", "b")


def test_phase_diagram_cells(sweep_dir):
    g = phase_grid(sweep_dir, "train_fraction", "train.weight_decay")
    fig = phase_diagram(g)
    (hm,) = fig.data
    assert list(hm.x) == ["0.3", "0.6"] and list(hm.y) == ["0.0", "1.0", "3.0"]
    assert hm.text[1][0] == "grokking<br>(1000)" and hm.text[2][1] == ""
    z = np.array(hm.z, dtype=float)
    assert z[1, 0] == 1000 and z[1, 1] == 200 and np.isnan(z[0, 0])
    by_phase = phase_diagram(phase_grid(sweep_dir, "train_fraction", "train.weight_decay", color="phase"))
    zp = np.array(by_phase.data[0].z, dtype=float)
    assert zp[1, 0] == PHASES.index("grokking") and zp[0, 1] == PHASES.index("memorizing") and np.isnan(zp[2, 1])
    assert phase_diagram(g.to_dict()).data[0].text[1][1] == "comprehension<br>(200)"


def test_phase_grid_with_a_lower_test_threshold(tmp_path):
    """--test-threshold 0.9 (the tree issue's bar): MEMO_90 reaches 0.9 at step 1000, 10x after
    train fitted, so it groks at 0.9 and memorises at 0.95; COMP stays comprehension."""
    memo_90 = recs((100, 1.0, 0.1), (500, 1.0, 0.85), (1000, 1.0, 0.92))
    d = _fake_sweep(tmp_path / "sw", [(0.3, 0.0, memo_90), (0.6, 0.0, COMP)])
    strict = phase_grid(d, "train_fraction", "train.weight_decay")
    assert strict.matrix("phase") == [["memorizing", "comprehension"]]
    g = phase_grid(d, "train_fraction", "train.weight_decay", color="phase", test_threshold=0.9)
    assert g.matrix("phase") == [["grokking", "comprehension"]]
    assert g.matrix("time_to_grok") == [[1000, 200]] and g.matrix("gap") == [[900, 0]]
    assert PhaseGrid.from_dict(json.loads(json.dumps(g.to_dict()))).test_threshold == 0.9
    fig = phase_diagram(g)
    assert ">= 0.9 only after 1.5 t" in fig.layout.title.text and "test ID >= 0.9 at step 1000" in fig.data[0].customdata[0][0]
    with pytest.raises(ValueError, match="test_threshold must be in"):
        phase_grid(d, "train_fraction", "train.weight_decay", test_threshold=1.5)


def test_phase_command(sweep_dir, tmp_path):
    cli = [sys.executable, "-m", "grokscope.cli", "phase", str(sweep_dir), "--x", "train_fraction",
           "--y", "train.weight_decay", "--out", str(tmp_path / "fig" / "ph")]
    res = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "grokking (1000)" in res.stdout and "memorizing 2" in res.stdout
    assert (tmp_path / "fig" / "ph.html").is_file() and (tmp_path / "fig" / "ph.json").is_file()
    bad = subprocess.run([*cli[:-2], "--color", "speed"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "time_to_grok" in bad.stderr


def test_sweep_report_page_holds_the_table_the_diagram_and_every_runs_curves(sweep_dir):
    from grokscope.report.sweep import write_sweep_report

    path = write_sweep_report(sweep_dir, "train_fraction", "train.weight_decay")
    page = path.read_text()
    assert path == sweep_dir / "report.html"
    for run, phase in [("train_fraction=0.3_weight_decay=1.0", "grokking"), ("train_fraction=0.6_weight_decay=1.0", "comprehension"),
                       ("train_fraction=0.3_weight_decay=3.0", "confusion")]:
        row = page[page.index(f"<td class=\"l\">{run}</td>"):]
        assert phase in row[: row.index("</tr>")]
    assert 'id="fig-phase"' in page and 'id="fig-curves"' in page
    assert page.count("<tr>") == 1 + 5  # header + one row per run
