"""Stratified curves: top-k match by depth within each stratum of the positions (output-token
frequency, position in the window, copyable or new; lens/strata.py), one row per model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from causalshift.figures.common import colormap, finish, new_figure
from causalshift.results import ModelResult, StratumResult, common_topk_ks

FILE_NAME = "strata.png"
FAMILY_TITLES = {
    "frequency": "by frequency of t_(i+1) in the text",
    "position": "by position i in the window",
    "copy": "t_(i+1) earlier in the window?",
}


def plot_strata(
    models: Sequence[ModelResult], path: Path | None, labels: Sequence[str] | None = None
) -> Any:
    """One panel per model and stratum family: each stratum's top-K output match (solid,
    with its 95% band) and input match (dashed) by layer, K the largest common k, and its
    crossover layer (dotted). Saved to `path` (returns the path), or returned as a Figure
    when path is None; None when no model has strata."""
    models = [m for m in models if m.strata]
    ks = common_topk_ks(models)
    if not models or not ks:
        return None
    k = ks[-1]
    names = list(labels) if labels is not None else [m.name for m in models]
    families = [f for f in FAMILY_TITLES if any(s.family == f for m in models for s in m.strata)]
    fig, axes = new_figure(
        path, (5 * len(families), 3.6 * len(models)), len(models), len(families), squeeze=False
    )
    colors = colormap("tab10")
    for row, (model, name) in enumerate(zip(models, names, strict=True)):
        for col, family in enumerate(families):
            ax = axes[row][col]
            strata = [s for s in model.strata if s.family == family]
            for i, stratum in enumerate(strata):
                _stratum_lines(ax, stratum, k, colors(i % 10))
            ax.set_title(f"{name}: {FAMILY_TITLES[family]}", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"top-{k} match rate")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return finish(fig, path)


def _stratum_lines(ax: Any, stratum: StratumResult, k: int, color: Any) -> None:
    """A stratum's output (solid, 95% band) and input (dashed) curves and its crossover."""
    xs = [r.layer for r in stratum.layers]
    label = f"{stratum.name} (n={stratum.num_positions})"
    for side, style in (("output", "-"), ("input", "--")):
        key = f"top{k}_{side}"
        ys = [r.value(key) for r in stratum.layers]
        if any(y is None for y in ys):
            continue
        ax.plot(xs, ys, style, color=color, lw=1.5, label=label if side == "output" else None)
        ci = [r.interval(key) for r in stratum.layers]
        if side == "output" and all(c is not None and None not in c for c in ci):
            ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.15)
    if stratum.shift_layer.crossover is not None:
        ax.axvline(stratum.shift_layer.crossover, color=color, ls=":", lw=1)
