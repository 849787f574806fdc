"""Data SPECs served by the Hugging Face hub through `datasets`: `wikitext`, `hf:NAME...`.

Without network both fail fast with a UserError: a 3-second connection probe runs first
(`datasets` itself retries for ~25 s). With HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 the
probe is skipped and `datasets` reads its local cache.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator
from urllib.parse import urlparse

from causalshift.errors import UserError

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def _offline_mode() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint opens within `timeout` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _load(spec: str, fallback: str, *args, **kwargs):
    """`datasets.load_dataset(*args, **kwargs)`, or a one-line UserError when unreachable."""
    if not _offline_mode() and not hub_reachable():
        raise UserError(f"{spec}: the Hugging Face hub cannot be reached (no network?): {fallback}")
    try:
        import datasets
    except ImportError:
        raise UserError(f"{spec}: needs the `datasets` package (pip install datasets)") from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{spec}: cannot be loaded or reached (no network?) ({first}): {fallback}"
        ) from None


def group_wikitext(lines: Iterable[str]) -> Iterator[str]:
    """Wikitext lines -> articles, each starting at a top-level ` = Title = ` heading."""
    article: list[str] = []
    for line in lines:
        if _ARTICLE_HEADING.match(line.rstrip("\n")) and any(s.strip() for s in article):
            yield "".join(article).strip()
            article = []
        article.append(line)
    if any(s.strip() for s in article):
        yield "".join(article).strip()


def iter_wikitext() -> Iterator[str]:
    """Wikitext-103 (raw) test split, one article per document."""
    ds = _load("wikitext", "use --data wiki", "wikitext", "wikitext-103-raw-v1", split="test")
    return group_wikitext(row["text"] for row in ds)


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG[:SPLIT]]` -> (NAME, CONFIG or None, SPLIT or "train")."""
    parts = spec.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"{spec}: expected hf:NAME[:CONFIG[:SPLIT]]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def iter_hf(spec: str) -> Iterator[str]:
    """The `text` field of a streamed hub dataset."""
    name, config, split = parse_hf_spec(spec)
    fallback = "use --data wiki, or a local .txt/.jsonl/.parquet file"
    ds = _load(spec, fallback, name, config, split=split, streaming=True)

    def docs() -> Iterator[str]:
        try:
            for row in ds:
                if "text" not in row:
                    raise UserError(
                        f"{spec}: rows have no 'text' field (fields: {', '.join(row) or 'none'})"
                    )
                if row["text"]:
                    yield row["text"]
        except (ConnectionError, OSError) as e:
            raise UserError(f"{spec}: reading failed (no network?) ({e})") from None

    return docs()
