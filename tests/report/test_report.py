"""`causalshift report`: built from the hand-made fixture result files in tests/fixtures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from causalshift.cli import main
from causalshift.errors import UserError
from causalshift.report.build import mean_ci
from causalshift.report.sources import find_sources
from causalshift.results import mode_label, run_info

FIXTURES = Path(__file__).parents[1] / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(FIXTURES), "--out", str(out)]) == 0
    return out


def test_report_tables_come_from_fixture_numbers(report: Path) -> None:
    md = (report / "report.md").read_text()
    # val loss per mode: baseline seeds 5.10 and 5.20 -> mean 5.15 ± t(1) * sd / sqrt(2)
    assert "| baseline | 2 | 1,2 | 30,720 | 5.1500 ± 0.6353 | 5.1000, 5.2000 |" in md
    assert "| fixed K=3 | 1 | 1 | 30,720 | 5.7000 | 5.7000 |" in md
    assert "| gate | 1 | 1 | 30,720 | 5.0500 | 5.0500 |" in md
    # benchmarks: acc_norm is the primary metric; two seeds combine their standard errors
    assert "| baseline | 2 | 0.3700 ± 0.0277 | 0.6100 ± 0.0139 |" in md
    assert "| gate | 1 | 0.4400 ± 0.0392 | 0.6300 ± 0.0196 |" in md
    assert "| fixed K=3 | arc_easy | acc | none | 1 | 0.3000 ± 0.0392 |" in md
    # shift layers from results.json (null -> never)
    assert "| fixture-b | LlamaForCausalLM | 8 | 1000 | 5 | 7 | never |" in md
    # sweep (figure 4 table) and the gate's final distribution (figure 5 table)
    assert "| cpu-small sweep | 3 | 1 | 5.7000 | 0.6000 |" in md
    assert "| gate_s1 | gate | 30 | 3 | 0.571 | 0.14 0.14 0.57 0.14 |" in md
    assert "lm_eval 0.4.13" in md  # environment and versions


def test_report_figures_and_html(report: Path) -> None:
    for name in ("topk_match", "similarity", "val_loss_vs_cut_layer", "gate_p", "val_loss"):
        data = (report / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"]({name}.png)" in (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<img src="topk_match.png"' in page and page.count("<table>") >= 6
    assert "5.1500 ± 0.6353" in page


def test_report_without_sweep_json_draws_cut_layers_from_runs(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "runs", tmp_path / "runs")
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "val_loss_vs_cut_layer.png").read_bytes().startswith(PNG_MAGIC)
    md = (out / "report.md").read_text()
    assert "| cpu-small (runs) | 3 | 1 | 5.7000 | 0.5500 |" in md  # vs the 2-seed baseline 5.15
    assert not (out / "topk_match.png").exists()  # no analyze results given


def test_report_on_empty_or_missing_dir_is_user_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no result files" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    with pytest.raises(UserError):
        find_sources([tmp_path / "nope"])


def test_report_rejects_corrupt_json(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{not json")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2


def test_report_names_a_wrongly_shaped_result_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text('{"model": "x", "layers": []}')
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err  # before: only "no result files found in ..."
    assert f'{tmp_path / "a" / "results.json"} has no "models" list' in err
    (tmp_path / "a" / "eval.json").write_text('{"results": {"task": 1}}')
    with pytest.raises(UserError, match=r"has no \"models\" list .*\(and 1 more\)"):
        find_sources([tmp_path / "a"])
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text('{"runs": 5}')  # before: a TypeError
    with pytest.raises(UserError, match=r'sweep\.json has no "runs" list'):
        find_sources([tmp_path / "s"])


def test_report_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from causalshift.cli import main\n"
        f"rc = main(['report', {str(FIXTURES)!r}, '--out', {str(tmp_path / 'r')!r}])\n"
        "bad = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
        "assert rc == 0 and not bad, (rc, bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r" / "report.md").is_file()


def test_eval_json_in_run_dir_is_matched_to_its_run() -> None:
    src = find_sources([FIXTURES / "runs"])
    assert {r.path.name: len(r.evals) for r in src.runs} == {
        "baseline_s1": 1,
        "baseline_s2": 1,
        "fixed3_s1": 1,
        "gate_s1": 1,
    }
    assert not src.evals
    run = next(r for r in src.runs if r.path.name == "gate_s1")
    assert run.final_val_loss == pytest.approx(5.05) and len(run.gate_history) == 3


def test_run_info_and_labels() -> None:
    assert mode_label(run_info({"model_type": "gpt2"})) == "baseline"
    cfg = {"model": {"n_layer": 6, "residual": {"mode": "fixed", "cut_layer": 4, "alpha": 0.5}}}
    assert mode_label(run_info(cfg)) == "fixed K=4 (alpha=0.5)"
    hf = {"model_type": "causalshift_gpt", "causalshift": {"residual": {"mode": "gate"}}}
    assert mode_label(run_info(hf)) == "gate"


def test_mean_ci() -> None:
    assert mean_ci([2.0]) == (2.0, None)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3**0.5)
