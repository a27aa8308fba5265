"""The report of a sweep: one self-contained HTML page with the sweep's table, its phase
diagram and every run's accuracy curves on one figure (``grokscope phase ... --report``).

Example:
    >>> write_sweep_report("runs/phase-modular", "train_fraction", "weight_decay")   # doctest: +SKIP
    PosixPath('runs/phase-modular/report.html')
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from plotly.offline import get_plotlyjs

from grokscope.report.sections import PAGE_CSS, fig_html, table_html
from grokscope.runs.grokking import TEST_GENERALIZED
from grokscope.runs.run import atomic_write_bytes
from grokscope.training.phase import phase_grid
from grokscope.training.sweep import markdown_table, read_metrics, summarize_runs

SWEEP_REPORT_FILE = "report.html"


def write_sweep_report(sweep_dir: str | os.PathLike[str], x: str, y: str, *, color: str = "time_to_grok",
                       out: str | os.PathLike[str] | None = None, test_threshold: float = TEST_GENERALIZED) -> Path:
    """Write ``SWEEP_DIR/report.html`` (or ``out``): table, phase diagram, all runs' curves.

    Args:
        sweep_dir: a ``grokscope sweep --out`` directory.
        x, y: the settings along the diagram's axes (as :func:`phase_grid` takes them).
        color: what colours the diagram's cells.
        test_threshold: test ID accuracy that counts as generalised (0.95).
        out: the HTML file to write.

    Returns:
        The path written.
    """
    from grokscope import plots

    sweep_dir = Path(sweep_dir)
    grid = phase_grid(sweep_dir, x, y, color, test_threshold=test_threshold)
    runs = [sweep_dir / c["run"] for c in grid.cells]
    configs = [json.loads((r / "config.json").read_text())["run"] for r in runs]
    metrics = [read_metrics(r / "metrics.jsonl") for r in runs]
    rows, keys = summarize_runs(configs, metrics, [r.name for r in runs])
    cells = {c["run"]: c for c in grid.cells}
    t = f"{test_threshold:g}"
    header = ["run", *keys, "phase", "train >= 0.99 at", "test ID then", f"test ID >= {t} at", "final test ID"]
    body = [[r["run"], *[r[k] for k in keys], cells[r["run"]]["phase"], r["train_saturated_step"], r["iid_at_saturation"],
             cells[r["run"]]["time_to_grok"], r["final_test_inferred_iid"]] for r in rows]
    curves = plots.compare_runs({r.name: m for r, m in zip(runs, metrics)}, splits=("train_inferred", "test_inferred_iid"),
                                title=f"Accuracy of every run of {sweep_dir.name}")
    title = f"grokscope sweep report: {sweep_dir.name}"
    counts = ", ".join(f"{k} {v}" for k, v in grid.counts().items())
    page = "\n".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>',
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(runs)} runs over {html.escape(grid.x_key)} x {html.escape(grid.y_key)}: {html.escape(counts)}. "
        f"The rule (grokscope.training.phase): grokking when test ID reaches {t} more than {grid.grok_ratio:g} times later than "
        "train reaches 0.99 and test ID was <= 0.6 then; comprehension when both are reached otherwise; "
        "memorizing when only train is; confusion when train never reaches 0.99.</p>",
        '<h2 id="table">Runs</h2>', table_html(header, body),
        '<h2 id="phase">Phase diagram</h2>', fig_html(plots.phase_diagram(grid), "fig-phase"),
        '<h2 id="curves">Accuracy curves</h2>', fig_html(curves, "fig-curves"),
        f'<details><summary>markdown table</summary><pre>{html.escape(markdown_table(rows, keys))}</pre></details>',
        "</body></html>",
    ])
    path = Path(out) if out is not None else sweep_dir / SWEEP_REPORT_FILE
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
