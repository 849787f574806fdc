"""The per-token logit-lens picture of one prompt (`causalshift view`): view.png.

Rows are layers (0 at the bottom, L at the top), columns the prompt's tokens t_i. Each cell
shows the top-1 token the lens decodes at that layer and position; its colour is the lens
probability of the next token t_{i+1} (the last column has no t_{i+1}: grey). A solid red
frame (bold text) marks a top-1 equal to t_{i+1}, a dashed black frame (italic text) a top-1
equal to t_i. The picture is drawn from a `TokenGrid` (plain lists), never from a model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.figures.common import colormap, finish, new_figure

FILE_NAME = "view.png"
CMAP = "Blues"  # probability of t_{i+1}: white (0) to dark blue (1)
NEUTRAL = "#e4e4e4"  # cells without a t_{i+1} (the last column)
OUTPUT_MARK = "#d62728"  # frame of cells whose top-1 is t_{i+1}
INPUT_MARK = "#000000"  # (dashed) frame of cells whose top-1 is t_i
MAX_ROWS = 48  # deeper models show every n-th layer in the PNG (the last always)
MAX_CHARS = 10  # longer tokens are cut with an ellipsis in the PNG (the HTML shows them whole)
# How whitespace is shown, so that " the" and "the", or "\n" and "", stay distinguishable.
WHITESPACE = {" ": "\u2423", "\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d"}


@dataclass
class TokenGrid:
    """The lens picture of one prompt: layers 0..L x positions 0..T-1.

    top_*: the top-1 decoded token; target_prob: the lens probability of t_{i+1} (None in
    the last column); topk_*: the top-k tokens and probabilities; rank_input / rank_output:
    the rank of t_i / t_{i+1} (entries with a strictly larger logit; None in the last
    column for t_{i+1})."""

    model: str
    token_ids: list[int]  # (T,) the prompt as the tokenizer encodes it
    tokens: list[str]  # (T,) each as tokenizer.decode([id]) gives it
    top_ids: list[list[int]]  # (L+1, T)
    top_tokens: list[list[str]]
    target_prob: list[list[float | None]]
    topk_tokens: list[list[list[str]]]  # (L+1, T, k)
    topk_probs: list[list[list[float]]]
    rank_input: list[list[int]]
    rank_output: list[list[int | None]]

    @property
    def num_layers(self) -> int:
        return len(self.top_ids) - 1

    def mark(self, layer: int, i: int) -> str | None:
        """ "output" where the top-1 is t_{i+1}, "input" where it is t_i, else None."""
        top = self.top_ids[layer][i]
        if i + 1 < len(self.token_ids) and top == self.token_ids[i + 1]:
            return "output"
        return "input" if top == self.token_ids[i] else None


def display_token(text: str, max_chars: int | None = None) -> str:
    """A token as shown in a cell: whitespace made visible, empty as '∅', cut at max_chars."""
    shown = "".join(WHITESPACE.get(c, c) for c in text) or "\u2205"
    if max_chars is not None and len(shown) > max_chars:
        shown = shown[: max_chars - 1] + "\u2026"
    return shown


def _label(text: str) -> str:
    """A token as the PNG writes it: cut, and a '$' escaped (it would start math text)."""
    return display_token(text, MAX_CHARS).replace("$", r"\$")


def shown_layers(num_layers: int, max_rows: int = MAX_ROWS) -> list[int]:
    """The layers a picture shows: all up to max_rows, else every n-th, the last always."""
    step = max(1, -(-(num_layers + 1) // max_rows))
    layers = list(range(0, num_layers + 1, step))
    if layers[-1] != num_layers:
        layers.append(num_layers)
    return layers


def probability_color(p: float | None) -> Any:
    """A cell's background: the colormap at p, neutral grey without a target."""
    return NEUTRAL if p is None else colormap(CMAP)(0.08 + 0.84 * p)


def text_color(p: float | None) -> str:
    return "white" if p is not None and p > 0.55 else "black"


def plot_view(grid: TokenGrid, path: Path | None) -> Any:
    """view.png of `grid` (returns the path; with path None, the matplotlib Figure)."""
    from matplotlib.patches import Rectangle

    layers = shown_layers(grid.num_layers)
    width = max(len(display_token(t, MAX_CHARS)) for row in grid.top_tokens for t in row)
    cell_w, cell_h = max(0.5, 0.075 * min(width, MAX_CHARS) + 0.2), 0.27
    n_cols = len(grid.token_ids)
    # the cells get exactly their size; the margins hold the labels (bbox_inches="tight"
    # then trims what they do not use)
    left, right, bottom, top = 0.6, 0.1, 1.0, 1.3
    width_in, height_in = left + right + cell_w * n_cols, bottom + top + cell_h * len(layers)
    fig, ax = new_figure(path, (width_in, height_in))
    fig.subplots_adjust(
        left=left / width_in,
        right=1 - right / width_in,
        bottom=bottom / height_in,
        top=1 - top / height_in,
    )
    for row, layer in enumerate(layers):
        for i in range(n_cols):
            p = grid.target_prob[layer][i]
            mark = grid.mark(layer, i)
            ax.add_patch(Rectangle((i, row), 1, 1, facecolor=probability_color(p), lw=0))
            if mark is not None:
                color, style = (OUTPUT_MARK, "-") if mark == "output" else (INPUT_MARK, "--")
                frame = Rectangle((i + 0.06, row + 0.08), 0.88, 0.84, fill=False, lw=1.3)
                frame.set(edgecolor=color, linestyle=style)
                ax.add_patch(frame)
            ax.text(
                i + 0.5,
                row + 0.5,
                _label(grid.top_tokens[layer][i]),
                ha="center",
                va="center",
                fontsize=7,
                color=text_color(p),
                fontweight="bold" if mark == "output" else "normal",
                fontstyle="italic" if mark == "input" else "normal",
            )
    _axes(ax, grid, layers)
    with warnings.catch_warnings():  # tokens of scripts the font lacks are drawn as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        return finish(fig, path)


def _axes(ax: Any, grid: TokenGrid, layers: list[int]) -> None:
    """Layer labels on the left, t_i below, t_{i+1} above, the key as the title."""
    n_cols = len(grid.token_ids)
    ax.set_xlim(0, n_cols)
    ax.set_ylim(0, len(layers))
    ax.set_yticks([r + 0.5 for r in range(len(layers))], [str(layer) for layer in layers])
    ax.set_ylabel("layer")
    ax.set_xticks(
        [i + 0.5 for i in range(n_cols)],
        [_label(t) for t in grid.tokens],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    ax.set_xlabel("input token $t_i$")
    top = ax.secondary_xaxis("top")
    top.set_xticks(
        [i + 0.5 for i in range(n_cols - 1)],
        [_label(t) for t in grid.tokens[1:]],
        rotation=60,
        ha="left",
        fontsize=7,
    )
    top.set_xlabel("output token $t_{i+1}$")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(
        f"{grid.model}: top-1 token of the logit lens; colour = lens probability of "
        "$t_{i+1}$; red frame: top-1 = $t_{i+1}$, dashed: top-1 = $t_i$",
        fontsize=8,
        loc="left",
    )
