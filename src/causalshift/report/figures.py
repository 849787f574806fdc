"""The report's figures, drawn from result files only (matplotlib, Agg backend).

- `topk_match.png` (paper fig. 2): top-k match of the decoded state with the input token
  and with the next (output) token, by depth, one colour per model.
- `similarity.png` (fig. 3): cosine to the input / output embeddings (random token as
  the chance level) and the input->output projection, by depth.
- `val_loss_vs_cut_layer.png` (fig. 4): final validation loss against the cut layer,
  baseline dotted.
- `gate_p.png` (fig. 5): the gate's p_l by layer over training, one panel per gate run.
- `val_loss.png`: validation loss against tokens for every run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from causalshift.io import atomic_write
from causalshift.report.sources import Run, mode_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def _depth(models: list[dict[str, Any]]) -> tuple[bool, str]:
    """Normalize depth to [0, 1] when the models differ in depth (as design.md says)."""
    depths = {m.get("num_layers") for m in models}
    return (True, "relative depth (layer / L)") if len(depths) > 1 else (False, "layer")


def _xs(model: dict[str, Any], normalize: bool) -> list[float]:
    L = max(int(model.get("num_layers") or 1), 1)
    return [r["layer"] / L if normalize else r["layer"] for r in model["layers"]]


def _band(ax: Any, xs: list[float], model: dict[str, Any], metric: str, color: Any) -> None:
    ci = [r.get("ci95", {}).get(metric) for r in model["layers"]]
    if all(isinstance(c, (list, tuple)) and len(c) == 2 for c in ci):
        ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.15, lw=0)


def _metric_line(ax, xs, model, metric, color, style, label) -> None:
    ys = [r.get(metric) for r in model["layers"]]
    if any(y is None for y in ys):
        return
    ax.plot(xs, ys, style, color=color, label=label, lw=1.6, ms=3)
    _band(ax, xs, model, metric, color)


def _label(model: dict[str, Any]) -> str:
    """The report's label for a model, or its name in a plain analyze results.json."""
    return model.get("label") or model["name"]


def topk_ks(models: list[dict[str, Any]]) -> list[int]:
    """The k's present in every model's layer rows (from keys like 'top5_input')."""
    ks = None
    for m in models:
        keys = set(m["layers"][0]) if m.get("layers") else set()
        mk = {int(k[3:-6]) for k in keys if k.startswith("top") and k.endswith("_input")}
        ks = mk if ks is None else ks & mk
    return sorted(ks or [])


def plot_topk(models: list[dict[str, Any]], path: Path) -> Path | None:
    """Paper fig. 2: input (dashed) vs output (solid) top-k match by depth."""
    ks = topk_ks(models)
    if not models or not ks:
        return None
    plt = _pyplot()
    normalize, xlabel = _depth(models)
    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 4), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, k in zip(axes[0], ks, strict=True):
        for i, m in enumerate(models):
            xs, c = _xs(m, normalize), colors(i % 10)
            _metric_line(ax, xs, m, f"top{k}_input", c, "--", f"{_label(m)}: input t_i")
            _metric_line(ax, xs, m, f"top{k}_output", c, "-o", f"{_label(m)}: output t_(i+1)")
        ax.set_title(f"top-{k} match of the logit lens")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"top-{k} match rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_similarity(models: list[dict[str, Any]], path: Path) -> Path | None:
    """Paper fig. 3: cosine to input/output embeddings (random: chance) and the projection."""
    if not models:
        return None
    plt = _pyplot()
    normalize, xlabel = _depth(models)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(models):
        xs, c = _xs(m, normalize), colors(i % 10)
        _metric_line(ax1, xs, m, "cos_input", c, "--", f"{_label(m)}: input")
        _metric_line(ax1, xs, m, "cos_output", c, "-o", f"{_label(m)}: output")
        _metric_line(ax1, xs, m, "cos_random", c, ":", f"{_label(m)}: random token")
        _metric_line(ax2, xs, m, "projection", c, "-o", _label(m))
    ax1.set_title("cosine similarity of N(h) to token embeddings")
    ax1.set_ylabel("cosine")
    ax2.set_title("projection on the input->output axis")
    ax2.set_ylabel("p (0 = input token, 1 = output token)")
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax2.axhline(0.5, color="gray", lw=0.8, ls=":")
    return _save(fig, path)


def plot_sweeps(sweeps: list[dict[str, Any]], path: Path) -> Path | None:
    """Paper fig. 4: final val loss vs cut layer (mean, min/max over seeds); baseline dotted."""
    sweeps = [s for s in sweeps if s.get("by_layer") or s.get("baseline")]
    if not sweeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.get_cmap("tab10")
    for i, s in enumerate(sweeps):
        c = colors(i % 10)
        rows = s.get("by_layer") or []
        if rows:
            xs = [r["cut_layer"] for r in rows]
            ys = [r["mean"] for r in rows]
            err = [
                [r["mean"] - r.get("min", r["mean"]) for r in rows],
                [r.get("max", r["mean"]) - r["mean"] for r in rows],
            ]
            ax.errorbar(
                xs, ys, yerr=err, fmt="o-", capsize=3, color=c, label=f"{s['label']}: fixed cut"
            )
            ax.set_xticks(xs)
        base = s.get("baseline")
        if base:
            ax.axhline(base["mean"], color=c, ls=":", label=f"{s['label']}: baseline (no cut)")
        for g in s.get("gates", []):
            ax.axhline(g["mean"], color=c, ls="-.", lw=1, label=f"{s['label']}: {g['label']}")
    ax.set_xlabel("cut layer K")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title("validation loss vs cut layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_gates(runs: list[Run], path: Path) -> Path | None:
    """Paper fig. 5: p_l of every layer against the training step, one panel per gate run."""
    runs = [r for r in runs if r.gate_history]
    if not runs:
        return None
    plt = _pyplot()
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
        ax.set_title(f"{run.path.name} ({mode_label(run.info)})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("gate p_l")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if n > 6 else 1)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_val_loss(runs: list[Run], path: Path) -> Path | None:
    """Validation loss against tokens seen, one line per run, one colour per mode."""
    runs = [r for r in runs if r.final_val_loss is not None]
    if not runs:
        return None
    plt = _pyplot()
    labels = sorted({mode_label(r.info) for r in runs})
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    shown: set[str] = set()
    for run in runs:
        label = mode_label(run.info)
        pts = [
            (r["tokens"], r["val_loss"])
            for r in run.metrics
            if r.get("val_loss") is not None and r.get("tokens") is not None
        ]
        if not pts:
            continue
        xs, ys = [t for t, _ in pts], [v for _, v in pts]
        ax.plot(
            xs,
            ys,
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
    return _save(fig, path)
