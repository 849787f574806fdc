"""The gate learned on a frozen pretrained model (gate_p.png, paper figure 5 on a pretrained
model): the final p over blocks, and p at every step of the fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from causalshift.figures.common import finish, new_figure
from causalshift.figures.intervene import mark_shift_layers

FILE_NAME = "gate_p.png"


def plot_learned_gate(doc: Mapping[str, Any], path: Path | None) -> Any:
    """doc: learn_gate.json (`gate`, `history`, `heldout`). Left: the final p_l against
    block l (bars), the uniform start 1/L dashed, the unchanged model's shift layers from
    the lens as vertical lines. Right: p_l at every step (rows: blocks, columns: steps).
    Returns the path, or the figure when path is None."""
    from matplotlib.ticker import MaxNLocator

    gate = doc["gate"]
    p = [float(x) for x in gate["p"]]
    n = len(p)
    layers = list(range(1, n + 1))
    fig, (ax, heat) = new_figure(path, (11, 4), 1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    ax.bar(layers, p, color="tab:blue", alpha=0.8, label="p_l after the fit")
    ax.axhline(1.0 / n, color="tab:red", ls="--", lw=0.8, label="p_l at the start (1/L)")
    mark_shift_layers(ax, doc.get("heldout", {}).get("unchanged", {}).get("shift_layer"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block l")
    ax.set_ylabel("gate p_l")
    model = doc.get("model", {}).get("name", "")
    ax.set_title(f"learned gate, frozen {model} (A = {gate['alpha']:g}, tau = {gate['tau']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    history = doc.get("history") or []
    rows = [[float(x) for x in gate["p_init"]]] + [h["p"] for h in history]
    grid = [[row[layer] for row in rows] for layer in range(n)]  # (L, steps + 1)
    image = heat.imshow(
        grid, aspect="auto", origin="lower", cmap="viridis",
        extent=(-0.5, len(rows) - 0.5, 0.5, n + 0.5),
    )  # fmt: skip
    fig.colorbar(image, ax=heat, label="gate p_l")
    heat.set_xlabel("optimizer step")
    heat.set_ylabel("block l")
    heat.set_title("p_l during the fit")
    return finish(fig, path)
