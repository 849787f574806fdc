"""view.html: the per-token logit-lens picture as one self-contained page (no script, no
network): the grid of `figures.view` as a table that scrolls sideways for long prompts;
hovering or focusing a cell (Tab moves between cells) shows its top-k tokens with their
probabilities and the ranks of t_i and t_{i+1}."""

from __future__ import annotations

import html
from pathlib import Path

from causalshift.figures.view import (
    CMAP,
    NEUTRAL,
    TokenGrid,
    display_token,
    probability_color,
    text_color,
)
from causalshift.io import write_text

FILE_NAME = "view.html"

STYLE = """
body { font: 13px/1.35 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 16px; margin: 0 0 4px; }
p.key { margin: 0 0 10px; color: #444; }
.key span { display: inline-block; padding: 0 6px; margin: 0 2px; }
.scroll { overflow-x: auto; padding-bottom: 16em; }
table { border-collapse: separate; border-spacing: 2px; }
th { font-weight: normal; color: #555; white-space: nowrap; padding: 0 4px; }
th.layer { position: sticky; left: 0; background: #fff; text-align: right; z-index: 1; }
thead th, tfoot th { font-family: ui-monospace, monospace; }
td { position: relative; min-width: 3.2em; max-width: 9em; padding: 3px 5px;
     font-family: ui-monospace, monospace; white-space: nowrap; overflow: visible;
     text-align: center; border: 2px solid transparent; cursor: default; }
td.output { border: 2px solid #d62728; font-weight: bold; }
td.input { border: 2px dashed #000; font-style: italic; }
td:focus { outline: 3px solid #ff9800; z-index: 3; }
td .tip { display: none; position: absolute; top: 100%; left: 0; z-index: 4;
          background: #fffef4; color: #222; border: 1px solid #999; padding: 6px 8px;
          box-shadow: 0 2px 6px rgba(0,0,0,.25); font-weight: normal; font-style: normal;
          text-align: left; }
td.right .tip { left: auto; right: 0; }
td:hover .tip, td:focus .tip { display: block; }
.tip table { border-spacing: 0; }
.tip td { padding: 0 6px 0 0; border: 0; min-width: 0; text-align: left; }
.tip td.p { text-align: right; }
.tip .rank { margin-top: 4px; color: #444; font-family: system-ui, sans-serif; }
"""


def _tip(grid: TokenGrid, layer: int, i: int) -> str:
    """The hover box of one cell: top-k tokens and probabilities, the ranks of the targets."""
    rows = "".join(
        f"<tr><td>{html.escape(display_token(t))}</td><td class=p>{p:.3f}</td></tr>"
        for t, p in zip(grid.topk_tokens[layer][i], grid.topk_probs[layer][i], strict=True)
    )
    t_in = html.escape(display_token(grid.tokens[i]))
    ranks = f"rank of t<sub>i</sub> ({t_in}): {grid.rank_input[layer][i]}"
    if i + 1 < len(grid.tokens):
        t_out = html.escape(display_token(grid.tokens[i + 1]))
        p = grid.target_prob[layer][i]
        ranks += f"<br>rank of t<sub>i+1</sub> ({t_out}): {grid.rank_output[layer][i]}, p = {p:.3f}"
    return (
        f"<div class=tip>layer {layer}, position {i}<table>{rows}</table>"
        f"<div class=rank>{ranks}</div></div>"
    )


def _cell(grid: TokenGrid, layer: int, i: int) -> str:
    from matplotlib.colors import to_hex

    p = grid.target_prob[layer][i]
    classes = [c for c in (grid.mark(layer, i), "right" if i >= len(grid.tokens) / 2 else "") if c]
    style = f"background:{to_hex(probability_color(p))};color:{text_color(p)}"
    token = html.escape(display_token(grid.top_tokens[layer][i]))
    return (
        f'<td tabindex=0 class="{" ".join(classes)}" style="{style}">{token}'
        f"{_tip(grid, layer, i)}</td>"
    )


def view_html(grid: TokenGrid) -> str:
    """The page's text."""
    from matplotlib.colors import to_hex

    head = "".join(f"<th>{html.escape(display_token(t))}</th>" for t in grid.tokens[1:])
    foot = "".join(f"<th>{html.escape(display_token(t))}</th>" for t in grid.tokens)
    body = "".join(
        f"<tr><th class=layer>{layer}</th>"
        + "".join(_cell(grid, layer, i) for i in range(len(grid.tokens)))
        + "</tr>\n"
        for layer in range(grid.num_layers, -1, -1)
    )
    low, high = (to_hex(probability_color(p)) for p in (0.0, 1.0))
    key = (
        f'<span style="background:{low}">p(t<sub>i+1</sub>) = 0</span>'
        f'<span style="background:{high};color:white">p = 1</span>'
        f'<span style="background:{NEUTRAL}">no t<sub>i+1</sub></span>'
        '<span style="border:2px solid #d62728;font-weight:bold">top-1 = t<sub>i+1</sub></span>'
        '<span style="border:2px dashed #000;font-style:italic">top-1 = t<sub>i</sub></span>'
    )
    title = html.escape(f"logit lens: {grid.model}")
    return (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
        f"<p class=key>Each cell: the top-1 token decoded at that layer and position; colour "
        f"({CMAP}): the lens probability of the next token. {key} "
        "Hover or focus (Tab) a cell for its top tokens. ␣ is a space, ⏎ a newline.</p>\n"
        "<div class=scroll><table>\n"
        f"<thead><tr><th class=layer>t<sub>i+1</sub></th>{head}<th></th></tr></thead>\n"
        f"<tbody>\n{body}</tbody>\n"
        f"<tfoot><tr><th class=layer>t<sub>i</sub></th>{foot}</tr></tfoot>\n"
        "</table></div>\n</body></html>\n"
    )


def write_view_html(grid: TokenGrid, path: Path) -> Path:
    """Write view.html (atomically) and return its path."""
    write_text(path, view_html(grid))
    return path
