"""Phase diagrams of sweeps: a grid of runs over two settings, each cell coloured by a
quantity (or by its phase) and labelled with its phase and number.

Example:
    >>> from grokscope.training.phase import PhaseGrid
    >>> grid = PhaseGrid("task.train_fraction", "train.weight_decay", "time_to_grok", [
    ...     {"x": 0.3, "y": 0.1, "run": "a", "phase": "memorizing", "time_to_grok": None},
    ...     {"x": 0.3, "y": 1.0, "run": "b", "phase": "grokking", "time_to_grok": 2500}])
    >>> fig = phase_diagram(grid)
    >>> fig.data[0].text[1][0]
    'grokking<br>(2500)'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from grokscope.plots.style import PHASE_COLORS, SEQUENTIAL

_COLOR_TITLES = {
    "time_to_grok": "step test ID<br>reached {t:g}",
    "gap": "steps from train 0.99<br>to test ID {t:g}",
    "final_iid": "final test ID",
    "final_ood": "final test OOD",
}


def phase_diagram(grid: Any, *, title: str | None = None) -> go.Figure:
    """A heat map of a :class:`~grokscope.training.phase.PhaseGrid` (or its ``to_dict()``).

    Args:
        grid: the runs over two settings with their phases.
        title: figure title (default: the two settings and the rule).

    Returns:
        One ``Heatmap`` trace: y rows, x columns, as categories in value order. Colour:
        the grid's ``color`` quantity on :data:`~grokscope.plots.style.SEQUENTIAL` (cells
        without a value left blank), or one colour per phase
        (:data:`~grokscope.plots.style.PHASE_COLORS`) for ``color="phase"``. Each cell's
        text: its phase and the number (the step test ID reached the grid's
        ``test_threshold``, 0.95 by default, when colouring by phase). Hover: the run, both steps of the rule and the final accuracies.
    """
    from grokscope.training.phase import PHASES, PhaseGrid

    if isinstance(grid, dict):
        grid = PhaseGrid.from_dict(grid)
    xs, ys = grid.x_values, grid.y_values
    text = [[grid.cell_text(grid.cell(x, y)) for x in xs] for y in ys]
    t = grid.test_threshold
    titles = {k: v.format(t=t) for k, v in _COLOR_TITLES.items()}
    hover = [[_hover(grid.cell(x, y), t) for x in xs] for y in ys]
    if grid.color == "phase":
        z = np.array([[PHASES.index(p) if p in PHASES else np.nan for p in row] for row in grid.matrix("phase")],
                     dtype=float)
        n = len(PHASES)
        scale = []
        for i, p in enumerate(PHASES):
            scale += [[i / n, PHASE_COLORS[p]], [(i + 1) / n, PHASE_COLORS[p]]]
        colorbar = {"tickvals": [i * (n - 1) / n + (n - 1) / (2 * n) for i in range(n)], "ticktext": list(PHASES),
                    "title": {"text": "phase"}}
        kw: dict[str, Any] = {"colorscale": scale, "zmin": 0, "zmax": n - 1, "colorbar": colorbar}
    else:
        z = np.array([[np.nan if v is None else float(v) for v in row] for row in grid.matrix(grid.color)], dtype=float)
        kw = {"colorscale": SEQUENTIAL, "colorbar": {"title": {"text": titles.get(grid.color, grid.color)}}}
        if grid.color.startswith("final_"):
            kw.update(zmin=0.0, zmax=1.0)
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(x) for x in xs], y=[str(y) for y in ys], text=text, texttemplate="%{text}",
        customdata=hover, hovertemplate="%{customdata}<extra></extra>", xgap=2, ygap=2, **kw,
    ))
    rule = (f"t: first step train >= 0.99. grokking: test ID <= 0.6 at t, >= {t:g} only after {grid.grok_ratio:g} t;"
            f"<br>comprehension: test ID >= {t:g} otherwise; memorizing: never; confusion: train never >= 0.99")
    number = titles.get("time_to_grok" if grid.color == "phase" else grid.color, grid.color)
    rule += f"<br>(n) in a cell: {number.replace('<br>', ' ')}"
    fig.update_layout(
        title={"text": title or f"phases over {grid.x_key} and {grid.y_key}<br><sup>{rule}</sup>"},
        xaxis={"title": {"text": grid.x_key}, "type": "category"},
        yaxis={"title": {"text": grid.y_key}, "type": "category"},
        plot_bgcolor="white", width=max(720, 150 * len(xs) + 260), height=max(420, 90 * len(ys) + 260),
        margin={"t": 150},
    )
    return fig


def _hover(c: dict[str, Any] | None, threshold: float) -> str:
    if c is None:
        return "no run"

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    return (f"{c['run']}<br>phase: {c['phase']}<br>train >= 0.99 at step {f(c.get('train_saturated_step'))}"
            f" (test ID then {f(c.get('iid_at_saturation'))})<br>test ID >= {threshold:g} at step {f(c.get('time_to_grok'))}<br>final step {f(c.get('final_step'))}: "
            f"test ID {f(c.get('final_iid'))}, OOD {f(c.get('final_ood'))}")
