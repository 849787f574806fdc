"""Checkpoints: `model.safetensors` (the weights, for eval/export) and `train_state.pt`.

`train_state.pt` is the single source of truth for `--resume`: it holds the model weights
too, with the optimizer state, the step, the data position (samples consumed) and the RNG
states of every rank. Both files are written to a temporary file and renamed, weights
first, so a kill at any moment leaves a complete, consistent `train_state.pt`. The sha256 of
each is recorded in `checksums.json` as it is written and checked when it is read, so bytes
damaged later are an error, never a silent start (runs without checksums.json still load).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalshift.errors import UserError
from causalshift.io import atomic_write, verify_checksum

STATE_NAME = "train_state.pt"
STATE_VERSION = 1


def rng_state() -> dict[str, Any]:
    """RNG states of torch, CUDA (if any), numpy and python, in torch.load-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write `train_state.pt` atomically, its checksum with it."""
    state = {"version": STATE_VERSION, **state}
    return atomic_write(run_dir / STATE_NAME, lambda tmp: torch.save(state, tmp), checksum=True)


def load_state(run_dir: Path) -> dict[str, Any]:
    """Read `train_state.pt`; UserError if missing, truncated or corrupt (its checksum
    differs from the one recorded when it was written)."""
    path = Path(run_dir) / STATE_NAME
    if not path.is_file():
        raise UserError(
            f"nothing to resume: {path} not found (a run stopped before its first "
            "checkpoint starts again without --resume)"
        )
    verify_checksum(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({msg}); it cannot be resumed"
        ) from None
    required = ("version", "step", "position", "model", "optimizer", "rng", "config")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"checkpoint {path} is incomplete or not a causalshift train state")
    if state["version"] != STATE_VERSION:
        raise UserError(f"checkpoint {path} has unknown version {state['version']}")
    return state


def check_weights_file(path: Path) -> None:
    """UserError if `model.safetensors` exists but cannot be read or fails its checksum."""
    if not path.is_file():
        return
    verify_checksum(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
        if header + 8 > size:
            raise ValueError("header longer than the file")
    except Exception as e:
        raise UserError(f"{path} is truncated or corrupt: {e}") from None
