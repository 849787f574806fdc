"""Figures of the lens results. They read results.json content only; they never load a model.

`topk_match.png` (paper figure 2): match rate of the decoded top-k to the input token t_i
(solid) and to the output token t_{i+1} (dashed) by depth. `similarity.png` (figure 3):
cosine to the input/output/random embeddings, and the normalized projection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from causalshift.io import atomic_write


def load_models(paths: Iterable[str | Path]) -> list[dict]:
    """The `models` entries of one or more results.json files."""
    models = []
    for p in paths:
        models.extend(json.loads(Path(p).read_text())["models"])
    return models


def _depth(model: dict, normalize: bool) -> list[float]:
    layers = [row["layer"] for row in model["layers"]]
    return [x / model["num_layers"] for x in layers] if normalize else layers


def _series(model: dict, metric: str) -> tuple[list[float], list[float], list[float]]:
    mean = [row[metric] for row in model["layers"]]
    lo = [row["ci95"][metric][0] for row in model["layers"]]
    hi = [row["ci95"][metric][1] for row in model["layers"]]
    return mean, lo, hi


def _topks(model: dict) -> list[int]:
    keys = model["layers"][0].keys()
    return sorted(int(k[3:-6]) for k in keys if k.startswith("top") and k.endswith("_input"))


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")

    out = atomic_write(path, write)
    plt.close(fig)
    return out


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.8), squeeze=False)
    return fig, axes[0]


def _mark_shift(ax, model: dict, x: list[float], color) -> None:
    layer = (model.get("shift_layer") or {}).get("crossover")
    if layer is not None:
        ax.axvline(x[layer], color=color, lw=0.8, ls=":", alpha=0.8)


def plot_topk_match(models: list[dict], path: str | Path) -> Path:
    """Figure 2: top-k match to input vs output token by depth, one panel per k."""
    normalize = len({m["num_layers"] for m in models}) > 1
    ks = _topks(models[0])
    fig, axes = _figure(len(ks))
    for ax, k in zip(axes, ks):
        for i, m in enumerate(models):
            color = f"C{i}"
            x = _depth(m, normalize)
            for side, ls in (("input", "-"), ("output", "--")):
                mean, lo, hi = _series(m, f"top{k}_{side}")
                ax.plot(
                    x,
                    mean,
                    ls,
                    color=color,
                    marker=".",
                    label=f"{m['name']}: {side} t_i"
                    if side == "input"
                    else f"{m['name']}: output t_(i+1)",
                )
                ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            _mark_shift(ax, m, x, color)
        ax.set_title(f"top-{k} match of the logit lens")
        ax.set_xlabel("depth (layer / L)" if normalize else "layer")
        ax.set_ylabel("match rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_similarity(models: list[dict], path: str | Path) -> Path:
    """Figure 3: cosine to input/output/random embeddings, and the normalized projection."""
    normalize = len({m["num_layers"] for m in models}) > 1
    fig, (ax_cos, ax_proj) = _figure(2)
    for i, m in enumerate(models):
        color = f"C{i}"
        x = _depth(m, normalize)
        for metric, ls, label in (
            ("cos_input", "-", "input W_E[t_i]"),
            ("cos_output", "--", "output U[t_(i+1)]"),
            ("cos_random", ":", "random token"),
        ):
            mean, lo, hi = _series(m, metric)
            ax_cos.plot(x, mean, ls, color=color, label=f"{m['name']}: {label}")
            ax_cos.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)
        mean, lo, hi = _series(m, "projection")
        ax_proj.plot(x, mean, "-", color=color, marker=".", label=m["name"])
        ax_proj.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
        _mark_shift(ax_proj, m, x, color)
    ax_proj.axhline(0.5, color="grey", lw=0.8, ls="--")
    xlabel = "depth (layer / L)" if normalize else "layer"
    ax_cos.set(title="cosine similarity of N(h)", xlabel=xlabel, ylabel="cosine")
    ax_proj.set(
        title="projection on input -> output axis",
        xlabel=xlabel,
        ylabel="p (0 = input, 1 = output)",
    )
    for ax in (ax_cos, ax_proj):
        ax.grid(alpha=0.3)
    ax_cos.legend(fontsize=7, loc="best")
    ax_proj.legend(fontsize=7, loc="best")
    return _save(fig, path)
