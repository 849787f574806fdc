"""Which sublayer brings t_(i+1) in (`analyze --sublayers`): per block, the change of the
output target's lens log-probability, top-K match and projection contributed by its
attention and by its MLP, with 95% intervals over sequences (results' `sublayers`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from causalshift.figures.common import colormap, finish, new_figure
from causalshift.results import ModelResult, SublayerRow

FILE_NAME = "sublayers.png"
PARTS = (("attn", "attention"), ("mlp", "MLP"))
TITLES = {
    "logprob_output": "change of log p_lens(t_(i+1))",
    "projection": "change of the input->output projection",
}


def panel_metrics(models: Sequence[ModelResult]) -> list[str]:
    """The metrics drawn: the log-probability, the largest top-k output match that every
    model's rows hold, the projection (each only where some model has it)."""
    keys = [set(s.attn) for m in models for s in m.sublayers]
    common = set.intersection(*keys) if keys else set()
    topk = sorted(
        (k for k in common if k.startswith("top") and k.endswith("_output")),
        key=lambda k: int(k[3:-7]),
    )
    wanted = ["logprob_output", *topk[-1:], "projection"]
    return [k for k in wanted if k in common]


def plot_sublayers(
    models: Sequence[ModelResult], path: Path | None, labels: Sequence[str] | None = None
) -> Any:
    """One row per model with sublayer contributions, one panel per metric
    (`panel_metrics`): per block l, the attention's change (row l.attn minus row l-1) and
    the MLP's (row l minus row l.attn), each a line with its 95% band. Where block 1's change
    (from the embedding) dwarfs the others, the axis fits blocks 2..L and a note gives block
    1's values. Saved to `path` (returns the path), or returned as a Figure when path is
    None; None when no model has sublayer contributions."""
    names = list(labels) if labels is not None else [m.name for m in models]
    rows = [(m, n) for m, n in zip(models, names, strict=True) if m.sublayers]
    metrics = panel_metrics([m for m, _ in rows])
    if not rows or not metrics:
        return None
    depth = max(len(m.sublayers) for m, _ in rows)
    width = max(4.6, 0.16 * depth + 1.5)  # deep models get wider panels
    fig, axes = new_figure(
        path, (width * len(metrics), 3.4 * len(rows)), len(rows), len(metrics), squeeze=False
    )
    colors = colormap("tab10")
    for r, (model, name) in enumerate(rows):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for j, (part, part_label) in enumerate(PARTS):
                _line(ax, model.sublayers, part, metric, colors(j), part_label)
            _fit_after_block_one(ax, model.sublayers, metric)
            ax.axhline(0.0, color="gray", lw=0.8)
            title = TITLES.get(metric) or f"change of top-{metric[3:-7]} match of t_(i+1)"
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("block l")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    return finish(fig, path)


def _series(rows: Sequence[SublayerRow], part: str, metric: str) -> list[tuple]:
    """(block, change, low, high) of one sublayer's change of `metric`, where recorded."""
    out = []
    for s in rows:
        y = getattr(s, part).get(metric)
        if y is None or y != y:  # null or NaN: no position counted
            continue
        ci = s.interval(part, metric)
        lo, hi = ci if ci and None not in ci else (y, y)
        out.append((s.layer, y, lo, hi))
    return out


def _line(
    ax: Any, rows: Sequence[SublayerRow], part: str, metric: str, color: Any, label: str
) -> None:
    """One sublayer's change of `metric` by block, with its 95% band."""
    points = _series(rows, part, metric)
    if not points:
        return
    xs, ys, lo, hi = (list(v) for v in zip(*points, strict=True))
    ax.plot(xs, ys, "-o", color=color, label=label, lw=1.5, ms=3)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


def _fit_after_block_one(ax: Any, rows: Sequence[SublayerRow], metric: str) -> None:
    """When block 1's change is over 3x the largest of blocks 2..L, fit the y axis to blocks
    2..L and write block 1's changes in a note (they stay drawn, off the axis)."""
    points = {part: _series(rows, part, metric) for part, _ in PARTS}
    rest = [v for p in points.values() for (block, *vals) in p if block > 1 for v in vals]
    first = {part: p[0][1] for part, p in points.items() if p and p[0][0] == 1}
    if not rest or not first:
        return
    top = max(abs(v) for v in rest)
    if top == 0 or max(abs(v) for v in first.values()) <= 3 * top:
        return
    low, high = min(rest + [0.0]), max(rest + [0.0])
    pad = 0.1 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    note = ", ".join(f"{label} {first[part]:+.3g}" for part, label in PARTS if part in first)
    ax.text(
        0.99,
        0.02,
        f"block 1 off scale: {note}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="dimgray",
    )
