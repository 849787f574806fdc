"""strata.png from result records: a PNG (or a Figure) when a model has strata, None
otherwise; the strata survive a results.json / layers.csv round trip."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

from causalshift.figures import analyze_figures, plot_strata
from causalshift.results import AnalyzeResult, LayerRow, ShiftLayers, StratumResult

FIXTURES = Path(__file__).parents[1] / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stratum(family: str, name: str, shift: float) -> StratumResult:
    rows = []
    for layer in range(4):
        values = {"top1_input": 1 - layer / 3, "top1_output": layer / 3 * shift}
        values |= {"top5_input": 1 - layer / 4, "top5_output": min(1.0, layer / 3 + shift / 4)}
        ci = {k: [v - 0.05, v + 0.05] for k, v in values.items()}
        rows.append(LayerRow(layer=layer, values=values, ci95=ci))
    return StratumResult(
        family=family,
        name=name,
        definition=f"{family} {name}",
        num_positions=10,
        num_sequences=2,
        layers=rows,
        shift_layer=ShiftLayers(input_until=1, output_from=2, crossover=2),
    )


def _with_strata() -> AnalyzeResult:
    result = AnalyzeResult.read(FIXTURES / "analyze")
    model = result.models[0]
    strata = [
        _stratum("frequency", "freq_low", 0.5),
        _stratum("frequency", "freq_high", 1.0),
        _stratum("copy", "new", 0.3),
        _stratum("copy", "copyable", 0.9),
    ]  # the fixture predates strata: its models lack the key
    result.models[0] = dataclasses.replace(model, strata=strata, absent=model.absent - {"strata"})
    return result


def test_strata_figure(tmp_path: Path) -> None:
    result = _with_strata()
    path = plot_strata(result.models, tmp_path / "strata.png")
    assert path is not None and path.read_bytes().startswith(PNG_MAGIC)
    fig = plot_strata(result.models, None)
    assert len(fig.axes) == 2  # one model with strata, two families
    assert plot_strata(AnalyzeResult.read(FIXTURES / "analyze").models, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    made = analyze_figures(result, tmp_path / "all")
    assert tmp_path / "all" / "strata.png" in made


def test_strata_round_trip_and_csv_columns(tmp_path: Path) -> None:
    result = _with_strata()
    result.write(tmp_path)
    back = AnalyzeResult.read(tmp_path)
    assert back.to_dict() == result.to_dict()
    assert back.models[0].strata[1].layers[2].value("top1_output") == 2 / 3
    rows = list(csv.DictReader(io.StringIO((tmp_path / "layers.csv").read_text())))
    plain = AnalyzeResult.read(FIXTURES / "analyze").layers_csv()
    assert len(rows) == len(plain.splitlines()) - 1  # no extra rows
    header = (tmp_path / "layers.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == plain.splitlines()[0].split(",")
    assert header[7:10] == ["freq_low", "freq_low_ci95_low", "freq_low_ci95_high"]
    first = result.models[0].name
    row = next(
        r
        for r in rows
        if r["model"] == first and r["layer"] == "3" and r["metric"] == "top1_output"
    )
    assert float(row["copyable"]) == 0.9 and float(row["copyable_ci95_high"]) == 0.9 + 0.05
    other = next(r for r in rows if r["model"] != first)
    assert other["copyable"] == ""  # the second model has no strata
