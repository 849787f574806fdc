"""Paper figure 4: final validation loss against the fixed cut layer, baseline dotted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.figures.common import pyplot, save
from causalshift.results import SweepResult, is_number

FILE_NAME = "val_loss_vs_cut_layer.png"


@dataclass(frozen=True)
class SweepSeries:
    """One sweep on the figure: its statistics, its legend label and, where known, the mean
    final loss of learned-gate runs to compare with (label, loss; drawn dash-dot)."""

    sweep: SweepResult
    label: str = ""
    gates: tuple[tuple[str, float], ...] = ()


def plot_sweep(series: Sequence[SweepSeries], path: Path) -> Path | None:
    """Mean final loss of each cut layer with min/max bars over seeds, the baseline's mean
    as a dotted line (its range shaded); one colour per sweep. None with nothing to draw."""
    series = [s for s in series if s.sweep.by_layer or s.sweep.baseline]
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.get_cmap("tab10")
    for i, s in enumerate(series):
        _draw(ax, s, colors(i % 10))
    ax.set_xlabel("cut layer K")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title("validation loss vs cut layer" + _title_detail(series))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def _named(label: str, what: str) -> str:
    return f"{label}: {what}" if label else what


def _draw(ax: Any, s: SweepSeries, color: Any) -> None:
    rows = s.sweep.by_layer
    if rows:
        xs = [r.cut_layer for r in rows]
        err = [[r.mean - r.min for r in rows], [r.max - r.mean for r in rows]]
        n = max(r.n for r in rows)
        what = "fixed cut" + (f", mean of {n} seeds, min/max" if n > 1 else "")
        ys = [r.mean for r in rows]
        label = _named(s.label, what)
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=color, label=label)
        ax.set_xticks(xs)
    base = s.sweep.baseline
    if base:
        ax.axhline(base.mean, color=color, ls=":", label=_named(s.label, "baseline (no cut)"))
        if base.n > 1:
            ax.axhspan(base.min, base.max, color=color, alpha=0.15, lw=0)
    for label, mean in s.gates:
        ax.axhline(mean, color=color, ls="-.", lw=1, label=_named(s.label, label))


def _title_detail(series: Sequence[SweepSeries]) -> str:
    """' (preset, N steps)' for a single sweep that records them."""
    if len(series) != 1 or not series[0].sweep.preset:
        return ""
    sweep = series[0].sweep
    steps = f", {sweep.max_steps} steps" if is_number(sweep.max_steps) else ""
    return f" ({sweep.preset}{steps})"
