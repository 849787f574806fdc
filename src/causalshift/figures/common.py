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
    """The legend label of each model: the given labels, else the models' names (with the
    lens when it is not the logit lens: `ModelResult.label`)."""
    return list(labels) if labels is not None else [m.label for m in models]


# With more than one lens in a figure (`analyze --lens logit,tuned:DIR`) the lens sets the
# line (solid logit, dashed tuned) and a metric's own style (input dashed, output solid with
# dots, the rest dotted) becomes its marker, so that each (model, lens, metric) stays apart.
LENS_LINES = {"logit": "-", "tuned": "--"}
METRIC_MARKERS = {"--": "x", "-o": "o", ":": "."}


def several_lenses(models: Sequence[ModelResult]) -> bool:
    return len({m.lens_kind for m in models}) > 1


def lens_style(style: str, model: ModelResult, several: bool) -> str:
    """The format string of a metric drawn in `style` for `model`: `style` itself when the
    figure holds one lens, else the metric's marker on its lens' line."""
    if not several:
        return style
    return METRIC_MARKERS.get(style, "") + LENS_LINES.get(model.lens_kind, "-.")


def lens_title(models: Sequence[ModelResult]) -> str:
    """"logit lens", "tuned lens" or "logit and tuned lenses": the lenses of a figure."""
    kinds = sorted({m.lens_kind for m in models}, key=lambda k: (k != "logit", k))
    return f"{kinds[0]} lens" if len(kinds) == 1 else f"{' and '.join(kinds)} lenses"


def model_colors(models: Sequence[ModelResult]) -> list[int]:
    """Colour index of each result: one per model (name and source), shared by its lenses."""
    seen: dict[tuple[str, str | None], int] = {}
    return [seen.setdefault((m.name, m.source), len(seen)) for m in models]


def depth_axis(models: Sequence[ModelResult]) -> tuple[bool, str]:
    """Relative depth (layer / L) when the models differ in depth, so that their curves
    share one axis; the plain layer index otherwise."""
    depths = {m.num_layers for m in models}
    return (True, "relative depth (layer / L)") if len(depths) > 1 else (False, "layer")


def layer_xs(model: ModelResult, normalize: bool) -> list[float]:
    """Each row's x: its layer (l - 0.5 for an `l.attn` row of `--sublayers`), or that over
    L when normalized."""
    depth = max(int(model.num_layers or 1), 1)
    return [r.position / depth if normalize else r.position for r in model.layers]


def layer_line(
    ax: Any, xs: list[float], model: ModelResult, metric: str, color: Any, style: str, label: str
) -> None:
    """One metric of a model against depth, with its 95% band where every layer has one; a
    metric some layer lacks is not drawn."""
    ys = [r.value(metric) for r in model.layers]
    if any(y is None for y in ys):
        return
    ax.plot(xs, ys, style, color=color, label=label, lw=1.6, ms=3)
    attn = [i for i, r in enumerate(model.layers) if not r.is_block]
    if attn and "o" in style:  # `l.attn` rows (--sublayers): hollow markers
        ax.plot([xs[i] for i in attn], [ys[i] for i in attn], "o", color=color, mfc="white", ms=3)
    ci = [r.interval(metric) for r in model.layers]
    if all(c is not None for c in ci):
        ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.15, lw=0)
