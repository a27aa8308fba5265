"""`grokscope phase`: what a sweep's grid of runs shows (its phase diagram)."""

from __future__ import annotations

from pathlib import Path

import typer

from grokscope.cli.common import UserError, _grid


def phase(
    sweep_dir: Path = typer.Argument(..., help="A sweep directory (grokscope sweep --out)."),
    x: str = typer.Option(..., "--x", help="Setting along x: a dotted key (task.train_fraction) or its last part."),
    y: str = typer.Option(..., "--y", help="Setting along y (e.g. weight_decay)."),
    color: str = typer.Option("time_to_grok", "--color", help="Cell colour: time_to_grok, gap, final_iid, final_ood or phase."),
    out: Path | None = typer.Option(None, "--out", help="Figure path without suffix (default SWEEP_DIR/phase-X-Y); "
                                    "writes .html, .png (if kaleido can export) and .json."),
    report: bool = typer.Option(False, "--report", help="Also write SWEEP_DIR/report.html: the table, the diagram "
                                "and every run's accuracy curves on one page."),
    test_threshold: float = typer.Option(0.95, "--test-threshold", help="Test ID accuracy that counts as "
                                         "generalised (t_test): 0.95, or the task's own bar (the tree's issue: 0.9)."),
) -> None:
    """Draw a sweep as a phase diagram: every run a cell over two settings, classified.

    The rule (grokscope.training.phase): with t_train the first step train accuracy >= 0.99
    and t_test the first step test ID accuracy >= 0.95 (--test-threshold), grokking: t_test > 1.5 t_train and
    test ID <= 0.6 at t_train; comprehension: both reached otherwise; memorizing: train
    >= 0.99 but test ID never >= 0.95; confusion: train never >= 0.99 (all within the steps
    each run trained).

    Example: grokscope phase sweeps/mod --x train_fraction --y weight_decay --color time_to_grok --report
    """
    from grokscope.plots.phase import phase_diagram
    from grokscope.runs.run import atomic_write_json
    from grokscope.training.phase import COLOR_QUANTITIES, phase_grid

    if color not in COLOR_QUANTITIES:
        raise UserError(f"--color {color!r} is not one of: {', '.join(COLOR_QUANTITIES)}")
    grid = phase_grid(sweep_dir, x, y, color, test_threshold=test_threshold)
    fig = phase_diagram(grid)
    stem = out or sweep_dir / f"phase-{grid.x_key.split('.')[-1]}-{grid.y_key.split('.')[-1]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    html_path, png_path = stem.with_name(stem.name + ".html"), stem.with_name(stem.name + ".png")
    fig.write_html(html_path, include_plotlyjs=True)
    atomic_write_json(stem.with_name(stem.name + ".json"), grid.to_dict())
    shown = "phase (time_to_grok)" if color == "phase" else f"phase ({color})"
    cells = [[grid.cell_text(grid.cell(xv, yv), sep=" ") for xv in grid.x_values] for yv in grid.y_values]
    _grid(f"{grid.y_key} (rows) x {grid.x_key} (columns): {shown}", [str(v) for v in grid.y_values],
          [str(v) for v in grid.x_values], cells)
    typer.echo(", ".join(f"{k} {v}" for k, v in grid.counts().items()))
    typer.echo(f"figure: {html_path}")
    try:
        fig.write_image(png_path, scale=2)
        typer.echo(f"figure: {png_path}")
    except Exception as e:  # kaleido missing, or it cannot find a browser to render with
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        typer.echo(f"no PNG (HTML only): plotly could not export an image ({first[:160]}); "
                   "pip install kaleido (and a Chrome/Chromium it can use) for PNGs", err=True)
    if report:
        from grokscope.report.sweep import write_sweep_report

        typer.echo(f"report: {write_sweep_report(sweep_dir, x, y, color=color, test_threshold=test_threshold)}")
