"""Paper figure 4: final validation loss against the fixed cut layer, one line per alpha,
the baseline dotted and learned modes dash-dot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.figures.common import pyplot, save
from causalshift.results import LossStats, SweepResult, is_number, mode_label

FILE_NAME = "val_loss_vs_cut_layer.png"


@dataclass(frozen=True)
class SweepSeries:
    """One sweep on the figure: its statistics, its legend label and, where known, the mean
    final loss of learned-gate runs to compare with (label, loss; drawn dash-dot). Without
    `gates`, the learned modes of the sweep's own `comparisons` are drawn."""

    sweep: SweepResult
    label: str = ""
    gates: tuple[tuple[str, float], ...] = ()


def plot_sweep(series: Sequence[SweepSeries], path: Path) -> Path | None:
    """Mean final loss of each cut layer with min/max bars over seeds, one line per alpha;
    the baseline's mean as a dotted line (its range shaded); one colour per sweep and alpha.
    None with nothing to draw."""
    series = [s for s in series if s.sweep.by_layer or s.sweep.baseline]
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.get_cmap("tab10")
    used = 0  # colours taken
    for s in series:
        first = colors(used % 10)
        groups = _by_alpha(s.sweep.by_layer)
        for alpha, rows in groups.items():
            _draw_cut(ax, s, alpha, rows, colors(used % 10))
            used += 1
        used += 0 if groups else 1
        # one sweep: its references in black; several: in the colour of the sweep's first line
        _draw_references(ax, s, "black" if len(series) == 1 else first)
    layers = sorted({r.cut_layer for s in series for r in s.sweep.by_layer if r.cut_layer})
    if layers:
        ax.set_xticks(layers)
    ax.set_xlabel("cut layer K")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title("validation loss vs cut layer" + _title_detail(series))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def _by_alpha(rows: Sequence[LossStats]) -> dict[float | None, list[LossStats]]:
    """The cut layers' statistics of each alpha (in alpha order; None first)."""
    groups: dict[float | None, list[LossStats]] = {}
    for r in sorted(rows, key=lambda r: (-math.inf if r.alpha is None else r.alpha, r.cut_layer)):
        groups.setdefault(r.alpha, []).append(r)
    return groups


def _named(label: str, what: str) -> str:
    return f"{label}: {what}" if label else what


def _draw_cut(
    ax: Any, s: SweepSeries, alpha: float | None, rows: list[LossStats], color: Any
) -> None:
    xs = [r.cut_layer for r in rows]
    err = [[r.mean - r.min for r in rows], [r.max - r.mean for r in rows]]
    n = max(r.n for r in rows)
    what = "fixed cut" + (f" alpha={alpha:g}" if alpha is not None else "")
    what += f", mean of {n} seeds, min/max" if n > 1 else ""
    ys = [r.mean for r in rows]
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=color, label=_named(s.label, what))


def _draw_references(ax: Any, s: SweepSeries, color: Any) -> None:
    """The baseline (dotted, its seed range shaded) and the learned modes (dash-dot)."""
    base = s.sweep.baseline
    if base:
        ax.axhline(base.mean, color=color, ls=":", label=_named(s.label, "baseline (no cut)"))
        if base.n > 1:
            ax.axhspan(base.min, base.max, color=color, alpha=0.12, lw=0)
    gates = s.gates or tuple(
        (mode_label({"mode": c.mode, "alpha": c.alpha}), c.mean) for c in s.sweep.learned
    )
    for label, mean in gates:
        ax.axhline(mean, color=color, ls="-.", lw=1, label=_named(s.label, label))


def _title_detail(series: Sequence[SweepSeries]) -> str:
    """' (preset, N steps)' for a single sweep that records them."""
    if len(series) != 1 or not series[0].sweep.preset:
        return ""
    sweep = series[0].sweep
    steps = f", {sweep.max_steps} steps" if is_number(sweep.max_steps) else ""
    return f" ({sweep.preset}{steps})"
