"""Paper figure 2: top-k match of the decoded hidden state with the input and output token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from causalshift.figures.common import (
    colormap,
    depth_axis,
    finish,
    layer_line,
    layer_xs,
    lens_style,
    lens_title,
    model_colors,
    model_labels,
    new_figure,
    several_lenses,
)
from causalshift.results import ModelResult, common_topk_ks

FILE_NAME = "topk_match.png"


def plot_topk(
    models: Sequence[ModelResult],
    path: Path | None,
    labels: Sequence[str] | None = None,
    metric_label: Callable[[str], str] = str,
) -> Any:
    """Input (dashed) vs output (solid) top-k match by depth, one panel per k, saved to
    `path` (returns the path; with path None, returns the matplotlib Figure); None when
    there is nothing to draw. metric_label: a result key's legend text (the commands pass
    the lens' metric table, `causalshift.lens.metrics.label`)."""
    ks = common_topk_ks(models)
    if not models or not ks:
        return None
    normalize, xlabel = depth_axis(models)
    names = model_labels(models, labels)
    hues, several = model_colors(models), several_lenses(models)  # colour: model; line: lens
    fig, axes = new_figure(path, (5.5 * len(ks), 4), 1, len(ks), squeeze=False)
    colors = colormap("tab10")
    for ax, k in zip(axes[0], ks, strict=True):
        for i, (m, name) in enumerate(zip(models, names, strict=True)):
            xs, c = layer_xs(m, normalize), colors(hues[i] % 10)
            # next2 (t_(i+2), `--targets ...,next2`) is drawn where the results have it
            for side, style in (("input", "--"), ("output", "-o"), ("next2", ":")):
                key = f"top{k}_{side}"
                line = lens_style(style, m, several)
                layer_line(ax, xs, m, key, c, line, f"{name}: {metric_label(key)}")
        ax.set_title(f"top-{k} match of the {lens_title(models)}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"top-{k} match rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish(fig, path)
