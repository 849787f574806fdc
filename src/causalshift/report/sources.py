"""Find result files and read them as records: analyze `results.json`, `sweep.json`, training
runs (`config.json` + `metrics.jsonl`) and `eval.json`.

Pure JSON reads (through causalshift.results): nothing here imports torch or transformers,
or loads a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causalshift.errors import UserError
from causalshift.results import (
    EVAL_NAME,
    METRICS_NAME,
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    SWEEP_NAME,
    AnalyzeResult,
    EvalResult,
    SweepResult,
    TrainingRun,
)

SKIP_DIRS = {".git", "__pycache__", "figures", "tensorboard", "wandb", ".venv", "node_modules"}


@dataclass
class Sources:
    """Everything a report is built from."""

    analyses: list[tuple[Path, AnalyzeResult]] = field(default_factory=list)
    sweeps: list[tuple[Path, SweepResult]] = field(default_factory=list)
    runs: list[TrainingRun] = field(default_factory=list)
    evals: list[tuple[Path, EvalResult]] = field(default_factory=list)  # unmatched ones
    # result files that do not hold their record ("FILE has no ..."): skipped
    malformed: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.analyses or self.sweeps or self.runs or self.evals)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; UserError when it is not readable JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


def _walk(root: Path) -> Iterator[tuple[Path, set[str]]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        yield Path(dirpath), set(filenames)


def _analysis_problem(data: dict[str, Any]) -> str | None:
    """Why a results.json is not an analyze result (None when it is one)."""
    models = data.get("models")
    if not isinstance(models, list):
        return 'has no "models" list (not an analyze result)'
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("layers"), list):
            return f'has a model entry ({i + 1}) without its "layers" list'
        if not isinstance(m.get("num_layers"), int) or not all(
            isinstance(r, dict) and isinstance(r.get("layer"), int) for r in m["layers"]
        ):
            return f'has a model entry ({i + 1}) without "num_layers" or numbered layers'
    return None


def _read_folder(src: Sources, evals: list[tuple[Path, EvalResult]], folder: Path, names: set[str]):
    """Add the result files among `names` in `folder` (evals are matched to runs later)."""
    if RESULTS_NAME in names:
        data = read_json(folder / RESULTS_NAME)
        problem = _analysis_problem(data)
        if problem is None:
            src.analyses.append((folder, AnalyzeResult.from_dict(data)))
        else:
            src.malformed.append(f"{folder / RESULTS_NAME} {problem}")
    if SWEEP_NAME in names:
        data = read_json(folder / SWEEP_NAME)
        if isinstance(data.get("runs", []), list):
            src.sweeps.append((folder, SweepResult.from_dict(data)))
        else:
            src.malformed.append(f'{folder / SWEEP_NAME} has no "runs" list (not a sweep result)')
    if METRICS_NAME in names and RUN_CONFIG_NAME in names:
        cfg = read_json(folder / RUN_CONFIG_NAME)
        src.runs.append(TrainingRun.from_config(folder, cfg))
    if EVAL_NAME in names:
        data = read_json(folder / EVAL_NAME)
        if isinstance(data.get("results"), list):
            evals.append((folder, EvalResult.from_dict(data)))
        else:
            src.malformed.append(f'{folder / EVAL_NAME} has no "results" list (not an eval result)')


def find_sources(dirs: list[str | os.PathLike]) -> Sources:
    """Walk `dirs` (recursively) for result files; a missing directory is a UserError.

    An eval.json goes with the training run it was made of (its folder, or the model path it
    records); the others stay in `Sources.evals`."""
    src = Sources()
    evals: list[tuple[Path, EvalResult]] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise UserError(f"{root} not found")
        # a single result file given directly: only that file of its folder
        walk = [(root.parent, {root.name})] if root.is_file() else _walk(root)
        for folder, names in walk:
            folder = folder.resolve()
            if folder not in seen:
                seen.add(folder)
                _read_folder(src, evals, folder, names)
    by_path = {run.path: run for run in src.runs}
    for folder, ev in evals:
        model_path = ev.model.get("path") if isinstance(ev.model, dict) else None
        target = Path(model_path).resolve() if model_path else None
        run = by_path.get(folder) or (by_path.get(target) if target else None)
        if run is not None:
            run.evals.append(ev)
        else:
            src.evals.append((folder, ev))
    if src.empty() and src.malformed:  # say why nothing was found
        more = f" (and {len(src.malformed) - 1} more)" if len(src.malformed) > 1 else ""
        raise UserError(f"no result files found: {src.malformed[0]}{more}")
    return src
