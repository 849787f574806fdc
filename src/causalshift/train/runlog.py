"""A training run's records: metrics.jsonl, the trackers, summary.json and the figures.

`RunLog` is their one owner. On rank 0 it trims metrics.jsonl back to the step a resumed
run continues from, opens the run's trackers (`train/trackers.py`: TensorBoard, W&B) and
gives them the run's config.json, appends one record per logged step (also to each
tracker), redraws the run's figures, and at the end writes summary.json and hands the
figures to the trackers; on the other ranks every write is a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from causalshift.io import write_text
from causalshift.results import (
    METRICS_NAME,
    RUN_CONFIG_NAME,
    SUMMARY_NAME,
    MetricRecord,
    RunSummary,
    read_metrics,
)
from causalshift.train.trackers import Tracker, TrackerOptions, metric_values, open_trackers

__all__ = ["METRICS_NAME", "SUMMARY_NAME", "RunLog", "last_losses", "trim_metrics"]


def trim_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step` (a killed run may have logged past its checkpoint)."""
    if not path.is_file():
        return
    write_text(path, "".join(r.json_line() for r in read_metrics(path) if r.step <= step))


def last_losses(path: Path) -> tuple[float | None, float | None]:
    """The latest val and train loss in a metrics.jsonl (for a resumed run)."""
    val = train = None
    for rec in read_metrics(path):
        val = rec.val_loss if rec.val_loss is not None else val
        train = rec.train_loss if rec.train_loss is not None else train
    return val, train


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class RunLog:
    """metrics.jsonl, the trackers, summary.json and figures/ of the run in `run_dir`.

    `trackers`: names from `train/trackers.py` (`tensorboard=True` adds "tensorboard", the
    older spelling); `tracking`: the W&B project, name, group and tags."""

    def __init__(
        self,
        run_dir: Path,
        *,
        main: bool,
        trackers: Sequence[str] = (),
        tracking: TrackerOptions | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.run_dir, self.main = Path(run_dir), main
        names = list(trackers)
        if tensorboard and "tensorboard" not in names:
            names.append("tensorboard")
        self.tracker_names = tuple(names)
        self.tracking = tracking or TrackerOptions(run_dir=self.run_dir)
        self.path = self.run_dir / METRICS_NAME
        self.pending: list[float] = []  # train losses since the last record
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.t_start = time.perf_counter()
        self._file: Any = None
        self._trackers: list[Tracker] = []

    def open(self, step: int) -> None:
        """Continue the log at `step`: trim what came after, recall the last losses, open
        the trackers and give them the run's config."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            trim_metrics(self.path, step)
            self._file = open(self.path, "a", encoding="utf-8")
            self.last_val, self.last_train = last_losses(self.path)
            options = dataclasses.replace(self.tracking, run_dir=self.run_dir, step=step)
            self._trackers = open_trackers(self.tracker_names, options)
            config = self._config()
            for tracker in self._trackers:
                tracker.log_config(config)
        self.t_start = time.perf_counter()

    def _config(self) -> dict[str, Any]:
        """The run's config.json (written before the run starts), {} when there is none."""
        try:
            data = json.loads((self.run_dir / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
        if self._file is not None:
            self._file.close()
            self._file = None

    def train_loss(self, loss: float) -> None:
        """One step's train loss: averaged into the next record."""
        self.pending.append(loss)
        self.last_train = loss

    def record(
        self,
        *,
        step: int,
        tokens: int,
        val_loss: float | None,
        lr: float | None,
        tokens_per_second: float | None,
        grad_norm: float | None,
        gate_p: list[float] | None,
        alpha: list[float],
        epoch: float,
    ) -> MetricRecord:
        """Append one metrics.jsonl record (the mean train loss since the last one)."""
        train = sum(self.pending) / len(self.pending) if self.pending else None
        rec = MetricRecord(
            step=step,
            tokens=tokens,
            train_loss=_round(train, 6),
            val_loss=_round(val_loss, 6),
            lr=lr,
            tokens_per_second=_round(tokens_per_second, 1),
            grad_norm=_round(grad_norm, 6),
            gate_p=gate_p,
            alpha=alpha,
            epoch=round(epoch, 4),
            elapsed=round(time.perf_counter() - self.t_start, 2),
        )
        self.pending.clear()
        if val_loss is not None:
            self.last_val = val_loss
        if self._file is not None:
            self._file.write(rec.json_line())
            self._file.flush()
        if self._trackers:
            values = metric_values(rec)
            for tracker in self._trackers:
                tracker.log_metrics(rec.step, values)
        return rec

    def figures(self) -> list[Path]:
        """(Re)draw figures/ from metrics.jsonl; the files drawn."""
        if not self.main:
            return []
        from causalshift.figures import run_figures

        return run_figures(self.run_dir)

    def finish(self, step: int, tokens: int, tokens_per_second: float | None) -> None:
        """A finished run: its figures (also to the trackers), summary.json and the closing
        line on stdout."""
        if not self.main:
            return
        drawn = self.figures()
        images = {f"figures/{p.stem}": p for p in drawn}
        for tracker in self._trackers:  # none left when the log is already closed
            tracker.log_images(step, images)
        RunSummary(
            step=step,
            tokens=tokens,
            final_val_loss=self.last_val,
            final_train_loss=self.last_train,
            seconds=round(time.perf_counter() - self.t_start, 2),
            train_tokens_per_second=_round(tokens_per_second, 1),
        ).write(self.run_dir)
        shown = "-" if self.last_val is None else f"{self.last_val:.4f}"
        print(f"done: step {step}, val loss {shown}, run dir {self.run_dir}", flush=True)
