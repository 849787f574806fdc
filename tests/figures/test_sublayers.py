"""sublayers.png, and the lens figures with the 2L+1 rows of `analyze --sublayers`, drawn
from hand-made records."""

from __future__ import annotations

from pathlib import Path

from causalshift.figures import analyze_figures, plot_similarity, plot_sublayers, plot_topk
from causalshift.figures.common import layer_xs
from causalshift.figures.sublayers import panel_metrics
from causalshift.results import AnalyzeResult, LayerRow, ModelResult, SublayerRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = (
    "top1_input",
    "top1_output",
    "top5_input",
    "top5_output",
    "cos_input",
    "cos_output",
    "cos_random",
    "projection",
    "logprob_output",
)


def sublayer_model(num_layers: int = 2, name: str = "m") -> ModelResult:
    """A model of `num_layers` blocks with rows 0, 1.attn, 1, ... and contributions."""
    rows = []
    for r in range(2 * num_layers + 1):
        layer, attn = (r + 1) // 2, r % 2 == 1
        values = {k: 0.1 * r for k in METRICS}
        ci = {k: [v - 0.01, v + 0.01] for k, v in values.items()}
        extra = {"label": f"{layer}.attn", "depth": (layer - 0.5) / num_layers} if attn else {}
        rows.append(LayerRow(layer=layer, values=values, ci95=ci, **extra))
    parts = ("logprob_output", "top1_output", "top5_output", "projection")
    subs = [
        SublayerRow(
            layer=layer,
            attn={k: 0.1 for k in parts},
            mlp={k: -0.05 * layer for k in parts},
            ci95={p: {k: [-0.2, 0.2] for k in parts} for p in ("attn", "mlp")},
        )
        for layer in range(1, num_layers + 1)
    ]
    return ModelResult(name=name, num_layers=num_layers, layers=rows, sublayers=subs)


def test_rows_sit_at_their_depth() -> None:
    model = sublayer_model(2)
    assert layer_xs(model, normalize=False) == [0, 0.5, 1, 1.5, 2]
    assert layer_xs(model, normalize=True) == [0, 0.25, 0.5, 0.75, 1.0]
    assert [r.layer for r in model.block_layers()] == [0, 1, 2]


def test_sublayers_figure(tmp_path: Path) -> None:
    models = [sublayer_model(2, "a"), sublayer_model(4, "b")]
    assert panel_metrics(models) == ["logprob_output", "top5_output", "projection"]
    path = plot_sublayers(models, tmp_path / "sublayers.png", labels=["A", "B"])
    assert path.read_bytes().startswith(PNG_MAGIC)
    plain = ModelResult(name="p", num_layers=2, layers=sublayer_model(2).block_layers())
    assert plot_sublayers([plain], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    fig = plot_sublayers(models[:1], None)  # a Figure for notebooks: 1 model x 3 metrics
    assert len(fig.axes) == 3
    fig.clf()


def test_lens_figures_with_sublayer_rows(tmp_path: Path) -> None:
    models = [sublayer_model(2, "a"), sublayer_model(3, "b")]  # depths differ: normalized
    assert plot_topk(models, tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    assert plot_similarity(models, tmp_path / "s.png").read_bytes().startswith(PNG_MAGIC)
    fig = plot_topk(models[:1], None)
    xs = list(fig.axes[0].lines[0].get_xdata())
    assert xs == [0, 0.5, 1, 1.5, 2]  # one model: the layer axis, l.attn at l - 0.5
    fig.clf()
    made = analyze_figures(AnalyzeResult(models=models), tmp_path / "out")
    assert [p.name for p in made] == ["topk_match.png", "similarity.png", "sublayers.png"]
    plain = AnalyzeResult(models=[ModelResult(name="p", num_layers=2, layers=models[0].layers)])
    names = [p.name for p in analyze_figures(plain, tmp_path / "plain")]
    assert "sublayers.png" not in names


def test_block_one_off_scale_is_noted() -> None:
    model = sublayer_model(4)
    model.sublayers[0].attn["projection"] = 5.0  # the embedding's jump dwarfs the rest
    fig = plot_sublayers([model], None)
    ax = fig.axes[2]  # logprob_output, top5_output, projection
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["block 1 off scale: attention +5, MLP -0.05"]
    low, high = ax.get_ylim()
    assert high < 1.0 and low > -1.0  # fitted to blocks 2..4 (their bands are +-0.2)
    assert not fig.axes[0].texts  # logprob: no outlier, no note
    fig.clf()
