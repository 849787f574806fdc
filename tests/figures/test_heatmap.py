"""val_loss_heatmap.png: layer x alpha, colour the paired difference to the baseline, cells
whose interval excludes 0 marked; figure 4 with one line per alpha."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from causalshift.figures import SweepSeries, plot_heatmap, plot_sweep
from causalshift.results import SweepResult, SweepRunRecord


def _sweep(cells: dict[tuple[int, float], tuple[float, ...]], base=(5.0, 5.1, 5.2)) -> SweepResult:
    """Runs of seeds 1..n: the baseline `base`, and each (layer, alpha)'s losses."""
    runs = [
        SweepRunRecord(mode="none", alpha=0.0, seed=s + 1, final_val_loss=v)
        for s, v in enumerate(base)
    ]
    for (k, a), losses in cells.items():
        runs += [
            SweepRunRecord(mode="fixed", cut_layer=k, alpha=a, seed=s + 1, final_val_loss=v)
            for s, v in enumerate(losses)
        ]
    runs.append(SweepRunRecord(mode="gate", alpha=0.0, seed=1, final_val_loss=5.05))
    return SweepResult(preset="tiny", max_steps=3, runs=runs).with_stats()


CELLS = {
    (1, 0.0): (5.3, 5.5, 5.7),  # d = +0.3 +0.4 +0.5: interval above 0
    (2, 0.0): (5.1, 5.4, 5.1),  # d = +0.1 +0.3 -0.1: contains 0
    (1, 0.5): (4.95, 5.15, 5.2),  # d = -0.05 +0.05 0
    # (2, 0.5) never ran: an empty (grey) cell
}


def test_heatmap_cells_colours_and_marks() -> None:
    fig = plot_heatmap(_sweep(CELLS), None)
    ax = fig.axes[0]
    (image,) = ax.get_images()
    grid = np.ma.filled(image.get_array(), np.nan)  # the empty cell is masked
    # rows alpha (0, 0.5), columns layers (1, 2)
    assert grid[0][0] == pytest.approx(0.4) and grid[0][1] == pytest.approx(0.1)
    assert grid[1][0] == pytest.approx(0.0, abs=1e-12) and math.isnan(grid[1][1])
    lo, hi = image.get_clim()
    assert hi == pytest.approx(0.4) and lo == -hi  # diverging, centred at 0
    assert image.get_cmap().name.startswith("RdBu_r")
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["+0.000", "+0.100", "+0.400*", "n/a"]
    assert len(ax.patches) == 1  # one framed cell: (1, 0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.5"]
    assert "95% interval excludes 0" in ax.get_title()


def test_heatmap_with_one_seed_says_so_and_nothing_without_a_baseline(tmp_path: Path) -> None:
    one = _sweep({(1, 0.0): (5.3,)}, base=(5.0,))
    fig = plot_heatmap(one, None)
    assert "one seed: no intervals" in fig.axes[0].get_title() and not fig.axes[0].patches
    assert plot_heatmap(one, tmp_path / "h.png").read_bytes().startswith(b"\x89PNG")
    no_base = SweepResult(
        runs=[SweepRunRecord(mode="fixed", cut_layer=1, alpha=0.0, seed=1, final_val_loss=5.0)]
    ).with_stats()
    assert plot_heatmap(no_base, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_figure_4_draws_one_line_per_alpha(tmp_path: Path, monkeypatch) -> None:
    from causalshift.figures import sweep as module

    captured = {}
    monkeypatch.setattr(module, "save", lambda fig, path: captured.setdefault("fig", fig))
    plot_sweep([SweepSeries(_sweep(CELLS))], tmp_path / "f.png")
    ax = captured["fig"].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "fixed cut alpha=0, mean of 3 seeds, min/max" in labels
    assert "fixed cut alpha=0.5, mean of 3 seeds, min/max" in labels
    assert "baseline (no cut)" in labels and "gate" in labels  # learned modes: dash-dot
    bars = {c.get_label(): c for c in ax.containers}  # errorbar: (data line, caps, bars)
    alpha0 = bars["fixed cut alpha=0, mean of 3 seeds, min/max"].lines[0]
    assert list(alpha0.get_xdata()) == [1, 2]
    assert list(alpha0.get_ydata()) == pytest.approx([5.5, 5.2])
