"""`causalshift sweep`: baseline, fixed cuts over layer x alpha, learned modes, seeds;
sweep.json with paired intervals, figure 4 and the heatmap; resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from causalshift.cli import main
from causalshift.errors import UserError
from causalshift.figures import SweepSeries, plot_sweep
from causalshift.results import (
    RunSummary,
    SweepResult,
    SweepRunRecord,
    sweep_comparisons,
    sweep_stats,
    t95,
)
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


# --- layer x alpha x seed sweeps, learned modes, paired intervals ---------------------------


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    from causalshift.cli import build_parser

    argv = ["sweep", "--preset", "tiny", "--out", str(tmp_path / "s"), *extra]
    args = build_parser("sweep").parse_args(argv)
    args.data_dir = str(tmp_path / "data")
    return args


def test_plan_every_layer_alpha_seed_and_learned_mode(tmp_path: Path) -> None:
    from causalshift.train.sweep import plan

    args = _args(tmp_path, "--alpha", "0,0.5", "--seeds", "1,2", "--modes", "gate,scalar")
    names = [r.name for r in plan(args)]
    per_seed = ["none", "fixed-L1-a0", "fixed-L2-a0", "fixed-L1-a0.5", "fixed-L2-a0.5", "gate",
                "scalar"]  # fmt: skip
    assert names == [f"{n}-s{s}" for s in (1, 2) for n in per_seed]


def _finish(run_dir: Path, loss: float) -> None:
    """A finished run as an older sweep left it: config.json without tracker keys."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"residual": "none", "tensorboard": False}))
    RunSummary(step=3, tokens=96, final_val_loss=loss).write(run_dir)


def test_finished_runs_of_an_earlier_sweep_are_skipped(tmp_path: Path) -> None:
    """`--alpha 0` then `--alpha 0.5` (one alpha each, as before alpha lists) finished every
    cut; the same folder with --alpha 0,0.5 --modes gate trains only the gate runs."""
    from causalshift.train.sweep import _Runner, plan

    out = tmp_path / "s"
    for seed in (1, 2):
        _finish(out / f"none-s{seed}", 5.0 + seed / 10)
        for a in ("0", "0.5"):
            for k in (1, 2):
                _finish(out / f"fixed-L{k}-a{a}-s{seed}", 5.5)
    args = _args(tmp_path, "--alpha", "0,0.5", "--seeds", "1,2", "--modes", "gate")
    runner = _Runner(args, plan(args), ["cpu"])
    todo = [runner.todo.get_nowait().name for _ in range(runner.todo.qsize())]
    assert todo == ["gate-s1", "gate-s2"]
    assert len(runner.results) == 10 and runner.results["none-s2"].final_val_loss == 5.2


def test_sweep_passes_its_trackers_to_every_run(tmp_path: Path) -> None:
    from causalshift.train.config import load_config_file
    from causalshift.train.sweep import _command, plan

    args = _args(tmp_path, "--layers", "1", "--tracker", "tensorboard", "--no-baseline")
    (run,) = plan(args)
    file = tmp_path / "run.json"
    _command(args, run, tmp_path / "s" / run.name, "cpu", file)
    cfg = load_config_file(file)
    assert (cfg["tracker"], cfg["wandb_group"]) == (["tensorboard"], "s")
    resumed = tmp_path / "s" / "resumed"
    resumed.mkdir(parents=True)
    (resumed / "train_state.pt").write_bytes(b"")  # an interrupted run: resumed
    cmd = _command(args, run, resumed, "cpu", file)
    assert cmd[cmd.index("--tracker") : cmd.index("--tracker") + 4] == [
        "--tracker", "tensorboard", "--wandb-group", "s"
    ]  # fmt: skip
    plain = _args(tmp_path, "--layers", "1", "--no-baseline")  # no --tracker: config untouched
    _command(plain, plan(plain)[0], tmp_path / "s" / run.name, "cpu", file)
    assert load_config_file(file)["tracker"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "0,-0.5"], "--alpha must be >= 0, got -0.5"),
        (["--alpha", "0,inf"], "--alpha must be a finite number >= 0, got inf"),
        (["--alpha", "0,x"], "--alpha must be comma-separated numbers, got '0,x'"),
        (["--alpha", "0.5,0.50"], "--alpha lists 0.5 twice"),
        (["--alpha", ","], "no alpha given"),
        (["--seeds", "1,2,1"], "--seeds lists 1 twice"),
        (["--modes", "gate,bogus"], "--modes 'bogus': unknown mode; --modes takes learned"),
        (["--modes", "fixed"], "--modes 'fixed': a fixed cut is --layers/--alpha"),
        (["--modes", "gate,gate"], "--modes lists gate twice"),
        (["--tracker", "mlflow"], "unknown tracker 'mlflow' in --tracker"),
        (["--tracker", "none", "--tracker", "wandb"], "none cannot be combined"),
    ],
)
def test_sweep_bad_lists(tmp_path: Path, capsys, args: list, message: str) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--preset", "tiny", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert message in err
    assert not out.exists()


def test_paired_comparisons_by_hand() -> None:
    """Seeds 1-3; the baseline, two cuts, the gate; seed 3 of cut (1, 0) failed."""

    def rec(mode: str, seed: int, loss: float | None, k=None, a=0.0) -> SweepRunRecord:
        return SweepRunRecord(mode=mode, cut_layer=k, alpha=a, seed=seed, final_val_loss=loss)

    runs = [
        *(rec("none", s, v) for s, v in ((1, 4.0), (2, 4.2), (3, 4.1))),
        *(rec("fixed", s, v, 1) for s, v in ((1, 4.5), (2, 4.6), (3, None))),
        *(rec("fixed", s, v, 2, 0.5) for s, v in ((1, 3.9), (2, 4.1), (3, 4.0))),
        *(rec("gate", s, v) for s, v in ((1, 3.95), (2, 4.0), (3, 4.2))),
    ]
    comparisons, best = sweep_comparisons(runs)
    assert [(c.mode, c.cut_layer, c.alpha) for c in comparisons] == [
        ("fixed", 1, 0.0), ("fixed", 2, 0.5), ("gate", None, 0.0)
    ]  # fmt: skip
    cut1, cut2, gate = comparisons
    # cut (1, 0): seeds 1, 2 paired: d = 0.5, 0.4; mean 0.45, sd 0.0707, t(1) = 12.706
    assert (cut1.n, cut1.seeds, cut1.vs_baseline.seeds) == (2, [1, 2], [1, 2])
    half = 12.706 * (0.005**0.5) / 2**0.5
    assert cut1.vs_baseline.mean == pytest.approx(0.45)
    assert cut1.vs_baseline.ci95 == pytest.approx([0.45 - half, 0.45 + half])
    # cut (2, 0.5): d = -0.1, -0.1, -0.1: sd 0, the interval is the point and excludes 0
    assert cut2.vs_baseline.ci95 == pytest.approx([-0.1, -0.1]) and cut2.vs_baseline.excludes_zero
    assert best == {"cut_layer": 2, "alpha": 0.5}  # mean 4.0 < 4.55
    # gate vs the best cut: d = 0.05, -0.1, 0.2; mean 0.05, sd 0.15, t(2) = 4.303
    half = 4.303 * 0.15 / 3**0.5
    assert gate.vs_best.mean == pytest.approx(0.05)
    assert gate.vs_best.ci95 == pytest.approx([0.05 - half, 0.05 + half])
    assert not gate.vs_best.excludes_zero and cut1.vs_best is None
    one = sweep_comparisons([rec("none", 1, 4.0), rec("fixed", 1, 4.3, 1)])[0][0]
    assert one.vs_baseline.ci95 is None and one.vs_baseline.mean == pytest.approx(0.3)
    assert sweep_comparisons([rec("fixed", 1, 4.3, 1)])[0][0].vs_baseline is None  # no baseline


def test_t_quantiles() -> None:
    # scipy.stats.t.ppf(0.975, df) for df = 1, 2, 30, 40, 100
    for df, exact in ((1, 12.7062), (2, 4.3027), (30, 2.0423), (40, 2.0211), (100, 1.9840)):
        assert t95(df) == pytest.approx(exact, abs=1e-3)


def test_tiny_layer_alpha_sweep_with_the_gate(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "--preset", "tiny", "--layers", "1", "--alpha", "0,0.5", "--seeds", "1,2",
            "--modes", "gate", "--out", str(out), "--max-steps", "2", "--data", str(data_dir),
            "--train-args", TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0
    sweep = SweepResult.read(out)
    assert sweep.alphas == [0.0, 0.5] and sweep.alpha is None and sweep.modes == ["gate"]
    loss = {r.name: r.final_val_loss for r in sweep.runs}
    assert len(loss) == 8 and all(v > 0 for v in loss.values())
    cut = next(c for c in sweep.cuts if (c.cut_layer, c.alpha) == (1, 0.5))
    d = [loss[f"fixed-L1-a0.5-s{s}"] - loss[f"none-s{s}"] for s in (1, 2)]
    half = 12.706 * abs(d[0] - d[1]) / 2**0.5 / 2**0.5  # sd of two values: |d1 - d2| / sqrt 2
    assert cut.vs_baseline.mean == pytest.approx(sum(d) / 2)
    assert cut.vs_baseline.ci95 == pytest.approx([sum(d) / 2 - half, sum(d) / 2 + half])
    (gate,) = sweep.learned
    assert gate.mode == "gate" and gate.vs_best is not None and gate.n == 2
    for name in ("val_loss_vs_cut_layer.png", "val_loss_heatmap.png"):
        assert (out / name).stat().st_size > 1000
    assert "gate: val loss" in capsys.readouterr().out  # the closing summary


def test_python_sweep_continues_a_finished_sweep(data_dir: Path, tmp_path: Path, capsys) -> None:
    from causalshift.api import sweep

    out = tmp_path / "s"
    for seed, base in ((1, 5.0), (2, 5.2)):
        _finish(out / f"none-s{seed}", base)
        _finish(out / f"fixed-L2-a0.5-s{seed}", base + 0.1 * seed)
    result = sweep(out, preset="tiny", layers=[2], alpha=0.5, seeds=[1, 2], data=str(data_dir))
    assert capsys.readouterr().out == ""  # nothing trained, nothing printed
    (cut,) = result.cuts
    assert (cut.cut_layer, cut.alpha, cut.vs_baseline.mean) == (2, 0.5, pytest.approx(0.15))
    assert (
        result.best == {"cut_layer": 2, "alpha": 0.5} and (out / "val_loss_heatmap.png").is_file()
    )
    with pytest.raises(UserError, match="--seeds lists 2 twice"):
        sweep(out, preset="tiny", seeds=[2, 2], data=str(data_dir))
