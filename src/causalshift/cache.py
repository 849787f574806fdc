"""The cache folder for data extracted from installed packages (text, weights, tokenizers)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$CAUSALSHIFT_CACHE/parts...` (default `~/.cache/causalshift`), created on demand."""
    root = os.environ.get("CAUSALSHIFT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "causalshift"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
