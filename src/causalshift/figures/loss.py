"""One training run's train and validation loss against tokens (its figures/loss.png)."""

from __future__ import annotations

from pathlib import Path

from causalshift.figures.common import pyplot, save
from causalshift.results import TrainingRun

FILE_NAME = "loss.png"


def plot_loss(run: TrainingRun, path: Path) -> Path | None:
    """Train loss (logged steps) and validation loss against tokens seen; None when the run
    has logged neither."""
    train = [(r.tokens, r.train_loss) for r in run.metrics if r.train_loss is not None]
    val = [(r.tokens, r.val_loss) for r in run.metrics if r.val_loss is not None]
    if not train and not val:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", color="tab:orange")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(f"loss: {run.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)
