"""`causalshift train`: train a GPT-2-style model with residual attenuation.

causalshift train                                     # cpu-small on the embedded corpus
causalshift train --preset tiny --residual gate --max-steps 50
causalshift train --out runs/x --resume               # continue after a kill
causalshift train --tracker tensorboard --tracker wandb  # also log to TensorBoard and W&B
torchrun --standalone --nproc_per_node=8 -m causalshift train --preset gpt2-124m --data DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift.config import add_config_arguments, config_overrides
from causalshift.errors import UserError
from causalshift.gpt.residual import get_mode
from causalshift.io import read_json_object
from causalshift.locks import output_folder
from causalshift.train.config import (
    MODEL_KEYS,
    PRESET_NAMES,
    RESUMABLE_MODEL_KEYS,
    TrainConfig,
    cli_options,
    flat_keys,
    load_config_file,
    preset,
)

if TYPE_CHECKING:
    from causalshift.train.loop import Trainer

DEFAULT_PRESET = "cpu-small"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help=f"Named configuration (default: {DEFAULT_PRESET}; the defaults shown below are "
        f"{DEFAULT_PRESET}'s, other presets set their own).",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="JSON object of training config fields, over the preset."
    )
    parser.add_argument(
        "--out", metavar="RUN_DIR", help="Run directory (default: runs/<time>-<preset>-<mode>)."
    )
    parser.add_argument(
        "--resume", action="store_true", help="Continue the run in --out from its checkpoint."
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="No progress bar."
    )
    add_config_arguments(parser, cli_options())


def _slug(cfg: TrainConfig) -> str:
    """The residual variant's run-name part (`none`, `fixed-L4-a0`, `gate`, ...)."""
    r = cfg.model.residual
    return get_mode(r.mode).slug(r.cut_layer, r.alpha)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line, with what they imply."""
    overrides = config_overrides(cli_options(), args)
    overrides.pop("preset", None)  # --preset picks the base config
    if "cut_layer" in overrides and "residual" not in overrides:
        overrides["residual"] = "fixed"
    if "grad_accum" in overrides and "batch_tokens" not in overrides:
        overrides["batch_tokens"] = None  # an explicit accumulation wins over the preset's
    return overrides


def _given_base(args: argparse.Namespace) -> TrainConfig:
    """preset -> --config FILE."""
    base = preset(args.preset or DEFAULT_PRESET)
    if args.config:
        base = TrainConfig.from_dict(load_config_file(args.config), base)
    return base


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """preset -> --config FILE -> command line; with --resume, the run's config.json ->
    command line (a --preset/--config given too must agree with config.json)."""
    overrides = cli_overrides(args)
    if not args.resume:
        return TrainConfig.from_dict(overrides, _given_base(args))
    if not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    path = Path(args.out) / "config.json"
    saved = read_json_object(path, "nothing to resume:")
    names = set(flat_keys())  # its "model", batch geometry, environment: derived
    base = TrainConfig.from_dict({k: v for k, v in saved.items() if k in names})
    if args.preset or args.config:  # the original command again, --resume added
        check_same_run(base, TrainConfig.from_dict(overrides, _given_base(args)), overrides, path)
    return TrainConfig.from_dict(overrides, base)


def check_same_run(
    saved: TrainConfig, given: TrainConfig, overrides: dict[str, Any], path: Path
) -> None:
    """Refuse a --resume whose --preset/--config (and model options) differ from the run's
    config.json, naming each field; command-line training options may change (as with
    --resume alone: e.g. a longer --max-steps)."""
    shaping = set(MODEL_KEYS) - set(RESUMABLE_MODEL_KEYS)
    free = set(overrides) - shaping
    old, new = saved.to_dict(), given.to_dict()
    differ = [k for k in new if new[k] != old[k] and k not in free]
    if differ:
        fields = ", ".join(f"{k} (saved {old[k]!r}, given {new[k]!r})" for k in differ)
        raise UserError(
            f"--resume: the options differ from {path}: {fields}; give the run's own "
            "options, or just --resume --out RUN_DIR to continue with its config"
        )


def _quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (before torch loads its runtime).

    On a CPU shared with other work, spinning threads steal cycles from the busy ones and
    slow training steps down (docs/training.md). Set OMP_WAIT_POLICY yourself to override.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _run_dir(
    args: argparse.Namespace, cfg: TrainConfig, is_main: bool, hold: contextlib.ExitStack
) -> Path:
    """--out (or a time-stamped name, rank 0's), locked by rank 0 into `hold`; a new run
    clears a start that never checkpointed and refuses a run that did."""
    from causalshift import runtime
    from causalshift.train.checkpoint import STATE_NAME
    from causalshift.train.runlog import METRICS_NAME, SUMMARY_NAME

    out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset}-{_slug(cfg)}"
    run_dir = Path(runtime.broadcast_object(out))
    if is_main:  # one writer per run directory, checked before the checkpoint test below
        hold.enter_context(output_folder(run_dir, "run directory"))
    if not args.resume and (run_dir / STATE_NAME).exists():
        raise UserError(
            f"{run_dir} already holds a run with a checkpoint: pass --resume to continue "
            "it, or choose another --out"
        )
    if not args.resume and is_main:  # a run that never checkpointed: start over
        for stale in (METRICS_NAME, SUMMARY_NAME):
            (run_dir / stale).unlink(missing_ok=True)
    return run_dir


def _banner(trainer: Trainer, resume: bool) -> str:
    """The first line on stderr: what is trained, how, where."""
    cfg, info = trainer.cfg, trainer.info
    n = trainer.model.num_params()
    return (
        f"{'resuming' if resume else 'training'} {trainer.run_dir} at step {trainer.step}: "
        f"{cfg.preset}, residual {_slug(cfg)}, {n / 1e6:.1f}M params, "
        f"{trainer.global_batch} x {cfg.model.block_size} = {trainer.step_tokens:,} "
        f"tokens/step ({cfg.batch_size} x {trainer.accum} accum x {info.world_size} procs), "
        f"{cfg.max_steps} steps, {info.device}, "
        f"{'bf16 autocast' if trainer.amp else 'float32'}"
        f"{', compiled' if cfg.compile else ''}"
    )


def run(args: argparse.Namespace) -> int:
    _quiet_openmp()
    import torch

    from causalshift import runtime
    from causalshift.train.loop import Trainer
    from causalshift.train.prepare import resolve_data
    from causalshift.train.trackers import require as require_trackers

    cfg = resolve_config(args)
    require_trackers(cfg.trackers)  # a missing package is one line, before any work
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = runtime.setup(cfg.device)
    hold = contextlib.ExitStack()  # the run directory's lock, held to the end of the run
    try:
        cfg.grad_accum_for(info.world_size)  # batch divisibility, before any work
        run_dir = _run_dir(args, cfg, info.is_main, hold)
        if info.is_main:  # rank 0 prepares the data (once, cached), the others wait
            data_dir = resolve_data(cfg.data, progress=args.progress)
        runtime.barrier()
        if not info.is_main:
            data_dir = resolve_data(cfg.data, progress=False)
        trainer = Trainer(cfg, run_dir, data_dir, info, resume=args.resume, progress=args.progress)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            trainer.write_config()
            print(_banner(trainer, args.resume), file=sys.stderr, flush=True)
        return trainer.run()
    finally:
        hold.close()
        runtime.teardown()
        torch.set_num_threads(threads)
