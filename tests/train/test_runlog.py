"""RunLog: the one owner of metrics.jsonl, summary.json and a run's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from causalshift.train.runlog import RunLog, last_losses, trim_metrics

METRIC_KEYS = [
    "step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_second", "grad_norm",
    "gate_p", "alpha", "epoch", "elapsed",
]  # fmt: skip


def _record(log: RunLog, step: int, val: float | None = None) -> None:
    log.record(
        step=step,
        tokens=step * 64,
        val_loss=val,
        lr=1e-3,
        tokens_per_second=1234.56,
        grad_norm=0.1234567,
        gate_p=[0.5, 0.5],
        alpha=[1.0, 1.0],
        epoch=0.123456,
    )


def test_records_summary_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = RunLog(tmp_path / "run", main=True)
    log.open(0)
    _record(log, 0, val=10.1234567)
    for loss in (3.0, 2.0):
        log.train_loss(loss)
    _record(log, 2)
    log.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [list(r) for r in recs] == [METRIC_KEYS, METRIC_KEYS]
    assert (recs[0]["train_loss"], recs[0]["val_loss"]) == (None, 10.123457)
    assert (recs[1]["train_loss"], recs[1]["val_loss"]) == (2.5, None)
    assert (recs[1]["tokens_per_second"], recs[1]["grad_norm"], recs[1]["epoch"]) == (
        1234.6,
        0.123457,
        0.1235,
    )
    log.finish(2, 128, 99.99)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary) == ["finished", "step", "tokens", "final_val_loss", "final_train_loss",
                             "seconds", "train_tokens_per_second"]  # fmt: skip
    assert (summary["final_val_loss"], summary["final_train_loss"]) == (10.1234567, 2.0)
    assert summary["train_tokens_per_second"] == 100.0
    assert (tmp_path / "run" / "figures" / "loss.png").is_file()
    assert "done: step 2, val loss 10.1235" in capsys.readouterr().out


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run", main=False)
    log.open(0)
    log.train_loss(1.0)
    _record(log, 1, val=2.0)
    log.finish(1, 64, None)
    log.close()
    assert not (tmp_path / "run").exists()
    assert log.pending == [] and log.last_val == 2.0


def test_resume_trims_and_recalls_the_last_losses(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 0, "train_loss": None, "val_loss": 9.0},
        {"step": 5, "train_loss": 4.0, "val_loss": None},
        {"step": 8, "train_loss": 3.0, "val_loss": 2.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "tr')
    trim_metrics(path, 5)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 5]
    assert last_losses(path) == (9.0, 4.0)
    log = RunLog(tmp_path, main=True)
    log.open(0)
    log.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0]
    assert (log.last_val, log.last_train) == (9.0, None)
