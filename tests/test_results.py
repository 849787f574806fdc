"""Result records: each file reads back to itself, byte for byte for real command outputs.

tests/fixtures/records/golden-* are outputs of the commands themselves (`bench.golden write`,
renamed so that the report tests' walk over tests/fixtures does not pick them up); the other
fixtures are hand-made and lack keys that real files have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from causalshift.results import (
    LAYERS_CSV_NAME,
    RESULTS_NAME,
    AnalyzeResult,
    EvalResult,
    LayerRow,
    MetricRecord,
    RunSummary,
    SweepResult,
    SweepRunRecord,
    common_topk_ks,
    loss_stats,
    mode_label,
    read_metrics,
    read_run,
    read_summary,
    run_info,
    sweep_stats,
)

FIXTURES = Path(__file__).parent / "fixtures"
RECORDS = FIXTURES / "records"
GOLDEN = [
    (AnalyzeResult, "golden-results.json"),
    (SweepResult, "golden-sweep.json"),
    (EvalResult, "golden-eval.json"),
    (RunSummary, "golden-summary.json"),
]
HAND_MADE = [
    (AnalyzeResult, "analyze/results.json"),
    (SweepResult, "sweep/sweep.json"),
    *[(EvalResult, f"runs/{name}/eval.json") for name in ("baseline_s1", "gate_s1")],
]


@pytest.mark.parametrize(("record", "name"), GOLDEN, ids=[n for _, n in GOLDEN])
def test_command_outputs_read_back_byte_for_byte(record, name) -> None:
    text = (RECORDS / name).read_text()
    data = record.from_dict(json.loads(text)).to_dict()
    assert json.dumps(data, indent=2) + "\n" == text


@pytest.mark.parametrize(("record", "name"), HAND_MADE, ids=[n for _, n in HAND_MADE])
def test_hand_made_files_read_back_to_themselves(record, name) -> None:
    data = json.loads((FIXTURES / name).read_text())
    assert record.from_dict(data).to_dict() == data


def test_analyze_result_writes_results_json_and_layers_csv(tmp_path: Path) -> None:
    result = AnalyzeResult.read(RECORDS / "golden-results.json")
    assert result.write(tmp_path) == tmp_path / RESULTS_NAME
    assert (tmp_path / RESULTS_NAME).read_text() == (RECORDS / "golden-results.json").read_text()
    assert (tmp_path / LAYERS_CSV_NAME).read_text() == (RECORDS / "golden-layers.csv").read_text()
    (model,) = result.models
    assert model.shift_layer.crossover == 2 and model.topk_ks() == [1, 5]
    assert AnalyzeResult.read(tmp_path).to_dict() == result.to_dict()  # a folder reads too


def test_tolerant_reads_keep_unknown_keys_and_leave_out_missing_ones() -> None:
    sweep = SweepResult.from_dict(json.loads((FIXTURES / "sweep" / "sweep.json").read_text()))
    assert sweep.extra == {"layers": [1, 2, 3, 4]}
    assert {"schema_version", "baseline", "by_layer"} <= sweep.absent
    assert sweep.runs[0].status is None and "status" not in sweep.runs[0].to_dict()
    analysis = AnalyzeResult.read(FIXTURES / "analyze" / "results.json")
    a, b = analysis.models
    assert a.vocab_size is None and "vocab_size" not in a.to_dict()
    assert common_topk_ks(analysis.models) == [1, 5]
    assert b.shift_layer.crossover is None and "crossover" in b.to_dict()["shift_layer"]


def test_layer_row_keeps_its_metric_order_and_intervals() -> None:
    d = {"layer": 2, "top1_input": 0.5, "cos_input": 0.1, "ci95": {"top1_input": [0.4, 0.6]}}
    row = LayerRow.from_dict(d)
    assert list(row.to_dict()) == ["layer", "top1_input", "cos_input", "ci95"]
    assert row.value("cos_input") == 0.1 and row.value("projection") is None
    assert row.interval("top1_input") == (0.4, 0.6) and row.interval("cos_input") is None


def test_metrics_lines_and_summary(tmp_path: Path) -> None:
    text = (RECORDS / "golden-metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 9, "tok')  # killed mid-line
    records = read_metrics(tmp_path)
    assert "".join(r.json_line() for r in records) == text
    assert records[0].val_loss is not None and records[0].train_loss is None
    assert read_metrics(tmp_path / "nothing.jsonl") == []
    assert read_summary(tmp_path) is None
    RunSummary(step=6, tokens=3072, final_val_loss=9.5, seconds=1.0).write(tmp_path)
    assert read_summary(tmp_path).final_val_loss == 9.5
    (tmp_path / "summary.json").write_text("{broken")
    assert read_summary(tmp_path) is None


def test_metric_record_keeps_the_key_order_of_metrics_jsonl() -> None:
    rec = MetricRecord(step=3, tokens=96, train_loss=2.0)
    assert list(rec.to_dict())[:4] == ["step", "tokens", "train_loss", "val_loss"]
    assert json.loads(rec.json_line())["gate_p"] is None


def test_training_run_of_a_fixture_folder() -> None:
    run = read_run(FIXTURES / "runs" / "gate_s1")
    assert (run.name, run.label, run.info["seed"]) == ("gate_s1", "gate", 1)
    assert run.final_val_loss == pytest.approx(5.05) and run.tokens == 30 * 1024
    assert [step for step, _ in run.gate_history] == [10, 20, 30]
    assert read_run(FIXTURES / "sweep").info == {}  # no config.json: nothing known


def test_sweep_stats_by_hand() -> None:
    runs = [
        SweepRunRecord(mode="none", final_val_loss=3.0),
        SweepRunRecord(mode="none", final_val_loss=3.2),
        SweepRunRecord(mode="fixed", cut_layer=2, final_val_loss=3.5),
        SweepRunRecord(mode="fixed", cut_layer=2, final_val_loss=3.9),
        SweepRunRecord(mode="fixed", cut_layer=1, final_val_loss=None),  # failed: left out
        SweepRunRecord(mode="fixed", cut_layer=3, final_val_loss=4.0),
    ]
    baseline, by_layer = sweep_stats(runs)
    assert (baseline.mean, baseline.min, baseline.max) == (pytest.approx(3.1), 3.0, 3.2)
    assert baseline.std == pytest.approx(0.1414, abs=1e-4) and baseline.n == 2
    assert "cut_layer" not in baseline.to_dict()
    two, three = by_layer
    assert list(two.to_dict()) == ["cut_layer", "mean", "min", "max", "std", "n"]
    assert (two.cut_layer, two.min, two.max, two.n) == (2, 3.5, 3.9, 2)
    assert two.mean == pytest.approx(3.7) and two.std == pytest.approx(0.2828, abs=1e-4)
    assert (three.cut_layer, three.std, three.n) == (3, 0.0, 1)  # one seed: std 0
    assert sweep_stats(runs[2:])[0] is None  # no baseline run


def test_sweep_with_stats_matches_what_sweep_json_holds() -> None:
    golden = SweepResult.read(RECORDS / "golden-sweep.json")
    assert golden.with_stats().to_dict() == golden.to_dict()
    hand = SweepResult.read(FIXTURES / "sweep").with_stats()
    assert hand.baseline.mean == 5.1 and [r.cut_layer for r in hand.by_layer] == [1, 2, 3, 4]
    assert loss_stats([5.0]).to_dict() == {"mean": 5.0, "min": 5.0, "max": 5.0, "std": 0.0, "n": 1}


def test_run_info_and_mode_labels() -> None:
    cfg = json.loads((FIXTURES / "runs" / "fixed3_s1" / "config.json").read_text())
    assert run_info(cfg) == {
        "mode": "fixed",
        "cut_layer": 3,
        "alpha": 0.0,
        "seed": 1,
        "preset": "cpu-small",
        "n_layer": 4,
    }
    assert mode_label(run_info(cfg)) == "fixed K=3"
    assert mode_label({"mode": "gate-hard", "alpha": 0.25}) == "gate-hard (alpha=0.25)"
    assert mode_label({}) == "unknown"


def test_records_and_figures_import_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys\n"
        "import causalshift.results, causalshift.figures\n"
        "bad = [m for m in ('torch', 'transformers', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
