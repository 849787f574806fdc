"""Experiment trackers: where a run's records go besides metrics.jsonl (`--tracker`).

A tracker is one class with four methods (the `Tracker` protocol): `log_config` once when
the run opens, `log_metrics` with every metrics.jsonl record, `log_images` with the run's
figures when it finishes, `close`. `TRACKERS` is the table of them by name; a new tracker
is one class added there (with `package`, what `require` imports, and `__init__(options)`).

    tensorboard   RUN_DIR/tensorboard/ event files (torch.utils.tensorboard)
    wandb         a Weights & Biases run, offline unless WANDB_MODE says otherwise

Both packages are the optional extra `causalshift[track]`; `require` turns a missing one
into one line that names it. Only rank 0 opens trackers (`RunLog` does that). Nothing here
imports torch, tensorboard or wandb at import time.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from causalshift.errors import UserError
from causalshift.io import write_text
from causalshift.results import MetricRecord

NONE = "none"
EXTRA = "pip install 'causalshift[track]'"
WANDB_ID_NAME = "wandb_id.txt"  # RUN_DIR/wandb_id.txt: the W&B run id, kept for --resume
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class TrackerOptions:
    """What a tracker needs to open: the run folder and the step the run starts (or
    resumes) from (both set by `RunLog`), and the W&B run's project, name (None: the run
    folder's name), group and tags."""

    run_dir: Path = Path()
    step: int = 0
    project: str = "causalshift"
    name: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()


class Tracker(Protocol):
    """One experiment tracker of a run (rank 0 only)."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_images(self, step: int, images: Mapping[str, Path]) -> None: ...

    def close(self) -> None: ...


def _import(module: str, tracker: str, package: str) -> Any:
    """`module` imported, or one line saying which package (and extra) to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"the {tracker} tracker needs the `{package}` package, which is not installed: "
            f"{EXTRA} (or pip install {package})"
        ) from None


class TensorBoardTracker:
    """RUN_DIR/tensorboard: scalars by step, the config as text, the figures as images."""

    name: ClassVar[str] = "tensorboard"
    package: ClassVar[str] = "tensorboard"

    @classmethod
    def require(cls) -> None:
        _import("tensorboard", cls.name, cls.package)
        _import("torch.utils.tensorboard", cls.name, cls.package)

    def __init__(self, options: TrackerOptions) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run may have logged past its checkpoint before it was killed: purge_step
        # makes TensorBoard drop those events, as metrics.jsonl is trimmed back.
        purge = options.step if options.step > 0 else None
        self.writer = SummaryWriter(str(options.run_dir / TENSORBOARD_DIR), purge_step=purge)

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(dict(config), indent=2, default=str)
        # TensorBoard renders text as Markdown: indenting makes it a code block.
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
        self.writer.flush()

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        import matplotlib.image

        for key, path in images.items():
            pixels = matplotlib.image.imread(str(path))[..., :3]  # RGBA floats in [0, 1]
            self.writer.add_image(key, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run: offline by default (WANDB_MODE respected), files under RUN_DIR/wandb
    (or WANDB_DIR). Every metric is plotted against the training step (`step`)."""

    name: ClassVar[str] = "wandb"
    package: ClassVar[str] = "wandb"

    @classmethod
    def require(cls) -> None:
        _import("wandb", cls.name, cls.package)

    def __init__(self, options: TrackerOptions) -> None:
        import wandb

        self.wandb = wandb
        run_dir = options.run_dir
        # A resumed run continues the same W&B run; a fresh start (step 0) is a new one.
        id_file = run_dir / WANDB_ID_NAME
        if options.step > 0 and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = secrets.token_hex(4)
            write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=options.project,
            name=options.name or run_dir.name,
            group=options.group,
            tags=list(options.tags) or None,
            id=run_id,
            resume="allow",
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
            # console="off": W&B would otherwise wrap stdout/stderr (the progress bar).
            settings=wandb.Settings(console="off"),
        )
        # Plot against our step, not W&B's own counter (which a resumed run restarts).
        self.run.define_metric("*", step_metric="step")

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({"step": step, **values})

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        logged = {key: self.wandb.Image(str(path)) for key, path in images.items()}
        self.run.log({"step": step, **logged})

    def close(self) -> None:
        self.run.finish()


TRACKERS: dict[str, Any] = {cls.name: cls for cls in (TensorBoardTracker, WandbTracker)}
TRACKER_NAMES = (NONE, *TRACKERS)


def tracker_names(given: Iterable[Any], option: str = "--tracker") -> tuple[str, ...]:
    """The tracker names in `given` (each item may be a comma list), checked: known names,
    each once, `none` alone. `none` gives ()."""
    if isinstance(given, str):
        given = (given,)
    names: list[str] = []
    for item in given:
        if not isinstance(item, str):
            raise UserError(f"{option} takes tracker names, got {item!r}")
        names += [n.strip() for n in item.split(",") if n.strip()]
    known = (NONE, *TRACKERS)  # read now: a tracker added to the table is known at once
    for n in names:
        if n not in known:
            raise UserError(f"unknown tracker {n!r} in {option}; choose {', '.join(known)}")
    if len(set(names)) < len(names):
        raise UserError(f"{option} names a tracker twice: {', '.join(names)}")
    if NONE in names and len(names) > 1:
        raise UserError(f"{option} none cannot be combined with other trackers")
    return tuple(n for n in names if n != NONE)


def require(names: Sequence[str]) -> None:
    """Import each tracker's package now (before any work): one line naming a missing one."""
    for name in names:
        TRACKERS[name].require()


def open_trackers(names: Sequence[str], options: TrackerOptions) -> list[Tracker]:
    """The trackers called `names`, opened."""
    return [TRACKERS[name](options) for name in names]


def metric_values(rec: MetricRecord) -> dict[str, float]:
    """Every number of a metrics.jsonl record but the step, a list as one series per layer
    (`gate_p/layer_3`, `alpha/layer_1`, ...); null fields are left out."""
    values: dict[str, float] = {}
    for key, value in rec.to_dict().items():
        if key == "step" or value is None or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            values[key] = value
        elif isinstance(value, list):
            values.update({f"{key}/layer_{i + 1}": v for i, v in enumerate(value)})
    return values
