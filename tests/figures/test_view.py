"""view.png and view.html of `causalshift view`, drawn from a hand-made TokenGrid."""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from causalshift.figures.view import (
    TokenGrid,
    display_token,
    plot_view,
    shown_layers,
)
from causalshift.figures.view_html import view_html, write_view_html


def grid(num_tokens: int = 4, num_layers: int = 2) -> TokenGrid:
    """Prompt "<bos> a\\n b b ..." where layer 0 decodes the input, the last layer the next
    token (so both marks occur), and a middle layer something else."""
    words = ["<bos>", " a\n", " b", "$x$"] + [f" w{i}" for i in range(max(0, num_tokens - 4))]
    ids = list(range(num_tokens))
    tokens = words[:num_tokens]
    top = [ids[:]]  # layer 0: t_i
    top += [[90] * num_tokens for _ in range(num_layers - 1)]
    top += [ids[1:] + [7]]  # last layer: t_{i+1}
    names = {**dict(zip(ids, tokens, strict=True)), 90: " mid", 7: "?"}
    last = num_tokens - 1
    probs = [
        [None if i == last else (layer / num_layers) for i in ids]
        for layer in range(num_layers + 1)
    ]
    return TokenGrid(
        model="toy",
        token_ids=ids,
        tokens=tokens,
        top_ids=top,
        top_tokens=[[names[t] for t in row] for row in top],
        target_prob=probs,
        topk_tokens=[[[names[t], "<z>"] for t in row] for row in top],
        topk_probs=[[[0.7, 0.2] for _ in row] for row in top],
        rank_input=[[0 if layer == 0 else 3 for _ in ids] for layer in range(num_layers + 1)],
        rank_output=[
            [None if i == last else (0 if layer == num_layers else 9) for i in ids]
            for layer in range(num_layers + 1)
        ],
    )


def test_marks_and_whitespace() -> None:
    g = grid()
    assert g.num_layers == 2
    assert [g.mark(0, i) for i in range(4)] == ["input"] * 4
    assert [g.mark(2, i) for i in range(4)] == ["output"] * 3 + [None]
    assert g.mark(1, 0) is None
    assert display_token(" a\n") == "\u2423a\u23ce"
    assert display_token("") == "\u2205"
    assert display_token("abcdefghijkl", 5) == "abcd\u2026"
    assert display_token(" the") != display_token("the")


def test_shown_layers_keep_the_last() -> None:
    assert shown_layers(18) == list(range(19))
    many = shown_layers(80, max_rows=48)
    assert len(many) <= 49 and many[0] == 0 and many[-1] == 80


def test_png_and_figure(tmp_path: Path) -> None:
    path = plot_view(grid(), tmp_path / "view.png")
    assert path == tmp_path / "view.png" and Image.open(path).size[0] > 300
    assert isinstance(plot_view(grid(), None), Figure)


def test_png_of_64_tokens_is_readable(tmp_path: Path) -> None:
    """64 columns: each at least ~60 pixels wide, so 7-point tokens fit."""
    width, height = Image.open(plot_view(grid(64, 18), tmp_path / "view.png")).size
    assert width / 64 >= 60
    assert height / 19 >= 25


def test_html_is_self_contained_and_interactive(tmp_path: Path) -> None:
    g = grid(num_tokens=5)
    text = view_html(g)
    assert not re.search(r"https?://|<script|<link|<img|@import", text)
    cells = re.findall(r"<td tabindex=0[^>]*>", text)
    assert len(cells) == 3 * 5  # every cell can take the focus
    assert "td:hover .tip, td:focus .tip { display: block; }" in text
    assert text.count('class="output') == 4 and text.count('class="input') == 5
    assert "&lt;bos&gt;" in text and "<bos>" not in text  # tokens are escaped
    assert "\u2423a\u23ce" in text  # whitespace shown
    assert "rank of t<sub>i+1</sub> (\u2423b): 9, p = 0.500" in text
    assert "overflow-x: auto" in text  # wide prompts scroll
    # rows: layer 2 (top) .. 0 (bottom)
    assert [int(x) for x in re.findall(r"<th class=layer>(\d+)</th>", text)] == [2, 1, 0]
    path = write_view_html(g, tmp_path / "view.html")
    assert path.read_text(encoding="utf-8") == text
