"""Paper figure 5: the gate's probability p_l of cutting at each layer, over training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from causalshift.figures.common import pyplot, save
from causalshift.results import TrainingRun

FILE_NAME = "gate_p.png"


def plot_gate(runs: Sequence[TrainingRun], path: Path) -> Path | None:
    """p_l of every layer against the training step, one panel per run that logged a gate
    (a training run's own figure is the one-panel case); None when none did."""
    runs = [r for r in runs if r.gate_history]
    if not runs:
        return None
    plt = pyplot()
    cols = min(len(runs), 3)
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, run in zip(axes.flat, runs, strict=False):
        hist = run.gate_history
        steps = [s for s, _ in hist]
        n = len(hist[0][1])
        for layer in range(n):
            ax.plot(
                steps,
                [p[layer] for _, p in hist],
                color=cmap(layer / max(n - 1, 1)),
                label=f"layer {layer + 1}",
            )
        ax.set_title(f"{run.name} ({run.label})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("gate p_l")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if n > 6 else 1)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    return save(fig, path)
