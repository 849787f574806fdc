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
    # sweep (figure 4 table; a sweep.json from before alpha lists: its runs take its alpha)
    assert "| cpu-small sweep | 3 | 0 | 1 | 5.7000 | +0.6000 (1 seed) |" in md
    assert "| cpu-small sweep | baseline | - | 1 | 5.1000 | 0 |" in md
    # and the gate's final distribution (figure 5 table)
    assert "| gate_s1 | gate | 30 | 3 | 0.571 | 0.14 0.14 0.57 0.14 |" in md
    assert "lm_eval 0.4.13" in md  # environment and versions


def test_report_paired_sweep_tables(report: Path) -> None:
    """tests/fixtures/sweep/alpha: 3 seeds, K in {1, 2} x alpha in {0, 0.5}, and the gate.
    Each cell: mean of d_s = loss_s - baseline_s and mean -/+ t(0.975, 2) sd(d) / sqrt(3)."""
    md = (report / "report.md").read_text()
    t2 = 4.303
    # final val losses of seeds 1, 2, 3 (make_fixtures.ALPHA_SWEEP)
    BASE, K1A0, K2A0 = (5.00, 5.10, 5.20), (5.30, 5.50, 5.70), (5.10, 5.40, 5.10)
    BEST, GATE = (4.90, 4.90, 5.05), (4.95, 5.00, 5.10)  # BEST: K=2, alpha=0.5

    def diffs(a: tuple, b: tuple) -> list[float]:
        return [x - y for x, y in zip(a, b, strict=True)]

    def paired(d: list[float]) -> str:
        mean = sum(d) / 3
        sd = (sum((x - mean) ** 2 for x in d) / 2) ** 0.5
        lo, hi = mean - t2 * sd / 3**0.5, mean + t2 * sd / 3**0.5
        return f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (" *" if lo > 0 or hi < 0 else "")

    assert paired([0.3, 0.4, 0.5]) == "+0.4000 [+0.1516, +0.6484] *"  # excludes 0
    assert f"| cpu-small alpha | 1 | 0 | 1,2,3 | 5.5000 | {paired(diffs(K1A0, BASE))} |" in md
    assert f"| cpu-small alpha | 2 | 0 | 1,2,3 | 5.2000 | {paired(diffs(K2A0, BASE))} |" in md
    assert f"| cpu-small alpha | 2 | 0.5 | 1,2,3 | 4.9500 | {paired(diffs(BEST, BASE))} |" in md
    # the best cut (lowest mean: K=2, alpha=0.5) against the gate, paired by seed
    assert "### The best fixed cut against the learned modes" in md
    best = paired(diffs(BEST, BASE))
    assert f"| cpu-small alpha | best cut K=2, alpha=0.5 | 1,2,3 | 4.9500 | {best} | 0 |" in md
    gate_vs_base, gate_vs_best = paired(diffs(GATE, BASE)), paired(diffs(GATE, BEST))
    assert gate_vs_best.startswith("+0.0667 [-0.005") and "*" not in gate_vs_best  # has 0
    assert f"| cpu-small alpha | gate | 1,2,3 | 5.0167 | {gate_vs_base} | {gate_vs_best} |" in md
    assert "](val_loss_heatmap_2.png)" in md and "95% Student-t interval over seeds" in md
    assert (report / "val_loss_heatmap_2.png").read_bytes().startswith(PNG_MAGIC)


def test_report_figures_and_html(report: Path) -> None:
    names = ("topk_match", "similarity", "val_loss_vs_cut_layer", "val_loss_heatmap", "gate_p",
             "val_loss")  # fmt: skip
    for name in names:
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
    # paired by seed: 5.70 - 5.10 (the seed-1 baseline), not minus the 2-seed mean 5.15
    assert "| cpu-small (runs) | 3 | 0 | 1 | 5.7000 | +0.6000 (1 seed) |" in md
    # the gate run (seed 1) against the only cut, K=3: 5.05 - 5.70
    assert "| cpu-small (runs) | gate | 1 | 5.0500 | -0.0500 (1 seed) | -0.6500 (1 seed) |" in md
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
