"""--tracker: TensorBoard and W&B with the real packages, read back with their own formats;
a tracker is one class; a missing package is one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from causalshift.cli import main
from causalshift.errors import UserError
from causalshift.results import MetricRecord
from causalshift.train import trackers
from causalshift.train.config import preset
from causalshift.train.runlog import RunLog
from causalshift.train.trackers import TRACKERS, TrackerOptions, metric_values, tracker_names

from ..conftest import TINY_TRAIN_ARGS


def _train(data: Path, out: Path, *extra: str) -> int:
    argv = ["train", *TINY_TRAIN_ARGS, "--max-steps", "2", "--data", str(data),
            "--out", str(out), "--residual", "gate", *extra]  # fmt: skip
    return main(argv)


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline W&B run file (`run-ID.wandb`): W&B's 7-byte header
    (":W&B", magic, version), then LevelDB log framing: 32 KiB blocks of chunks, each with a
    7-byte header (crc32c, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero fill up to the next block
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pieces)
            records.append(rec)
    return records


def test_tensorboard_and_wandb_runs_read_back(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    extra = ["--tracker", "tensorboard", "--tracker", "wandb", "--wandb-project", "proj",
             "--wandb-group", "grp", "--wandb-tags", "a,b"]  # fmt: skip
    assert _train(tiny_data_dir, run, *extra) == 0
    records = _metrics(run)
    assert [r["step"] for r in records] == [0, 1, 2] and len(records[1]["gate_p"]) == 2

    # TensorBoard: every number of metrics.jsonl by step, p per layer, config, figures
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("train_loss", "val_loss", "lr", "grad_norm", "epoch", "tokens"):
        logged = {(e.step, round(e.value, 5)) for e in events.Scalars(key)}
        assert logged == {(r["step"], round(r[key], 5)) for r in records if r[key] is not None}
    p2 = [(e.step, e.value) for e in events.Scalars("gate_p/layer_2")]
    assert p2 == [(r["step"], pytest.approx(r["gate_p"][1])) for r in records]
    assert "alpha/layer_1" in tags["scalars"]
    assert set(tags["images"]) == {"figures/loss", "figures/gate_p"}
    assert events.Images("figures/loss")[0].step == 2
    assert "config" in " ".join(tags["tensors"])  # add_text is stored as a tensor summary

    # W&B: the offline run file under WANDB_DIR holds the run, its config and history
    (path,) = (tmp_path / "wandb-dir").glob("wandb/offline-run-*/run-*.wandb")
    recs = wandb_records(path)
    (info,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert (info.project, info.display_name, info.run_group) == ("proj", "run", "grp")
    assert list(info.tags) == ["a", "b"]
    assert info.run_id == (run / "wandb_id.txt").read_text().strip()
    config = {
        u.key: json.loads(u.value_json)
        for r in recs
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert config["residual"] == "gate" and config["tracker"] == ["tensorboard", "wandb"]
    assert config["global_batch_tokens"] == 16  # config.json's derived keys too
    history = [
        {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.history.item}
        for r in recs
        if r.WhichOneof("record_type") == "history"
    ]
    scalars = [h for h in history if "train_loss" in h or "val_loss" in h]
    assert [h["step"] for h in scalars] == [0, 1, 2]
    for h, r in zip(scalars, records, strict=True):
        assert h["gate_p/layer_1"] == pytest.approx(r["gate_p"][0])
        assert h.get("val_loss") == (pytest.approx(r["val_loss"]) if r["val_loss"] else None)
    images = [h for h in history if "figures/loss/_type" in h]
    assert images and images[0]["figures/loss/_type"] == "image-file" and images[0]["step"] == 2


class Memory:
    """A tracker in memory: what a new tracker class needs, and nothing more."""

    name, package = "memory", "json"
    opened: list[Memory] = []

    @classmethod
    def require(cls) -> None:
        trackers._import("json", cls.name, cls.package)

    def __init__(self, options: TrackerOptions) -> None:
        self.options, self.config, self.metrics, self.images = options, {}, [], {}
        self.closed = False
        Memory.opened.append(self)

    def log_config(self, config: Any) -> None:
        self.config = dict(config)

    def log_metrics(self, step: int, values: Any) -> None:
        self.metrics.append((step, dict(values)))

    def log_images(self, step: int, images: Any) -> None:
        self.images = {k: Path(v).name for k, v in images.items()}

    def close(self) -> None:
        self.closed = True


def test_a_new_tracker_is_one_class(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TRACKERS, "memory", Memory)
    Memory.opened = []
    run = tmp_path / "run"
    assert _train(tiny_data_dir, run, "--tracker", "memory", "--wandb-name", "x") == 0
    (mem,) = Memory.opened
    assert mem.closed and mem.options.run_dir == run and mem.options.name == "x"
    assert mem.config == json.loads((run / "config.json").read_text())
    expected = [(r["step"], metric_values(MetricRecord.from_dict(r))) for r in _metrics(run)]
    assert mem.metrics == expected
    assert mem.images == {"figures/loss": "loss.png", "figures/gate_p": "gate_p.png"}
    # resumed with a longer run: the tracker opens at the checkpoint's step
    assert main(["train", "--resume", "--out", str(run), "--max-steps", "3", "--no-progress"]) == 0
    assert Memory.opened[1].options.step == 2 and Memory.opened[1].metrics[0][0] == 3


def test_metric_values_by_hand() -> None:
    rec = MetricRecord(step=4, tokens=64, train_loss=2.5, gate_p=[0.25, 0.75], alpha=[1.0, 0.5])
    assert metric_values(rec) == {
        "tokens": 64,
        "train_loss": 2.5,
        "gate_p/layer_1": 0.25,
        "gate_p/layer_2": 0.75,
        "alpha/layer_1": 1.0,
        "alpha/layer_2": 0.5,
    }


def test_tracker_names_and_the_tensorboard_alias() -> None:
    assert tracker_names(["wandb", "tensorboard"]) == ("wandb", "tensorboard")
    assert tracker_names(["tensorboard,wandb"]) == ("tensorboard", "wandb")
    assert tracker_names(["none"]) == () and tracker_names([]) == ()
    for bad, message in [
        (["mlflow"], "unknown tracker 'mlflow' in --tracker; choose none, tensorboard, wandb"),
        (["wandb", "wandb"], "names a tracker twice"),
        (["none", "wandb"], "none cannot be combined"),
    ]:
        with pytest.raises(UserError, match=message):
            tracker_names(bad)
    cfg = preset("tiny")
    assert cfg.replace(tensorboard=True).trackers == ("tensorboard",)
    assert cfg.replace(tensorboard=True, tracker=["wandb"]).trackers == ("wandb", "tensorboard")
    assert cfg.replace(tracker="wandb").tracker == ("wandb",)  # a config file's plain string
    with pytest.raises(UserError, match="none cannot be combined with --tensorboard"):
        cfg.replace(tensorboard=True, tracker=["none"])


@pytest.mark.parametrize("package, tracker", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_package_is_one_line(
    tiny_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    package: str,
    tracker: str,
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    assert _train(tiny_data_dir, tmp_path / "run", "--tracker", tracker) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"the {tracker} tracker needs the `{package}` package" in err
    assert "pip install 'causalshift[track]'" in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_other_ranks_open_no_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TRACKERS, "memory", Memory)
    Memory.opened = []
    log = RunLog(tmp_path / "run", main=False, trackers=("memory",))
    log.open(0)
    log.close()
    assert Memory.opened == [] and not (tmp_path / "run").exists()
