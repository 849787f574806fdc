"""What every figure shares: matplotlib without a display, one resolution, atomic saves,
and the per-layer curves of an analysis (top-k match and similarity plot them alike)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from causalshift.io import atomic_write
from causalshift.results import ModelResult

DPI = 120


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: figures are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write `fig` to `path` as PNG (atomically: a reader never sees half a file), close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    pyplot().close(fig)
    return path


def new_figure(
    path: Path | None, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **kw: Any
) -> tuple[Any, Any]:
    """(figure, axes) for a figure saved to `path`, or returned when path is None.

    A saved figure is a bare `matplotlib.figure.Figure`: no pyplot state, and the backend of
    a notebook that calls `save` is left alone. A returned one comes from pyplot under the
    caller's backend, so that a notebook shows it inline."""
    if path is None:
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=figsize, **kw)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def finish(fig: Any, path: Path | None) -> Any:
    """Save a `new_figure` to `path` (atomically) and return the path; with no path, return
    the figure itself."""
    if path is None:
        return fig
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    return path


def colormap(name: str) -> Any:
    """A matplotlib colormap by name (without pyplot)."""
    import matplotlib

    return matplotlib.colormaps[name]


def model_labels(models: Sequence[ModelResult], labels: Sequence[str] | None) -> list[str]:
    """The legend label of each model: the given labels, else the models' names."""
    return list(labels) if labels is not None else [m.name for m in models]


def depth_axis(models: Sequence[ModelResult]) -> tuple[bool, str]:
    """Relative depth (layer / L) when the models differ in depth, so that their curves
    share one axis; the plain layer index otherwise."""
    depths = {m.num_layers for m in models}
    return (True, "relative depth (layer / L)") if len(depths) > 1 else (False, "layer")


def layer_xs(model: ModelResult, normalize: bool) -> list[float]:
    depth = max(int(model.num_layers or 1), 1)
    return [r.layer / depth if normalize else r.layer for r in model.layers]


def layer_line(
    ax: Any, xs: list[float], model: ModelResult, metric: str, color: Any, style: str, label: str
) -> None:
    """One metric of a model against depth, with its 95% band where every layer has one; a
    metric some layer lacks is not drawn."""
    ys = [r.value(metric) for r in model.layers]
    if any(y is None for y in ys):
        return
    ax.plot(xs, ys, style, color=color, label=label, lw=1.6, ms=3)
    ci = [r.interval(metric) for r in model.layers]
    if all(c is not None for c in ci):
        ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.15, lw=0)
