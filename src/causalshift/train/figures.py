"""Training figures, drawn from result files only (metrics.jsonl, sweep.json), never a model.

- `loss.png`: train and validation loss against tokens.
- `gate_p.png`: the gate's p_l for every layer over training (paper figure 5).
- `val_loss_vs_cut_layer.png`: final validation loss against the fixed cut layer, mean
  over seeds with min/max bars, the baseline (no cut) as a dotted line (paper figure 4).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from causalshift.io import atomic_write, read_jsonl_records


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (a partial last line, from a kill, is skipped)."""
    return read_jsonl_records(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
    return path


def plot_loss(metrics: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Train loss (logged steps) and val loss against tokens seen."""
    train = [(r["tokens"], r["train_loss"]) for r in metrics if r.get("train_loss") is not None]
    val = [(r["tokens"], r["val_loss"]) for r in metrics if r.get("val_loss") is not None]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", color="tab:orange")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_gate(metrics: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """p_l of every layer l against the training step (paper figure 5)."""
    rows = [(r["step"], r["gate_p"]) for r in metrics if r.get("gate_p")]
    if not rows:
        return None
    plt = _pyplot()
    steps = [s for s, _ in rows]
    n_layer = len(rows[0][1])
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in range(n_layer):
        color = cmap(layer / max(n_layer - 1, 1))
        ax.plot(steps, [p[layer] for _, p in rows], color=color, label=f"layer {layer + 1}")
    ax.set_xlabel("step")
    ax.set_ylabel("gate probability p_l")
    ax.set_title(title or "gate distribution over layers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if n_layer > 6 else 1, loc="best")
    out = _save(fig, path)
    plt.close(fig)
    return out


def run_figures(run_dir: Path) -> list[Path]:
    """(Re)draw a run's figures/ from its metrics.jsonl."""
    metrics = read_metrics(run_dir / "metrics.jsonl")
    name = run_dir.name
    made = [
        plot_loss(metrics, run_dir / "figures" / "loss.png", f"loss: {name}"),
        plot_gate(metrics, run_dir / "figures" / "gate_p.png", f"gate p by layer: {name}"),
    ]
    return [p for p in made if p is not None]


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "min": min(values), "max": max(values), "std": std, "n": n}


def sweep_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-layer and baseline statistics of the final val losses of finished runs."""
    done = [r for r in runs if r.get("final_val_loss") is not None]
    base = [r["final_val_loss"] for r in done if r["mode"] == "none"]
    layers: dict[int, list[float]] = {}
    for r in done:
        if r["mode"] == "fixed":
            layers.setdefault(int(r["cut_layer"]), []).append(r["final_val_loss"])
    return {
        "baseline": _stats(base) if base else None,
        "by_layer": [{"cut_layer": k, **_stats(v)} for k, v in sorted(layers.items())],
    }


def plot_sweep(sweep: dict[str, Any], path: Path) -> Path | None:
    """Paper figure 4: final val loss against the cut layer, baseline dotted."""
    by_layer = sweep.get("by_layer") or []
    base = sweep.get("baseline")
    if not by_layer and not base:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if by_layer:
        xs = [r["cut_layer"] for r in by_layer]
        ys = [r["mean"] for r in by_layer]
        err = [[r["mean"] - r["min"] for r in by_layer], [r["max"] - r["mean"] for r in by_layer]]
        n = max(r["n"] for r in by_layer)
        label = f"fixed cut (alpha={sweep.get('alpha', 0)})" + (
            f", mean of {n} seeds, min/max" if n > 1 else ""
        )
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color="tab:red", label=label)
        ax.set_xticks(xs)
    if base:
        ax.axhline(base["mean"], color="black", linestyle=":", label="baseline (no cut)")
        if base["n"] > 1:
            ax.axhspan(base["min"], base["max"], color="gray", alpha=0.15, lw=0)
    ax.set_xlabel("cut layer K")
    ax.set_ylabel("final validation loss")
    steps = f", {sweep['max_steps']} steps" if sweep.get("max_steps") else ""
    ax.set_title(f"validation loss vs cut layer ({sweep.get('preset', '')}{steps})")
    ax.grid(alpha=0.3)
    ax.legend()
    out = _save(fig, path)
    plt.close(fig)
    return out
