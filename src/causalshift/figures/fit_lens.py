"""`causalshift fit-lens`: held-out KL(model || lens) by layer for the tuned and the logit
lens, and the training loss by step (fit_lens.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from causalshift.figures.common import finish, new_figure
from causalshift.results import FitLensResult

FILE_NAME = "fit_lens.png"
# (key, line style, legend text) of each lens' curve.
LENS_CURVES = (("kl_logit", "-o", "logit lens"), ("kl_tuned", "--s", "tuned lens"))


def plot_fit_lens(result: FitLensResult, path: Path | None) -> Any:
    """Left: the held-out KL of each lens at layers 0..L-1 (log scale; layer L is the model
    itself, KL 0 for both) with 95% bands over sequences. Right: the training loss (KL summed
    over layers, mean over a batch's positions) by step. Returns the path, or the figure when
    path is None; None without layers."""
    rows = [r for r in result.layers if r.kl_tuned is not None and r.kl_logit is not None]
    last = max((r.layer for r in rows), default=0)
    rows = [r for r in rows if r.layer < last]  # layer L: 0 for both, off a log axis
    if not rows:
        return None
    fig, (ax1, ax2) = new_figure(path, (11, 4), 1, 2)
    xs = [r.layer for r in rows]
    for key, style, text in LENS_CURVES:
        ys = [max(getattr(r, key), 1e-6) for r in rows]
        (line,) = ax1.plot(xs, ys, style, ms=3, lw=1.4, label=text)
        ci = [(r.ci95 or {}).get(key) for r in rows]
        if all(c is not None for c in ci):
            lo = [max(c[0], 1e-6) for c in ci]
            ax1.fill_between(xs, lo, [c[1] for c in ci], color=line.get_color(), alpha=0.15, lw=0)
    ax1.set_yscale("log")
    ax1.set_xlabel(f"layer (layer {last}, the model's output: KL 0)")
    ax1.set_ylabel("held-out KL(model || lens), nats")
    name = result.model.get("name", "")
    ax1.set_title(f"tuned vs logit lens: {name}" if name else "tuned vs logit lens")
    steps = [h["step"] for h in result.history if "loss" in h]
    ax2.plot(steps, [h["loss"] for h in result.history if "loss" in h], "-o", ms=3, lw=1.2)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss: KL summed over layers (nats)")
    ax2.set_title("training")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    return finish(fig, path)
