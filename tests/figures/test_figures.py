"""Every figure, drawn from the fixture records: a PNG when there is data, None otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from causalshift.figures import (
    SweepSeries,
    analyze_figures,
    plot_gate,
    plot_loss,
    plot_similarity,
    plot_sweep,
    plot_topk,
    plot_val_loss,
    run_figures,
)
from causalshift.results import AnalyzeResult, SweepResult, TrainingRun, read_run

FIXTURES = Path(__file__).parents[1] / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNS = ("baseline_s1", "baseline_s2", "fixed3_s1", "gate_s1")


def _png(path: Path | None) -> bool:
    return path is not None and path.read_bytes().startswith(PNG_MAGIC)


@pytest.fixture(scope="module")
def runs() -> list[TrainingRun]:
    return [read_run(FIXTURES / "runs" / name) for name in RUNS]


def test_analysis_figures(tmp_path: Path) -> None:
    models = AnalyzeResult.read(FIXTURES / "analyze").models
    assert _png(plot_topk(models, tmp_path / "t.png", labels=["a (dir1)", "b (dir2)"]))
    assert _png(plot_similarity(models[:1], tmp_path / "s.png"))
    assert plot_topk([], tmp_path / "none.png") is None
    assert plot_similarity([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    result = AnalyzeResult.read(FIXTURES / "analyze")
    made = analyze_figures(result, tmp_path / "out")
    assert [p.name for p in made] == ["topk_match.png", "similarity.png"]


def test_training_figures(runs: list[TrainingRun], tmp_path: Path) -> None:
    assert _png(plot_loss(runs[0], tmp_path / "loss.png"))
    assert _png(plot_val_loss(runs, tmp_path / "val.png"))
    assert _png(plot_gate(runs, tmp_path / "gate.png"))  # only gate_s1 has a panel
    assert plot_gate(runs[:3], tmp_path / "none.png") is None
    assert plot_val_loss([], tmp_path / "none.png") is None
    empty = TrainingRun(tmp_path, {}, [])
    assert plot_loss(empty, tmp_path / "none.png") is None


def test_run_figures_of_a_run_folder(tmp_path: Path) -> None:
    for name in ("gate_s1", "fixed3_s1"):
        shutil.copytree(FIXTURES / "runs" / name, tmp_path / name)
    made = run_figures(tmp_path / "gate_s1")
    assert [p.relative_to(tmp_path).as_posix() for p in made] == [
        "gate_s1/figures/loss.png",
        "gate_s1/figures/gate_p.png",
    ]
    assert [p.name for p in run_figures(tmp_path / "fixed3_s1")] == ["loss.png"]  # no gate


def test_sweep_figure(tmp_path: Path) -> None:
    hand = SweepResult.read(FIXTURES / "sweep")
    assert plot_sweep([SweepSeries(hand)], tmp_path / "none.png") is None  # no stats yet
    one = SweepSeries(hand.with_stats())
    assert _png(plot_sweep([one], tmp_path / "one.png"))
    two = SweepSeries(hand.with_stats(), "runs", gates=(("gate", 5.05),))
    assert _png(plot_sweep([one, two], tmp_path / "two.png"))


def test_drawing_every_figure_imports_no_torch(tmp_path: Path) -> None:
    run = shutil.copytree(FIXTURES / "runs" / "gate_s1", tmp_path / "gate_s1")
    analysis = FIXTURES / "analyze"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from causalshift.figures import analyze_figures, run_figures\n"
        "from causalshift.results import AnalyzeResult\n"
        f"analyze_figures(AnalyzeResult.read({str(analysis)!r}), Path({str(tmp_path)!r}))\n"
        f"run_figures(Path({str(run)!r}))\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "figures" / "gate_p.png").is_file() and (tmp_path / "topk_match.png").is_file()
