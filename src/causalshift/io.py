"""Atomic writes: results and checkpoints go to a temporary file, then are renamed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync it, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_jsonl_records(path: str | os.PathLike, key: str = "step") -> list[dict[str, Any]]:
    """The JSON objects with `key` in a .jsonl file such as metrics.jsonl.

    A missing file gives []; a partial last line (from a kill) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and key in rec:
            records.append(rec)
    return records


def read_json_object(path: str | os.PathLike, what: str = "") -> dict[str, Any]:
    """A JSON file holding an object; anything else is a UserError naming `what` and path."""
    from causalshift.errors import UserError

    path = Path(path)
    name = f"{what} {path}".strip()
    if not path.is_file():
        raise UserError(f"{name} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{name} must hold a JSON object")
    return data
