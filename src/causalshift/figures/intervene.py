"""Test-time residual attenuation: loss increase against the attenuated layer, one line per
alpha, with the lens' shift layers of the unchanged model as vertical lines (intervene.png)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from causalshift.figures.common import finish, new_figure

FILE_NAME = "intervene.png"
# How each of the lens' shift layers is drawn: (key, line style, legend text).
SHIFT_LINES = (
    ("input_until", ":", "input_until"),
    ("crossover", "-.", "crossover"),
    ("output_from", "--", "output_from"),
)


def mark_shift_layers(ax: Any, shift_layer: Mapping[str, Any] | None) -> None:
    """Vertical lines at the lens' shift layers (layer l = the stream after block l, so
    the line at l sits over block l); none for a shift layer that is null."""
    for key, style, text in SHIFT_LINES:
        layer = (shift_layer or {}).get(key)
        if layer is not None:
            ax.axvline(
                layer, color="black", ls=style, lw=1.0, alpha=0.6, label=f"lens {text} = {layer}"
            )


def plot_intervene(
    runs: Sequence[Mapping[str, Any]],
    path: Path | None,
    *,
    model: str = "",
    shift_layer: Mapping[str, Any] | None = None,
) -> Any:
    """runs: intervene.json's "runs" (layer, alpha, loss_increase and, where recorded, its
    paired interval loss_increase_ci95, drawn as a band); shift_layer: the baseline's shift
    layers from the lens, drawn as vertical lines. One line per alpha of the loss increase
    over the unchanged model against the attenuated block; returns the path, or the figure
    when path is None."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(path, (6.5, 4))
    alphas = sorted({float(r["alpha"]) for r in runs})
    for alpha in alphas:
        rows = sorted((r for r in runs if float(r["alpha"]) == alpha), key=lambda r: r["layer"])
        xs = [r["layer"] for r in rows]
        (line,) = ax.plot(
            xs, [r["loss_increase"] for r in rows], "o-", ms=3, lw=1.2, label=f"alpha = {alpha:g}"
        )
        if all(r.get("loss_increase_ci95") for r in rows):
            lo, hi = zip(*(r["loss_increase_ci95"] for r in rows), strict=True)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    mark_shift_layers(ax, shift_layer)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("attenuated block l")
    ax.set_ylabel("loss increase over baseline (nats)")
    title = "test-time residual attenuation"
    ax.set_title(f"{title}: {model}" if model else title)
    ax.grid(alpha=0.3)
    if alphas or shift_layer:
        ax.legend(fontsize=7)
    return finish(fig, path)
