"""`causalshift sweep`: baseline + fixed cuts, sweep.json, figure 4, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from causalshift.cli import main
from causalshift.figures import SweepSeries, plot_sweep
from causalshift.results import SweepResult, SweepRunRecord, sweep_stats
from causalshift.train.prepare import write_token_dir

TRAIN_ARGS = (
    "--batch-size 2 --block-size 16 --eval-iters 1 --no-compile --dtype float32 --threads 1 "
    "--no-progress"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = np.random.default_rng(0).integers(0, 1000, 6_000)
    return write_token_dir(tmp_path_factory.mktemp("data"), x[:5_000], x[5_000:])


def test_sweep_tiny_two_layers(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "--preset", "tiny", "--layers", "1,2", "--out", str(out), "--max-steps", "2",
            "--data", str(data_dir), "--train-args", TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert [(r["mode"], r["cut_layer"]) for r in doc["runs"]] == [
        ("none", None),
        ("fixed", 1),
        ("fixed", 2),
    ]
    assert all(r["status"] == "finished" and r["final_val_loss"] > 0 for r in doc["runs"])
    assert doc["baseline"]["n"] == 1 and [r["cut_layer"] for r in doc["by_layer"]] == [1, 2]
    assert (out / "val_loss_vs_cut_layer.png").stat().st_size > 1000
    cfg = json.loads((out / "fixed-L2-a0-s1" / "config.json").read_text())
    assert cfg["model"]["residual"] == {"mode": "fixed", "cut_layer": 2, "alpha": 0.0, "tau": 1.0}
    capsys.readouterr()
    assert main(argv) == 0  # everything finished: nothing reruns
    assert "3 runs (3 already finished)" in capsys.readouterr().out


def test_sweep_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["sweep", "--preset", "tiny", "--layers", "5", "--out", str(tmp_path)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["sweep", "--preset", "tiny", "--alpha", "-1", "--out", str(tmp_path)]) == 2
    assert main(["sweep", "--preset", "tiny", "--devices", "tpu", "--out", str(tmp_path),
                 "--data", str(tmp_path)]) == 2  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "inf"], "--alpha must be a finite number >= 0, got inf"),
        (["--alpha", "nan"], "--alpha must be a finite number >= 0, got nan"),
        (["--seeds", "-1"], "--seeds must be an integer in [0, 4294967295], got -1"),
        (["--max-steps", "0"], "--max-steps must be a positive integer, got 0"),
        (["--train-args", '--lr "2e-3'], "cannot be split: No closing quotation"),
        (["--train-args", "--lr inf"], "--train-args: lr must be a finite number > 0, got inf"),
        (["--train-args", "--bogus"], "--train-args: unrecognized arguments: --bogus"),
        (["--train-args", "--out elsewhere"], "may not set --out: the sweep sets it"),
        (["--train-args", "--resume"], "may not set --resume"),
        # parsed (it was "expected one argument"): the sweep goes on to check the layers
        (["--train-args", "--no-compile", "--layers", "5"], "cut layer 5 is out of range"),
    ],
)
def test_sweep_bad_numbers_and_train_args(tmp_path: Path, capsys, args: list, message: str) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--preset", "tiny", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert message in err
    assert not out.exists()  # nothing started


def test_train_args_may_start_with_a_dash(tmp_path: Path) -> None:
    from causalshift.cli import _glue_text_options, build_parser
    from causalshift.train.sweep import _command, plan

    argv = ["sweep", "--preset", "tiny", "--layers", "1", "--out", str(tmp_path / "s"),
            "--train-args", "--no-compile", "--no-baseline"]  # fmt: skip
    args = build_parser("sweep").parse_args(_glue_text_options(argv, "sweep"))
    assert args.train_args == "--no-compile" and args.baseline is False
    args.data_dir = str(tmp_path / "data")
    (run,) = plan(args)
    cmd = _command(args, run, tmp_path / "s" / run.name, "cpu", tmp_path / "run.json")
    assert cmd[-1] == "--no-compile"


def test_sweep_figure_statistics(tmp_path: Path) -> None:
    runs = [
        {"mode": "none", "cut_layer": None, "final_val_loss": 3.0},
        {"mode": "none", "cut_layer": None, "final_val_loss": 3.2},
        {"mode": "fixed", "cut_layer": 2, "final_val_loss": 3.5},
        {"mode": "fixed", "cut_layer": 2, "final_val_loss": 3.9},
        {"mode": "fixed", "cut_layer": 1, "final_val_loss": None},  # failed run: left out
    ]
    baseline, by_layer = sweep_stats([SweepRunRecord.from_dict(r) for r in runs])
    assert baseline.mean == pytest.approx(3.1) and baseline.n == 2
    (layer2,) = by_layer
    assert (layer2.cut_layer, layer2.min, layer2.max) == (2, 3.5, 3.9)
    assert layer2.mean == pytest.approx(3.7) and layer2.std == pytest.approx(0.2828, 1e-3)
    sweep = SweepResult(preset="tiny", alpha=0.0, baseline=baseline, by_layer=by_layer)
    assert plot_sweep([SweepSeries(sweep)], tmp_path / "f.png").is_file()


def test_each_run_gets_its_config_as_data(tmp_path: Path) -> None:
    from causalshift.cli import build_parser
    from causalshift.train.config import TrainConfig, load_config_file, preset
    from causalshift.train.sweep import _command, plan

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"lr": 0.01, "tau": 2.0}))
    argv = ["sweep", "--preset", "tiny", "--layers", "2", "--out", str(tmp_path / "s"),
            "--alpha", "0.25", "--max-steps", "3", "--config", str(base),
            "--train-args", "--no-progress --lr 0.02"]  # fmt: skip
    args = build_parser("sweep").parse_args(argv)
    args.data_dir = str(tmp_path / "data")
    baseline, fixed = plan(args)
    assert (baseline.name, fixed.name) == ("none-s1", "fixed-L2-a0.25-s1")
    file = tmp_path / "run.json"
    cmd = _command(args, fixed, tmp_path / "s" / fixed.name, "cpu", file)
    assert cmd[-5:] == ["--config", str(file), "--no-progress", "--lr", "0.02"]  # theirs last
    cfg = TrainConfig.from_dict(load_config_file(file))
    run = {"residual": "fixed", "cut_layer": 2, "alpha": 0.25, "seed": 1}
    where = {"data": args.data_dir, "device": "cpu", "max_steps": 3}
    assert cfg == preset("tiny").replace(lr=0.01, tau=2.0, **run, **where)
