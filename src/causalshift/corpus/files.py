"""Documents from local files: .txt, .jsonl, .parquet, or a folder of them. Everything streams.

- `.txt`: documents are separated by two or more blank lines (single blank lines stay
  inside a document as paragraph breaks).
- `.jsonl`: one JSON object per line with a string field `text`.
- `.parquet`: a string column `text`, read in record batches with pyarrow.
- a folder: its .txt/.jsonl/.parquet files (subfolders included, hidden names skipped) one
  after another, in sorted path order (FineWeb ships as folders of parquet shards).
Bad input raises `UserError` with one clear line (missing, empty, non-UTF-8 with the byte
offset, bad JSON with the line number, no `text` field).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from causalshift.errors import UserError
from causalshift.io import atomic_write

SUFFIXES = (".txt", ".jsonl", ".parquet")
_PARQUET_BATCH_ROWS = 1024


def check_file(path: Path) -> None:
    """Raise `UserError` if `path` is missing, not a file, of unknown type or empty."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected {', '.join(SUFFIXES)})")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{path}: unknown file type {path.suffix or '(none)'!r}: "
            f"expected {', '.join(SUFFIXES)} (a `text` field for .jsonl/.parquet)"
        )
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, decoded line) of a file, raising UserError at the first bad byte."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at byte offset "
                    f"{offset + e.start}, line {number})"
                ) from None
            if number == 1 and line.startswith("\ufeff"):  # byte-order mark
                line = line[1:]
            offset += len(raw)
            yield number, line


def _nonempty(path: Path, docs: Iterable[str]) -> Iterator[str]:
    """Pass documents through; raise UserError if none has any text."""
    found = False
    for doc in docs:
        if doc.strip():
            found = True
            yield doc
    if not found:
        raise UserError(f"{path}: the file has no text")


def read_txt(path: Path) -> Iterator[str]:
    """Documents of a text file, split on runs of two or more blank lines."""

    def docs() -> Iterator[str]:
        lines: list[str] = []
        blanks = 0
        for _, line in _utf8_lines(path):
            if line.strip():
                if blanks >= 2 and lines:
                    yield "".join(lines).strip("\n")
                    lines = []
                elif blanks and lines:
                    lines.append("\n" * blanks)
                blanks = 0
                lines.append(line)
            else:
                blanks += 1
        if lines:
            yield "".join(lines).strip("\n")

    return _nonempty(path, docs())


def read_jsonl_texts(path: Path, field: str = "text", name: str | None = None) -> Iterator[str]:
    """The string field `field` of each line of a JSON-lines file."""
    label = name or str(path)

    def docs() -> Iterator[str]:
        for number, line in _utf8_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{label}: line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or field not in row:
                raise UserError(f"{label}: line {number} has no {field!r} field")
            text = row[field]
            if not isinstance(text, str):
                raise UserError(f"{label}: line {number}: {field!r} is not a string")
            yield text

    return _nonempty(path, docs())


def read_parquet(path: Path, column: str = "text") -> Iterator[str]:
    """The string column `column` of a parquet file, streamed in record batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise UserError(f"{path}: no {column!r} column (columns: {', '.join(names) or 'none'})")
    if not pa.types.is_string(pf.schema_arrow.field(column).type) and not pa.types.is_large_string(
        pf.schema_arrow.field(column).type
    ):
        raise UserError(
            f"{path}: column {column!r} is {pf.schema_arrow.field(column).type}, "
            "not a string column"
        )

    def docs() -> Iterator[str]:
        try:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[column]):
                for text in batch.column(0).to_pylist():
                    if text:
                        yield text
        except pa.ArrowException as e:
            raise UserError(f"{path}: cannot read parquet data ({e})") from None

    return _nonempty(path, docs())


def data_files(folder: Path) -> list[Path]:
    """The .txt/.jsonl/.parquet files under `folder`, in sorted path order (subfolders
    included; names starting with "." skipped, e.g. a hub download's `.cache`)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    if not files:
        prepared = (folder / "meta.json").is_file()
        hint = (
            ": it is a prepared data dir, give it to `causalshift train --data`" if prepared else ""
        )
        raise UserError(
            f"{folder} is a folder, not a file, and holds no {', '.join(SUFFIXES)} files{hint}"
        )
    return files


def read_folder(
    folder: Path, on_file: Callable[[int, int, Path], None] | None = None
) -> Iterator[str]:
    """Documents of every file of `data_files(folder)` (listed now, read lazily);
    `on_file(i, number of files, path)` is called as file i starts."""
    files = data_files(folder)

    def docs() -> Iterator[str]:
        for i, path in enumerate(files):
            if on_file is not None:
                on_file(i, len(files), path)
            yield from read_path(path)

    return docs()


def read_path(path: str | os.PathLike) -> Iterator[str]:
    """Documents of a .txt / .jsonl / .parquet file or a folder of them (checked now, read
    lazily)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_folder(path)
    check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_txt(path)
    if suffix == ".jsonl":
        return read_jsonl_texts(path)
    return read_parquet(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSON lines, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    return atomic_write(path, write)
