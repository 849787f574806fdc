"""Paper figure 3: cosine of the hidden state to the token embeddings, and the projection."""

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
    model_colors,
    model_labels,
    new_figure,
    several_lenses,
)
from causalshift.results import ModelResult

FILE_NAME = "similarity.png"


def plot_similarity(
    models: Sequence[ModelResult],
    path: Path | None,
    labels: Sequence[str] | None = None,
    metric_label: Callable[[str], str] = str,
) -> Any:
    """Cosine to the input and output embeddings (a random token: chance level) and the
    normalized projection on the input->output axis, by depth, saved to `path` (returns the
    path; with path None, returns the matplotlib Figure); None without models.
    metric_label: a result key's legend text (as in `plot_topk`); the projection has its
    own panel, so its lines carry the model's name only."""
    if not models:
        return None
    normalize, xlabel = depth_axis(models)
    fig, (ax1, ax2) = new_figure(path, (11, 4), 1, 2)
    colors = colormap("tab10")
    hues, several = model_colors(models), several_lenses(models)  # colour: model; line: lens
    for i, (m, name) in enumerate(zip(models, model_labels(models, labels), strict=True)):
        xs, c = layer_xs(m, normalize), colors(hues[i] % 10)
        for key, style in (("cos_input", "--"), ("cos_output", "-o"), ("cos_random", ":")):
            line = lens_style(style, m, several)
            layer_line(ax1, xs, m, key, c, line, f"{name}: {metric_label(key)}")
        layer_line(ax2, xs, m, "projection", c, lens_style("-o", m, several), name)
    ax1.set_title("cosine similarity of N(h) to token embeddings")
    ax1.set_ylabel("cosine")
    ax2.set_title("projection on the input->output axis")
    ax2.set_ylabel("p (0 = input token, 1 = output token)")
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax2.axhline(0.5, color="gray", lw=0.8, ls=":")
    return finish(fig, path)
