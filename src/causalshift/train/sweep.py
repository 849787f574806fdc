"""`causalshift sweep`: the baseline and a fixed cut at each layer, per seed (paper figure 4).

Each run is a `causalshift train` subprocess in OUT/<name> (e.g. OUT/none-s1,
OUT/fixed-L4-a0-s1). On CPU the runs go one after another; with `--devices
cuda:0,cuda:1,...` one run per GPU at a time, in parallel (logs in OUT/<name>/train.log).
A finished run (summary.json) is skipped and an interrupted one resumed, so re-running
the same command continues a sweep. Writes OUT/sweep.json and
OUT/val_loss_vs_cut_layer.png.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.config import int_list, str_list
from causalshift.errors import UserError
from causalshift.io import write_json
from causalshift.train.config import PRESET_NAMES, preset

SWEEP_NAME = "sweep.json"
FIGURE_NAME = "val_loss_vs_cut_layer.png"


@dataclass(frozen=True)
class SweepRun:
    mode: str  # none | fixed
    cut_layer: int | None
    alpha: float
    seed: int

    @property
    def name(self) -> str:
        if self.mode == "none":
            return f"none-s{self.seed}"
        return f"fixed-L{self.cut_layer}-a{self.alpha:g}-s{self.seed}"

    def train_args(self) -> list[str]:
        args = ["--residual", self.mode, "--seed", str(self.seed)]
        if self.mode == "fixed":
            args += ["--cut-layer", str(self.cut_layer), "--alpha", repr(self.alpha)]
        return args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=PRESET_NAMES, default="cpu-small", help="Preset (default: cpu-small)."
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="Sweep folder.")
    parser.add_argument(
        "--layers", default="all", help="Cut layers: all or a comma list like 2,4,6."
    )
    parser.add_argument("--alpha", type=float, default=0.0, help="Residual coefficient at the cut.")
    parser.add_argument("--seeds", type=int_list, default=(1,), help="Seeds, e.g. 1,2,3.")
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
        "--train-args",
        default="",
        help='Extra options for every `causalshift train`, e.g. "--no-compile --lr 2e-3".',
    )


def plan(args: argparse.Namespace) -> list[SweepRun]:
    cfg = preset(args.preset)
    n_layer = cfg.n_layer
    if args.config:
        from causalshift.train.config import TrainConfig, load_config_file

        n_layer = TrainConfig.from_dict(load_config_file(args.config), cfg).n_layer
    if args.layers.strip() == "all":
        layers = list(range(1, n_layer + 1))
    else:
        try:
            layers = list(int_list(args.layers))
        except argparse.ArgumentTypeError as e:
            raise UserError(str(e)) from None
    if not layers:
        raise UserError("no cut layers given (--layers all or e.g. 2,4,6)")
    bad = [k for k in layers if not 1 <= k <= n_layer]
    if bad:
        raise UserError(f"cut layer {bad[0]} is out of range 1..{n_layer} for preset {args.preset}")
    if not args.alpha >= 0:
        raise UserError(f"alpha must be >= 0, got {args.alpha}")
    if not args.seeds:
        raise UserError("no seeds given (--seeds 1,2)")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"max_steps must be positive, got {args.max_steps}")
    runs = []
    for seed in args.seeds:
        if args.baseline:
            runs.append(SweepRun("none", None, 0.0, seed))
        runs += [SweepRun("fixed", k, float(args.alpha), seed) for k in layers]
    return runs


def _status(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "finished"
    if (run_dir / "train_state.pt").is_file():
        return "resume"
    return "new"


def _final(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _command(args: argparse.Namespace, run: SweepRun, run_dir: Path, device: str) -> list[str]:
    cmd = [sys.executable, "-m", "causalshift", "train", "--out", str(run_dir), "--device", device]
    if _status(run_dir) == "resume":
        cmd.append("--resume")
    else:
        cmd += ["--preset", args.preset, *run.train_args()]
        if args.config:
            cmd += ["--config", args.config]
        cmd += ["--data", args.data_dir]
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    cmd += shlex.split(args.train_args)
    return cmd


def _result(run: SweepRun, run_dir: Path, status: str) -> dict[str, Any]:
    final = _final(run_dir)
    return {
        "name": run.name,
        "mode": run.mode,
        "cut_layer": run.cut_layer,
        "alpha": run.alpha,
        "seed": run.seed,
        "final_val_loss": final.get("final_val_loss"),
        "tokens": final.get("tokens"),
        "seconds": final.get("seconds"),
        "run_dir": str(run_dir),
        "status": status,
    }


def write_sweep(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    from causalshift.train.figures import plot_sweep, sweep_summary

    out = Path(args.out)
    doc = {
        "schema_version": 1,
        "preset": args.preset,
        "alpha": args.alpha,
        "seeds": list(args.seeds),
        "max_steps": args.max_steps,
        "data": args.data_dir,
        "runs": sorted(results, key=lambda r: (r["seed"], r["cut_layer"] or 0)),
        **sweep_summary(results),
    }
    write_json(out / SWEEP_NAME, doc)
    plot_sweep(doc, out / FIGURE_NAME)
    return doc


def run(args: argparse.Namespace) -> int:
    from causalshift.train.prepare import resolve_data

    runs = plan(args)
    devices = list(args.devices)
    if not devices or any(d != "cpu" and not d.startswith("cuda") for d in devices):
        raise UserError(f"--devices must be cpu or cuda:0,cuda:1,..., got {args.devices}")
    if "cpu" in devices and len(devices) > 1:
        raise UserError("--devices cpu runs in sequence: do not mix it with GPUs")
    base = preset(args.preset)
    args.data_dir = str(resolve_data(args.data if args.data is not None else base.data))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    todo: queue.Queue = queue.Queue()
    results: dict[str, dict[str, Any]] = {}
    for r in runs:
        run_dir = out / r.name
        if _status(run_dir) == "finished":
            results[r.name] = _result(r, run_dir, "finished")
        else:
            if _status(run_dir) == "new" and run_dir.exists():
                shutil.rmtree(run_dir)  # started but never checkpointed: start over
            todo.put(r)
    total, lock = len(runs), threading.Lock()
    print(
        f"sweep {out}: {total} runs ({total - todo.qsize()} already finished) on "
        f"{', '.join(devices)}",
        flush=True,
    )
    parallel = len(devices) > 1

    def worker(device: str) -> None:
        while True:
            try:
                r = todo.get_nowait()
            except queue.Empty:
                return
            run_dir = out / r.name
            cmd = _command(args, r, run_dir, device)
            with lock:
                print(f"[{len(results) + 1}/{total}] {r.name} on {device}", flush=True)
            t0 = time.perf_counter()
            env = dict(os.environ)
            if parallel:
                run_dir.mkdir(parents=True, exist_ok=True)
                with open(run_dir / "train.log", "a", encoding="utf-8") as log:
                    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            else:
                code = subprocess.call(cmd, env=env)
            status = "finished" if code == 0 and _status(run_dir) == "finished" else "failed"
            with lock:
                results[r.name] = _result(r, run_dir, status)
                write_sweep(args, list(results.values()))
                loss = results[r.name]["final_val_loss"]
                shown = f"val loss {loss:.4f}" if loss is not None else f"exit code {code}"
                took = time.perf_counter() - t0
                print(f"  {r.name}: {status}, {shown}, {took:.0f} s", flush=True)
            if code in (130, 143, -2, -15):  # interrupted: stop the sweep
                while not todo.empty():
                    todo.get_nowait()
                return

    threads = [threading.Thread(target=worker, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runs:  # not started (the sweep was interrupted)
        results.setdefault(r.name, _result(r, out / r.name, "pending"))
    doc = write_sweep(args, list(results.values()))
    failed = [r["name"] for r in doc["runs"] if r["status"] != "finished"]
    print(f"wrote {out / SWEEP_NAME} and {out / FIGURE_NAME}", flush=True)
    if failed:
        print(f"causalshift sweep: {len(failed)} run(s) did not finish: {', '.join(failed)}")
        return 1
    return 0
