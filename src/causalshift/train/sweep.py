"""`causalshift sweep`: the baseline, a fixed cut at each (layer, alpha) and the learned
modes, per seed (paper figure 4, and a layer x alpha heatmap).

Each run is a `causalshift train` subprocess in OUT/<name> (OUT/none-s1,
OUT/fixed-L4-a0.5-s1, OUT/gate-s1, ...), given its whole TrainConfig as data: the sweep
resolves it (preset -> --config -> the run's residual variant, seed, data, steps, device and
trackers) and passes it as a JSON `--config` file; `--train-args` (the user's own options)
follow on its command line. On CPU the runs go one after another; with `--devices
cuda:0,cuda:1,...` one run per GPU at a time, in parallel (logs in OUT/<name>/train.log,
where also the Python call `causalshift.api.sweep` sends them unless progress=True).
A finished run (summary.json) is skipped and an interrupted one resumed, so re-running
the same command, or one with more alphas, seeds or modes, continues a sweep. Writes
OUT/sweep.json (the runs, and each cut's and learned mode's difference to the baseline with
a paired interval over seeds: `results.sweep_comparisons`), OUT/val_loss_vs_cut_layer.png
and OUT/val_loss_heatmap.png.
"""

from __future__ import annotations

import argparse
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.config import check_number, int_list, str_list
from causalshift.errors import UserError
from causalshift.figures import SweepSeries, plot_heatmap, plot_sweep
from causalshift.figures.heatmap import FILE_NAME as HEATMAP_NAME
from causalshift.figures.sweep import FILE_NAME as FIGURE_NAME
from causalshift.gpt.residual import MODES, get_mode, learned_modes
from causalshift.io import write_json
from causalshift.locks import output_folder
from causalshift.results import SWEEP_NAME, SweepResult, SweepRunRecord, read_summary
from causalshift.train.config import (
    PRESET_NAMES,
    TrainConfig,
    load_config_file,
    preset,
)
from causalshift.train.trackers import TRACKER_NAMES, require, tracker_names

# Options whose value is free text that may start with "-": the CLI reads
# `--train-args "--no-compile"` as `--train-args=--no-compile` (argparse would take the
# value for an option of its own).
TEXT_OPTIONS = ("--train-args",)
# Options of `causalshift train` that the sweep sets itself (refused in --train-args).
SWEEP_SETS = ("out", "resume", "preset", "config")


@dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: the baseline (mode none), a fixed cut at (layer, alpha) or a
    learned mode (gate, ...; its alpha is the gate's floor A of the base config), and its
    seed."""

    mode: str
    cut_layer: int | None
    alpha: float
    seed: int

    @property
    def name(self) -> str:
        return f"{get_mode(self.mode).slug(self.cut_layer, self.alpha)}-s{self.seed}"

    def config(self, base: TrainConfig) -> TrainConfig:
        """`base` with this run's residual variant and seed (the rest of the model kept)."""
        changes: dict[str, Any] = {"residual": self.mode, "seed": self.seed}
        if self.mode == "fixed":
            changes.update(cut_layer=self.cut_layer, alpha=self.alpha)
        return base.replace(**changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=PRESET_NAMES, default="cpu-small", help="Preset (default: cpu-small)."
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="Sweep folder.")
    parser.add_argument(
        "--layers", default="all", help="Cut layers: all or a comma list like 2,4,6."
    )
    parser.add_argument(
        "--alpha",
        default="0",
        help="Residual coefficients at the cut, a comma list like 0,0.25,0.5 (default: 0).",
    )
    parser.add_argument("--seeds", type=int_list, default=(1,), help="Seeds, e.g. 1,2,3.")
    parser.add_argument(
        "--modes",
        type=str_list,
        default=(),
        help=f"Learned modes to train per seed too, a comma list of {', '.join(learned_modes())}.",
    )
    parser.add_argument("--max-steps", type=int, help="Steps per run (default: the preset's).")
    parser.add_argument("--data", help="Data dir or SPEC (default: the preset's).")
    parser.add_argument("--config", metavar="FILE", help="Training config JSON for every run.")
    parser.add_argument(
        "--devices",
        type=str_list,
        default=("cpu",),
        help="cpu (runs in sequence) or cuda:0,cuda:1,... (one run per GPU in parallel).",
    )
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="Skip the no-cut runs."
    )
    parser.add_argument(
        "--tracker",
        action="append",
        default=[],
        help=f"Every run's experiment tracker: {' | '.join(TRACKER_NAMES)} (repeatable); W&B "
        "runs are grouped by the sweep folder's name.",
    )
    parser.add_argument(
        "--train-args",
        default="",
        help='Extra options for every `causalshift train`, e.g. "--no-compile --lr 2e-3".',
    )


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The sweep's config before each run's own: preset -> --config FILE."""
    cfg = preset(args.preset)
    if args.config:
        cfg = TrainConfig.from_dict(load_config_file(args.config), cfg)
    return cfg


def alpha_list(text: str) -> list[float]:
    """--alpha '0,0.5' as numbers, each finite and >= 0, none twice."""
    try:
        alphas = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--alpha must be comma-separated numbers, got {text!r}") from None
    if not alphas:
        raise UserError("no alpha given (--alpha 0 or e.g. 0,0.25,0.5)")
    for a in alphas:
        check_number("--alpha", a, ge=0)
    _no_repeats("--alpha", alphas)
    return alphas


def _no_repeats(option: str, values: list[Any]) -> None:
    """One line naming the first value that `values` lists twice."""
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        shown = f"{twice:g}" if isinstance(twice, float) else str(twice)
        raise UserError(f"{option} lists {shown} twice")


def _layers(args: argparse.Namespace, n_layer: int) -> list[int]:
    if args.layers.strip() == "all":
        return list(range(1, n_layer + 1))
    try:
        layers = list(int_list(args.layers))
    except argparse.ArgumentTypeError as e:
        raise UserError(str(e)) from None
    if not layers:
        raise UserError("no cut layers given (--layers all or e.g. 2,4,6)")
    bad = [k for k in layers if not 1 <= k <= n_layer]
    if bad:
        raise UserError(f"cut layer {bad[0]} is out of range 1..{n_layer} for preset {args.preset}")
    _no_repeats("--layers", layers)
    return layers


def _check_seeds_and_modes(args: argparse.Namespace) -> None:
    if not args.seeds:
        raise UserError("no seeds given (--seeds 1,2)")
    for seed in args.seeds:  # numpy's legacy seeding takes 0 .. 2**32 - 1 (as TrainConfig)
        check_number("--seeds", seed, integer=True, ge=0, le=2**32 - 1)
    _no_repeats("--seeds", list(args.seeds))  # each seed is one pair of the paired intervals
    learned = learned_modes()
    for mode in args.modes:
        if mode not in learned:
            what = "a fixed cut is --layers/--alpha" if mode in MODES else "unknown mode"
            raise UserError(
                f"--modes {mode!r}: {what}; --modes takes learned modes: {', '.join(learned)}"
            )
    _no_repeats("--modes", list(args.modes))


def plan(args: argparse.Namespace) -> list[SweepRun]:
    """Every run of the sweep, seed by seed: baseline, cuts (by alpha, then layer), learned
    modes. Checks every option first (UserError)."""
    base = base_config(args)
    layers = _layers(args, base.model.n_layer)
    alphas = alpha_list(args.alpha)
    _check_seeds_and_modes(args)
    if args.max_steps is not None:
        check_number("--max-steps", args.max_steps, integer=True, ge=1)
    args.trackers = tracker_names(args.tracker)
    runs = []
    for seed in args.seeds:
        if args.baseline:
            runs.append(SweepRun("none", None, 0.0, seed))
        runs += [SweepRun("fixed", k, a, seed) for a in alphas for k in layers]
        runs += [SweepRun(m, None, float(base.model.residual.alpha), seed) for m in args.modes]
    check_train_args(args, runs)
    require(args.trackers)  # a missing package is one line now, not one per run
    return runs


class _TrainArgsParser(argparse.ArgumentParser):
    """`causalshift train`'s options, for --train-args: a bad one is a UserError."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"--train-args: {message}")


def train_argv(args: argparse.Namespace) -> list[str]:
    """--train-args split as a shell would (an unbalanced quote is a UserError)."""
    try:
        return shlex.split(args.train_args)
    except ValueError as e:
        raise UserError(f"--train-args {args.train_args!r} cannot be split: {e}") from None


def check_train_args(args: argparse.Namespace, runs: list[SweepRun]) -> None:
    """Every run's `causalshift train` options, checked now rather than in each run: unknown
    options, bad numbers (`--lr inf`), options the sweep sets itself."""
    from causalshift.train.command import add_arguments as add_train_arguments
    from causalshift.train.command import cli_overrides

    parser = _TrainArgsParser(prog="causalshift train", add_help=False)
    add_train_arguments(parser)
    parsed = parser.parse_args(train_argv(args))
    given = [f"--{name}" for name in SWEEP_SETS if getattr(parsed, name)]
    if given:
        raise UserError(f"--train-args may not set {', '.join(given)}: the sweep sets it")
    overrides = cli_overrides(parsed)
    base = base_config(args)
    if args.max_steps is not None:
        base = base.replace(max_steps=args.max_steps)
    try:
        for run in runs:
            TrainConfig.from_dict(overrides, run.config(base))
    except UserError as e:
        raise UserError(f"--train-args: {e}") from None


def _status(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "finished"
    if (run_dir / "train_state.pt").is_file():
        return "resume"
    return "new"


def _command(
    args: argparse.Namespace, run: SweepRun, run_dir: Path, device: str, config_file: Path
) -> list[str]:
    """The `causalshift train` command of `run`; a new run's config goes to `config_file`."""
    cmd = [sys.executable, "-m", "causalshift", "train", "--out", str(run_dir)]
    tracking = _tracking(args)
    if _status(run_dir) == "resume":  # the run's config.json holds its config
        cmd += ["--resume", "--device", device]
        if args.max_steps is not None:
            cmd += ["--max-steps", str(args.max_steps)]
        if tracking:  # given again: a run resumed by a sweep with --tracker logs there too
            cmd += [x for name in tracking["tracker"] for x in ("--tracker", name)]
            cmd += ["--wandb-group", tracking["wandb_group"]]
    else:
        changes: dict[str, Any] = {"data": args.data_dir, "device": device, **tracking}
        if args.max_steps is not None:
            changes["max_steps"] = args.max_steps
        write_json(config_file, run.config(base_config(args)).replace(**changes).to_dict())
        cmd += ["--config", str(config_file)]
    return cmd + train_argv(args)


def _tracking(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the sweep's --tracker sets in every run ({} without one): the
    trackers, and the sweep folder's name as the W&B group."""
    names = getattr(args, "trackers", None) or tracker_names(args.tracker)
    if not names:
        return {}
    return {"tracker": list(names), "wandb_group": Path(args.out).resolve().name}


def _result(run: SweepRun, run_dir: Path, status: str) -> SweepRunRecord:
    final = read_summary(run_dir)
    return SweepRunRecord(
        name=run.name,
        mode=run.mode,
        cut_layer=run.cut_layer,
        alpha=run.alpha,
        seed=run.seed,
        final_val_loss=final.final_val_loss if final else None,
        tokens=final.tokens if final else None,
        seconds=final.seconds if final else None,
        run_dir=str(run_dir),
        status=status,
    )


def _run_order(r: SweepRunRecord) -> tuple:
    """Seed by seed: baseline, cuts by alpha then layer, learned modes in report order."""
    order = MODES[r.mode].order if r.mode in MODES else 99
    return (r.seed or 0, order, r.mode, r.alpha or 0.0, r.cut_layer or 0)


def write_sweep(args: argparse.Namespace, results: list[SweepRunRecord]) -> SweepResult:
    """sweep.json (the runs so far and their statistics) and its two figures."""
    out = Path(args.out)
    alphas = alpha_list(args.alpha)
    sweep = SweepResult(
        preset=args.preset,
        alpha=alphas[0] if len(alphas) == 1 else None,
        alphas=alphas,
        seeds=list(args.seeds),
        modes=list(args.modes),
        max_steps=args.max_steps,
        data=args.data_dir,
        runs=sorted(results, key=_run_order),
    ).with_stats()
    sweep.write(out)
    plot_sweep([SweepSeries(sweep)], out / FIGURE_NAME)
    plot_heatmap(sweep, out / HEATMAP_NAME)
    return sweep


def summary_lines(sweep: SweepResult) -> list[str]:
    """The best cut and each learned mode against the baseline (and the best cut)."""
    lines = []
    best = sweep.best_cut()
    for c in ([best] if best else []) + sweep.learned:
        what = (
            f"best cut K={c.cut_layer} alpha={c.alpha:g}"
            if c.mode == "fixed"
            else f"{get_mode(c.mode).label(None, c.alpha)}"
        )
        parts = [f"{what}: val loss {c.mean:.4f}"]
        for ref, d in (("baseline", c.vs_baseline), ("best cut", c.vs_best)):
            if d is not None:
                ci = f" [{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]" if d.ci95 else " (one seed)"
                parts.append(f"{d.mean:+.4f}{ci} vs {ref}")
        lines.append(", ".join(parts))
    return lines


class _Runner:
    """Runs the sweep's pending runs, one per device at a time, and keeps sweep.json current."""

    def __init__(self, args: argparse.Namespace, runs: list[SweepRun], devices: list[str]):
        self.args, self.runs, self.devices = args, runs, devices
        self.out = Path(args.out)
        self.todo: queue.Queue = queue.Queue()
        self.results: dict[str, SweepRunRecord] = {}
        self.lock = threading.Lock()
        for r in runs:
            run_dir = self.out / r.name
            if _status(run_dir) == "finished":
                self.results[r.name] = _result(r, run_dir, "finished")
            else:
                if _status(run_dir) == "new" and run_dir.exists():
                    shutil.rmtree(run_dir)  # started but never checkpointed: start over
                self.todo.put(r)

    def run_all(self) -> SweepResult:
        """Every pending run (a thread per device); the final sweep.json document."""
        threads = [threading.Thread(target=self.worker, args=(d,)) for d in self.devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in self.runs:  # not started (the sweep was interrupted)
            self.results.setdefault(r.name, _result(r, self.out / r.name, "pending"))
        return write_sweep(self.args, list(self.results.values()))

    def worker(self, device: str) -> None:
        while True:
            try:
                r = self.todo.get_nowait()
            except queue.Empty:
                return
            code = self.run_one(r, device)
            if code in (130, 143, -2, -15):  # interrupted: stop the sweep
                while not self.todo.empty():
                    self.todo.get_nowait()
                return

    def run_one(self, r: SweepRun, device: str) -> int:
        """`causalshift train` for `r` on `device`; returns its exit code."""
        run_dir = self.out / r.name
        total = len(self.runs)
        with self.lock:
            print(f"[{len(self.results) + 1}/{total}] {r.name} on {device}", flush=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="causalshift-sweep-") as tmp:
            cmd = _command(self.args, r, run_dir, device, Path(tmp) / "config.json")
            env = dict(os.environ)
            if len(self.devices) > 1 or getattr(self.args, "quiet", False):
                run_dir.mkdir(parents=True, exist_ok=True)
                with open(run_dir / "train.log", "a", encoding="utf-8") as log:
                    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            else:
                code = subprocess.call(cmd, env=env)
        status = "finished" if code == 0 and _status(run_dir) == "finished" else "failed"
        with self.lock:
            self.results[r.name] = _result(r, run_dir, status)
            write_sweep(self.args, list(self.results.values()))
            loss = self.results[r.name].final_val_loss
            shown = f"val loss {loss:.4f}" if loss is not None else f"exit code {code}"
            took = time.perf_counter() - t0
            print(f"  {r.name}: {status}, {shown}, {took:.0f} s", flush=True)
        return code


def run(args: argparse.Namespace) -> int:
    from causalshift.train.prepare import resolve_data

    runs = plan(args)
    devices = list(args.devices)
    if not devices or any(d != "cpu" and not d.startswith("cuda") for d in devices):
        raise UserError(f"--devices must be cpu or cuda:0,cuda:1,..., got {args.devices}")
    if "cpu" in devices and len(devices) > 1:
        raise UserError("--devices cpu runs in sequence: do not mix it with GPUs")
    with output_folder(args.out) as out:  # one sweep per folder; checked before any work
        # The preset's data unless --data (a --config file's "data" is not used: as before).
        data = args.data if args.data is not None else preset(args.preset).data
        args.data_dir = str(resolve_data(data))
        return _sweep(args, runs, devices, out)


def _sweep(args: argparse.Namespace, runs: list[SweepRun], devices: list[str], out: Path) -> int:
    """Run the planned runs in `out` (locked by the caller); exit code 1 if any failed."""
    runner = _Runner(args, runs, devices)
    total = len(runs)
    print(
        f"sweep {out}: {total} runs ({total - runner.todo.qsize()} already finished) on "
        f"{', '.join(devices)}",
        flush=True,
    )
    sweep = runner.run_all()
    failed = [r.name for r in sweep.runs if r.status != "finished"]
    for line in summary_lines(sweep):
        print(line, flush=True)
    print(f"wrote {out / SWEEP_NAME}, {out / FIGURE_NAME} and {out / HEATMAP_NAME}", flush=True)
    if failed:
        print(f"causalshift sweep: {len(failed)} run(s) did not finish: {', '.join(failed)}")
        return 1
    return 0
