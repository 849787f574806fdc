"""A sweep's layer x alpha grid: each fixed cut's final validation loss minus the baseline's,
seed by seed (the paired differences of `results.sweep_comparisons`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from causalshift.figures.common import colormap, finish, new_figure
from causalshift.results import Comparison, SweepResult, is_number

FILE_NAME = "val_loss_heatmap.png"


def _alpha_text(alpha: float | None) -> str:
    return "?" if alpha is None else f"{alpha:g}"


def plot_heatmap(sweep: SweepResult, path: Path | None, title: str = "") -> Any:
    """Rows alpha, columns cut layer K, colour the mean paired difference to the baseline
    (a diverging map centred at 0: red worse, blue better); a cell whose 95% interval
    excludes 0 has a black frame and an asterisk. Saved to `path` (returned), or the figure
    when path is None; None when no cut has a baseline to compare with."""
    cells = {(c.alpha, c.cut_layer): c for c in sweep.cuts if c.vs_baseline is not None}
    if not cells:
        return None
    alphas = sorted({a for a, _ in cells}, key=lambda a: -math.inf if a is None else a)
    layers = sorted({k for _, k in cells})
    grid = [[_diff(cells.get((a, k))) for k in layers] for a in alphas]
    top = max((abs(v) for row in grid for v in row if not math.isnan(v)), default=0.0) or 1e-6
    fig, ax = new_figure(path, (1.2 + 0.75 * len(layers), 1.6 + 0.55 * len(alphas)))
    cmap = colormap("RdBu_r").with_extremes(bad="#dddddd")  # no value: grey
    image = ax.imshow(grid, cmap=cmap, vmin=-top, vmax=top, origin="lower", aspect="auto")
    for i, a in enumerate(alphas):
        for j, k in enumerate(layers):
            _annotate(ax, i, j, cells.get((a, k)), grid[i][j], top)
    ax.set_xticks(range(len(layers)), [str(k) for k in layers])
    ax.set_yticks(range(len(alphas)), [_alpha_text(a) for a in alphas])
    ax.set_xlabel("cut layer K")
    ax.set_ylabel("alpha at the cut")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("final val loss - baseline (nats)")
    ax.set_title(
        (title or "difference to the baseline" + _detail(sweep)) + _note(cells), fontsize=9
    )
    return finish(fig, path)


def _diff(c: Comparison | None) -> float:
    return c.vs_baseline.mean if c is not None and c.vs_baseline is not None else math.nan


def _annotate(ax: Any, i: int, j: int, c: Comparison | None, value: float, top: float) -> None:
    """The cell's difference (and an asterisk and a frame when its interval excludes 0)."""
    if c is None or c.vs_baseline is None:
        ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="#555555")
        return
    marked = c.vs_baseline.excludes_zero
    color = "white" if abs(value) > 0.6 * top else "black"
    text = f"{value:+.3f}" + ("*" if marked else "")
    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    if marked:
        from matplotlib.patches import Rectangle

        frame = Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.8)
        ax.add_patch(frame)


def _detail(sweep: SweepResult) -> str:
    if not sweep.preset:
        return ""
    steps = f", {sweep.max_steps} steps" if is_number(sweep.max_steps) else ""
    return f" ({sweep.preset}{steps})"


def _note(cells: dict[Any, Comparison]) -> str:
    """How many seeds were paired, and what the marks mean."""
    n = max(c.vs_baseline.n for c in cells.values() if c.vs_baseline is not None)
    if n < 2:
        return "\none seed: no intervals"
    return f"\nmean over {n} paired seeds; * and frame: 95% interval excludes 0"
