"""Find and read result files: analyze `results.json`, `sweep.json`, run dirs, `eval.json`.

Pure JSON reads: nothing here imports torch or transformers, or loads a model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causalshift.errors import UserError
from causalshift.io import read_jsonl_records

RESULTS = "results.json"  # causalshift analyze
SWEEP = "sweep.json"  # causalshift sweep
METRICS = "metrics.jsonl"  # causalshift train (with config.json)
EVAL = "eval.json"  # causalshift eval
SKIP_DIRS = {".git", "__pycache__", "figures", "tensorboard", ".venv", "node_modules"}


@dataclass
class Run:
    """A training run directory: its config and metrics, plus evals that belong to it."""

    path: Path
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] | None = None

    @property
    def final_val_loss(self) -> float | None:
        vals = [r["val_loss"] for r in self.metrics if _num(r.get("val_loss"))]
        return vals[-1] if vals else None

    @property
    def tokens(self) -> int | None:
        toks = [r["tokens"] for r in self.metrics if _num(r.get("tokens"))]
        return toks[-1] if toks else None

    @property
    def gate_history(self) -> list[tuple[int, list[float]]]:
        return [(r["step"], r["gate_p"]) for r in self.metrics if r.get("gate_p")]


@dataclass
class Sources:
    """Everything a report is built from."""

    analyses: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    sweeps: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    evals: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # unmatched ones

    def empty(self) -> bool:
        return not (self.analyses or self.sweeps or self.runs or self.evals)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; UserError when it is not readable JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a partial last line (from a kill) is skipped."""
    return read_jsonl_records(path)


def run_info(cfg: dict[str, Any]) -> dict[str, Any]:
    """Residual mode, cut layer, alpha, seed, preset and depth from a config.json.

    Reads a run directory's config (TrainConfig fields + "model": GPTConfig dict) or an
    HF export's config (model_type gpt2 -> mode none; causalshift_gpt -> "causalshift").
    """
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    if model is None and isinstance(cfg.get("causalshift"), dict):
        model = cfg["causalshift"]
    residual = (model or {}).get("residual")
    residual = residual if isinstance(residual, dict) else {}
    mode = cfg.get("residual") if isinstance(cfg.get("residual"), str) else None
    mode = mode or residual.get("mode") or ("none" if cfg.get("model_type") == "gpt2" else None)
    info: dict[str, Any] = {
        "mode": mode,
        "cut_layer": cfg.get("cut_layer", residual.get("cut_layer")),
        "alpha": cfg.get("alpha", residual.get("alpha")),
        "seed": cfg.get("seed"),
        "preset": cfg.get("preset"),
        "n_layer": (model or {}).get("n_layer", cfg.get("n_layer")),
    }
    return {k: v for k, v in info.items() if v is not None}


def mode_label(info: dict[str, Any]) -> str:
    """'baseline', 'fixed K=4', 'fixed K=4 (alpha=0.5)', 'gate', ... for tables and legends."""
    mode = info.get("mode")
    alpha = info.get("alpha")
    if mode is None:
        return "unknown"
    if mode == "none":
        return "baseline"
    if mode == "fixed":
        label = f"fixed K={info.get('cut_layer')}"
        return label + (f" (alpha={alpha:g})" if _num(alpha) and alpha != 0 else "")
    if mode in ("gate", "gate-hard"):
        return mode + (f" (alpha={alpha:g})" if _num(alpha) and alpha != 0 else "")
    return str(mode)


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        yield Path(dirpath), set(filenames)


def find_sources(dirs: list[str | os.PathLike]) -> Sources:
    """Walk `dirs` (recursively) for result files; a missing directory is a UserError."""
    src = Sources()
    evals: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise UserError(f"{root} not found")
        if root.is_file():  # a single result file given directly
            root, names = root.parent, {root.name}
            walk = [(root, names)]
        else:
            walk = _walk(root)
        for folder, names in walk:
            folder = folder.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            if RESULTS in names:
                data = read_json(folder / RESULTS)
                if isinstance(data.get("models"), list):
                    src.analyses.append((folder, data))
            if SWEEP in names:
                src.sweeps.append((folder, read_json(folder / SWEEP)))
            if METRICS in names and "config.json" in names:
                cfg = read_json(folder / "config.json")
                metrics = read_metrics(folder / METRICS)
                env = cfg.get("environment") if isinstance(cfg.get("environment"), dict) else None
                src.runs.append(Run(folder, run_info(cfg), metrics, environment=env))
            if EVAL in names:
                data = read_json(folder / EVAL)
                if isinstance(data.get("results"), list):
                    evals.append((folder, data))
    by_path = {run.path: run for run in src.runs}
    for folder, data in evals:
        model_path = data.get("model", {}).get("path")
        target = Path(model_path).resolve() if model_path else None
        run = by_path.get(folder) or (by_path.get(target) if target else None)
        if run is not None:
            run.evals.append(data)
        else:
            src.evals.append((folder, data))
    return src
