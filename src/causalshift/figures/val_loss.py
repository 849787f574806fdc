"""Validation loss of many training runs against tokens, one colour per residual mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from causalshift.figures.common import pyplot, save
from causalshift.results import TrainingRun

FILE_NAME = "val_loss.png"


def plot_val_loss(runs: Sequence[TrainingRun], path: Path) -> Path | None:
    """One line per run; runs of one mode share a colour and a legend entry. None when no
    run has a validation loss."""
    runs = [r for r in runs if r.final_val_loss is not None]
    if not runs:
        return None
    plt = pyplot()
    labels = sorted({r.label for r in runs})
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    shown: set[str] = set()
    for run in runs:
        pts = [
            (r.tokens, r.val_loss)
            for r in run.metrics
            if r.val_loss is not None and r.tokens is not None
        ]
        if not pts:
            continue
        label = run.label
        ax.plot(
            [t for t, _ in pts],
            [v for _, v in pts],
            "o-",
            ms=2.5,
            lw=1.2,
            color=colors(labels.index(label) % 10),
            label=None if label in shown else label,
        )
        shown.add(label)
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss (nats)")
    ax.set_title("validation loss during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)
