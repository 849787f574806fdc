"""`causalshift train`'s inputs: bad numbers, --resume with the original options, token ids
outside the vocabulary, a one-document text file, the non-finite stop's hint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from causalshift.cli import main
from causalshift.train.config import preset
from causalshift.train.data import META_NAME
from causalshift.train.loop import nonfinite_hint
from causalshift.train.prepare import write_token_dir

FAST = ["--preset", "tiny", "--batch-size", "2", "--block-size", "16", "--eval-iters", "1",
        "--no-compile", "--threads", "1", "--dtype", "float32", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = np.random.default_rng(0).integers(0, 1000, 6_000)
    return write_token_dir(tmp_path_factory.mktemp("data"), x[:5_000], x[5_000:])


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--residual", "gate", "--alpha", "inf"], "alpha must be a finite number >= 0, got inf"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--residual", "gate", "--tau", "inf"], "tau must be a finite number > 0, got inf"),
        (["--grad-clip", "nan"], "grad_clip must be a finite number >= 0, got nan"),
        (["--seed", "-1"], "seed must be an integer in [0, 4294967295], got -1"),
        (["--beta2", "1"], "beta2 must be in [0, 1), got 1.0"),
        (["--weight-decay", "-0.1"], "weight_decay must be >= 0, got -0.1"),
        (["--gate-lr", "nan"], "gate_lr must be a finite number >= 0, got nan"),
        (["--dropout", "1"], "dropout must be in [0, 1), got 1.0"),
    ],
)
def test_bad_numbers_are_one_line_and_leave_nothing(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list, message: str
) -> None:
    out = tmp_path / "run"
    code = main(["train", *FAST, "--data", str(data_dir), "--out", str(out), *args])
    assert code == 2
    assert message in error_line(capsys)
    assert not out.exists()  # before: --alpha inf crashed writing config.json into out/


def test_config_file_numbers_are_checked_too(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.json"
    for values, message in (
        ({"lr": "fast"}, "lr must be a number > 0, got 'fast'"),
        ({"max_steps": True}, "max_steps must be a positive integer, got True"),
        ({"eval_iters": 2.5}, "eval_iters must be a positive integer, got 2.5"),
    ):
        cfg.write_text(json.dumps(values))
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
        assert message in error_line(capsys)


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of 4 steps (checkpoint at the end), started with --preset tiny options."""
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", *FAST, "--data", str(data_dir), "--out", str(out), "--max-steps", "4"]
    assert main(argv) == 0
    return out


def test_resume_with_the_original_command(data_dir: Path, run_dir: Path, capsys) -> None:
    argv = ["train", *FAST, "--data", str(data_dir), "--out", str(run_dir), "--max-steps", "4"]
    assert main([*argv, "--resume"]) == 0  # refused before: --preset with --resume
    assert "resuming" in capsys.readouterr().err
    # a command-line training option may still change, as with --resume alone
    longer = [*argv[:-1], "6", "--resume"]
    assert main(longer) == 0
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 6


def test_resume_with_other_options_names_each_field(
    data_dir: Path, run_dir: Path, tmp_path: Path, capsys
) -> None:
    before = (run_dir / "config.json").read_text()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"lr": 0.5, "warmup_steps": 3}))
    argv = ["train", *FAST, "--config", str(other), "--data", str(data_dir), "--out",
            str(run_dir), "--resume"]  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys)
    assert "lr (saved 0.003, given 0.5)" in line and "warmup_steps (saved 2, given 3)" in line
    # a model option differs from the run's: named the same way
    argv = ["train", *FAST, "--data", str(data_dir), "--out", str(run_dir), "--resume",
            "--n-layer", "3"]  # fmt: skip
    assert main(argv) == 2
    assert "n_layer (saved 2, given 3)" in error_line(capsys)
    assert (run_dir / "config.json").read_text() == before


def test_resume_below_the_current_step_is_refused(run_dir: Path, capsys) -> None:
    before = (run_dir / "config.json").read_text()
    step = json.loads((run_dir / "summary.json").read_text())["step"]
    assert main(["train", "--out", str(run_dir), "--resume", "--max-steps", "2"]) == 2
    assert f"--max-steps 2 is below the step {step}" in error_line(capsys)
    assert (run_dir / "config.json").read_text() == before  # not rewritten to 2


def test_token_ids_outside_the_vocabulary(tmp_path: Path, capsys) -> None:
    x = np.random.default_rng(0).integers(0, 1000, 6_000)
    x[4321] = 60_000  # >= GPT-2's 50,257 (uint16 holds it)
    data = write_token_dir(tmp_path / "data", x[:5_000], x[5_000:])
    out = tmp_path / "run"
    assert main(["train", *FAST, "--data", str(data), "--out", str(out)]) == 2
    assert "holds token id 60000, outside the model's vocabulary of 50257" in error_line(capsys)
    # an older data dir without max_token_id: scanned once, then recorded
    meta = json.loads((data / META_NAME).read_text())
    del meta["max_token_id"]
    (data / META_NAME).write_text(json.dumps(meta))
    assert main(["train", *FAST, "--data", str(data), "--out", str(out)]) == 2
    assert "token id 60000" in error_line(capsys)
    assert json.loads((data / META_NAME).read_text())["max_token_id"] == 60_000


def test_one_document_text_file_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "one.txt"  # no run of 2+ blank lines: one document
    text.write_text(" ".join(f"word{i % 97} and more" for i in range(3000)), encoding="utf-8")
    out = tmp_path / "run"
    code = main(["train", *FAST, "--data", str(text), "--out", str(out), "--max-steps", "2"])
    assert code == 0, capsys.readouterr().err  # before: "no text found" (all of it in val)
    assert (out / "summary.json").is_file()


def test_nonfinite_hint_names_alpha_when_it_is_set() -> None:
    tiny = preset("tiny")
    assert nonfinite_hint(tiny) == "try a lower --lr"
    assert nonfinite_hint(tiny.replace(residual="gate")) == "try a lower --lr"
    big = tiny.replace(residual="fixed", cut_layer=1, alpha=4.0)
    assert nonfinite_hint(big) == "check --alpha: A = 4 > 1 amplifies the residual stream"
    assert "check --alpha (A = 0.5)" in nonfinite_hint(tiny.replace(residual="gate", alpha=0.5))
