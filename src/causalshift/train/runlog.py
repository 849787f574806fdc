"""A training run's records: metrics.jsonl, TensorBoard, summary.json and the figures.

`RunLog` is their one owner. On rank 0 it trims metrics.jsonl back to the step a resumed
run continues from, appends one record per logged step (also to TensorBoard), redraws the
run's figures and writes summary.json at the end; on the other ranks every write is a no-op.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from causalshift.io import write_text
from causalshift.results import METRICS_NAME, SUMMARY_NAME, MetricRecord, RunSummary, read_metrics

__all__ = ["METRICS_NAME", "SUMMARY_NAME", "RunLog", "last_losses", "trim_metrics"]

TENSORBOARD_KEYS = ("train_loss", "val_loss", "lr", "tokens_per_second", "grad_norm")


class _TensorBoard:
    """RUN_DIR/tensorboard, when asked for and installed."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard is not installed: --tensorboard ignored", file=sys.stderr)
            return
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, rec: MetricRecord) -> None:
        if self.writer is None:
            return
        for key in TENSORBOARD_KEYS:
            if getattr(rec, key) is not None:
                self.writer.add_scalar(key, getattr(rec, key), rec.step)
        for i, p in enumerate(rec.gate_p or []):
            self.writer.add_scalar(f"gate_p/layer{i + 1}", p, rec.step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    """metrics.jsonl, TensorBoard, summary.json and figures/ of the run in `run_dir`."""

    def __init__(self, run_dir: Path, *, main: bool, tensorboard: bool = False) -> None:
        self.run_dir, self.main, self.tensorboard = Path(run_dir), main, tensorboard
        self.path = self.run_dir / METRICS_NAME
        self.pending: list[float] = []  # train losses since the last record
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.t_start = time.perf_counter()
        self._file: Any = None
        self._tb: _TensorBoard | None = None

    def open(self, step: int) -> None:
        """Continue the log at `step`: trim what came after, recall the last losses."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            trim_metrics(self.path, step)
            self._tb = _TensorBoard(self.run_dir, self.tensorboard)
            self._file = open(self.path, "a", encoding="utf-8")
            self.last_val, self.last_train = last_losses(self.path)
        self.t_start = time.perf_counter()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
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
        if self._tb is not None:
            self._tb.log(rec)
        return rec

    def figures(self) -> None:
        """(Re)draw figures/ from metrics.jsonl."""
        if self.main:
            from causalshift.figures import run_figures

            run_figures(self.run_dir)

    def finish(self, step: int, tokens: int, tokens_per_second: float | None) -> None:
        """A finished run: its figures, summary.json and the closing line on stdout."""
        if not self.main:
            return
        self.figures()
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
