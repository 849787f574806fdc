"""Test-time residual attenuation: loss increase against the attenuated layer, one line per
alpha (intervene.png)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from causalshift.figures.common import finish, new_figure

FILE_NAME = "intervene.png"


def plot_intervene(runs: Sequence[Mapping[str, Any]], path: Path | None, *, model: str = "") -> Any:
    """runs: intervene.json's "runs" (layer, alpha, loss_increase). One line per alpha of
    the loss increase over the unchanged model against the attenuated block; returns the
    path, or the figure when path is None. (The runs' loss intervals are intervals of the
    loss, not of the paired increase, so none is drawn here.)"""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(path, (6.5, 4))
    alphas = sorted({float(r["alpha"]) for r in runs})
    for alpha in alphas:
        rows = sorted((r for r in runs if float(r["alpha"]) == alpha), key=lambda r: r["layer"])
        ax.plot(
            [r["layer"] for r in rows],
            [r["loss_increase"] for r in rows],
            "o-",
            ms=3,
            lw=1.2,
            label=f"alpha = {alpha:g}",
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("attenuated block l")
    ax.set_ylabel("loss increase over baseline (nats)")
    title = "test-time residual attenuation"
    ax.set_title(f"{title}: {model}" if model else title)
    ax.grid(alpha=0.3)
    if alphas:
        ax.legend(fontsize=7)
    return finish(fig, path)
