"""`causalshift prepare`: text -> GPT-2 BPE uint16 token shards with a train/val split.

Streaming: documents are read, tokenized by a pool of threads running tiktoken's Rust
encoder (which releases the GIL, so reading, encoding and writing overlap) and appended to
shard files, so a corpus larger than memory works. Each document is preceded by <|endoftext|> (the
GPT-2 / llm.c convention). The validation split takes whole documents, spread through the
stream: a document goes to val while val holds less than `val_fraction` of the tokens seen
so far, until val has `val_tokens` tokens (the last val document is cut there, the rest goes
to train). A single document (nothing left to train on) is split by tokens instead: its last
`val_fraction` to val. A folder of .txt/.jsonl/.parquet files is read file by file in sorted
order, with a progress bar over its files. meta.json records the largest token id, checked
against the model's vocabulary when a run opens the data. Everything is written to a
temporary folder that is renamed to DATA_DIR at the end.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from causalshift.config import add_config_arguments, check_fields, config_overrides, option
from causalshift.errors import UserError
from causalshift.io import TEMP_MARK, write_json
from causalshift.locks import output_folder
from causalshift.train.data import DTYPE, FORMAT, META_NAME, read_meta


@dataclass(frozen=True)
class PrepareConfig:
    data: str = option(
        "books",
        "Data SPEC: books | wiki | a .txt/.jsonl/.parquet file or a folder of them | "
        "hf:NAME[:CONFIG[:SPLIT]].",
    )
    val_tokens: int = option(
        10_485_760, "At most this many tokens go to the validation split.", ge=1
    )
    val_fraction: float = option(
        0.05,
        "Share of the stream that goes to validation until val_tokens is reached.",
        gt=0,
        lt=1,
    )
    shard_tokens: int = option(100_000_000, "Tokens per shard file (200 MB at 100M).", ge=1)
    threads: int = option(0, "Tokenizer threads (0: all CPU cores).", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, as_options=True)


class ShardWriter:
    """Appends uint16 tokens to `{split}_{i:06d}.bin` files of at most `shard_tokens`."""

    def __init__(self, folder: Path, split: str, shard_tokens: int) -> None:
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self.num_tokens = 0
        self.max_id = -1  # the largest token id written (meta.json's "max_token_id")

    def write(self, tokens: np.ndarray) -> None:
        if len(tokens):
            self.max_id = max(self.max_id, int(tokens.max()))
        while len(tokens):
            if self._file is None or self.shards[-1]["num_tokens"] >= self.shard_tokens:
                self._open()
            room = self.shard_tokens - self.shards[-1]["num_tokens"]
            part, tokens = tokens[:room], tokens[room:]
            self._file.write(part.astype(DTYPE, copy=False).tobytes())
            self.shards[-1]["num_tokens"] += len(part)
            self.num_tokens += len(part)

    def _open(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._file = open(self.folder / name, "wb", buffering=8 << 20)
        self.shards.append({"file": name, "num_tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def summary(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens, "shards": self.shards}


def encode_stream(enc: Any, docs: Iterable[str], threads: int) -> Iterator[np.ndarray]:
    """Token arrays of `docs` in order, encoded by `threads` threads ahead of the consumer.

    tiktoken's Rust encoder releases the GIL, so reading the next documents, encoding and
    writing overlap; at most `64 * threads` documents are in flight (streaming). Special
    tokens in the text are encoded as plain text (as `encode_ordinary`).
    """
    if hasattr(enc, "encode_to_numpy"):  # no Python list per document
        encode = functools.partial(enc.encode_to_numpy, disallowed_special=())
    else:  # older tiktoken
        encode = lambda doc: np.asarray(enc.encode_ordinary(doc), dtype=np.uint32)
    depth = 64 * threads
    with ThreadPoolExecutor(threads) as pool:
        pending: collections.deque = collections.deque()
        for doc in docs:
            pending.append(pool.submit(encode, doc))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def documents(spec: str, progress: bool) -> Iterator[str]:
    """The documents of `spec`; a folder of files gets a progress bar over its files."""
    from causalshift.corpus import iter_documents
    from causalshift.corpus.files import read_folder

    path = Path(spec).expanduser()
    if not path.is_dir():
        return iter_documents(spec)
    from tqdm.auto import tqdm

    bars = []

    def on_file(i: int, count: int, file: Path) -> None:
        if not bars:
            bars.append(tqdm(total=count, desc="files", unit="file", disable=not progress))
        bars[0].n = i
        bars[0].set_postfix_str(file.name)

    folder_docs = read_folder(path, on_file)  # lists (and checks) the files now

    def docs() -> Iterator[str]:
        try:
            yield from folder_docs
            if bars:
                bars[0].n = bars[0].total
        finally:  # an error line must start a line of its own
            for bar in bars:
                bar.close()

    return docs()


def split_stream(
    cfg: PrepareConfig,
    encoded: Iterable[np.ndarray],
    train: ShardWriter,
    val: ShardWriter,
    bar: Any,
) -> tuple[int, int]:
    """Write each document's tokens, after an <|endoftext|>, to val or train (see the
    module docstring); returns (documents, tokens)."""
    from causalshift.corpus import EOT_ID

    eot_arr = np.array([EOT_ID], dtype=DTYPE)
    num_docs, seen = 0, 0
    for toks in encoded:
        if not len(toks):
            continue
        toks = toks.astype(DTYPE)
        n = len(toks) + 1
        seen += n
        num_docs += 1
        room = cfg.val_tokens - val.num_tokens
        if room > 0 and val.num_tokens < cfg.val_fraction * seen:
            val.write(eot_arr)
            val.write(toks[: room - 1])
            if n > room:  # the val split is full: the rest of this document trains
                train.write(eot_arr)
                train.write(toks[room - 1 :])
        else:
            train.write(eot_arr)
            train.write(toks)
        bar.update(n)
    return num_docs, seen


def split_by_tokens(
    cfg: PrepareConfig, folder: Path, val: ShardWriter
) -> tuple[ShardWriter, ShardWriter]:
    """One document went (up to val_tokens) to val: split its tokens instead, the last
    val_fraction of them (at most val_tokens) to val, the rest to train."""
    from causalshift.corpus import EOT_ID

    parts = [np.fromfile(folder / s["file"], dtype=DTYPE) for s in val.shards]
    for s in val.shards:
        (folder / s["file"]).unlink()
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype=DTYPE)  # EOT first
    train, val = (ShardWriter(folder, name, cfg.shard_tokens) for name in ("train", "val"))
    n_val = max(1, min(cfg.val_tokens - 1, round(len(tokens) * cfg.val_fraction)))
    if len(tokens) - n_val < 2:  # train needs the EOT and at least one token
        raise UserError(
            f"{cfg.data!r} holds one document of {len(tokens) - 1} token(s): too little "
            "text to split into training and validation"
        )
    train.write(tokens[:-n_val])
    val.write(np.array([EOT_ID], dtype=DTYPE))
    val.write(tokens[-n_val:])
    train.close()
    val.close()
    return train, val


def prepare(
    cfg: PrepareConfig, out: str | os.PathLike, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Tokenize `cfg.data` into shards under `out`; returns the meta dict. `out` is locked
    (`.NAME.causalshift.lock` beside it) and its parent checked before anything is read."""
    with output_folder(out, whole=True):
        return _prepare(cfg, Path(out), force, progress)


def _prepare(cfg: PrepareConfig, out: Path, force: bool, progress: bool) -> dict[str, Any]:
    """`prepare` with `out` locked by the caller."""
    from tqdm.auto import tqdm

    from causalshift.corpus import gpt2_encoding

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        prepared = (out / META_NAME).is_file()
        if not prepared or not force:
            hint = " (a prepared data dir: pass --force to redo it)" if prepared else ""
            raise UserError(f"{out} already exists and is not empty{hint}")
    enc = gpt2_encoding()
    eot = enc.eot_token
    threads = cfg.threads or os.cpu_count() or 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}{TEMP_MARK}{os.getpid()}"  # removed once PID has died
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        train = ShardWriter(tmp, "train", cfg.shard_tokens)
        val = ShardWriter(tmp, "val", cfg.shard_tokens)
        t0 = time.perf_counter()
        docs = documents(cfg.data, progress)
        bar = tqdm(desc=f"prepare {cfg.data}", unit="tok", unit_scale=True, disable=not progress)
        try:
            num_docs, seen = split_stream(cfg, encode_stream(enc, docs, threads), train, val, bar)
        finally:  # closed (a newline) before any error line
            bar.close()
            if hasattr(docs, "close"):
                docs.close()
        train.close()
        val.close()
        if num_docs == 1 and train.num_tokens == 0:  # it all went to val: split by tokens
            train, val = split_by_tokens(cfg, tmp, val)
        if train.num_tokens == 0:
            raise UserError(f"no text found in {cfg.data!r}")
        seconds = time.perf_counter() - t0
        meta = {
            "format": FORMAT,
            "version": 1,
            "dtype": "uint16",
            "tokenizer": "gpt2",
            "vocab_size": enc.n_vocab,
            "eot": eot,
            "max_token_id": max(train.max_id, val.max_id),
            "source": cfg.data,
            "num_documents": num_docs,
            "splits": {"train": train.summary(), "val": val.summary()},
            "config": dataclasses.asdict(cfg),
            "seconds": round(seconds, 3),
            "tokens_per_second": round(seen / max(seconds, 1e-9)),
        }
        write_json(tmp / META_NAME, meta)
        if out.exists():
            if force and (out / META_NAME).is_file():
                shutil.rmtree(out)
            else:
                out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def cache_name(spec: str) -> str:
    """Folder name under cache_dir("data") for a data SPEC."""
    from causalshift.corpus import EMBEDDED_SPECS

    if spec in EMBEDDED_SPECS:
        return spec
    path = Path(spec)
    if path.is_file():
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        stem = path.stem
    elif path.is_dir():  # a folder of text files: its files' names, sizes and times
        from causalshift.corpus.files import data_files

        stats = [(f, f.stat()) for f in data_files(path)]
        key = "|".join(
            [str(path.resolve())] + [f"{f}:{s.st_size}:{s.st_mtime_ns}" for f, s in stats]
        )
        stem = path.resolve().name
    else:
        key, stem = spec, spec
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-")[:40] or "data"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def is_data_spec(value: str) -> bool:
    """True if `value` names text to prepare rather than a prepared data dir."""
    from causalshift.corpus import EMBEDDED_SPECS

    if value in EMBEDDED_SPECS or value.startswith("hf:") or value == "wikitext":
        return True
    path = Path(value)
    if path.is_dir():  # a folder of text files, not a prepared data dir
        from causalshift.corpus.files import SUFFIXES

        if (path / META_NAME).is_file():
            return False
        return any(f.suffix.lower() in SUFFIXES for f in path.rglob("*"))
    return path.suffix.lower() in (".txt", ".jsonl", ".parquet")


def resolve_data(value: str, progress: bool = True) -> Path:
    """A prepared data dir for `value`: the dir itself, or a SPEC prepared into the cache."""
    from causalshift.cache import cache_dir

    if not value:
        raise UserError("no training data given: pass --data DATA_DIR (see `causalshift prepare`)")
    if not is_data_spec(value):
        read_meta(value)  # clear error if missing or not prepared
        return Path(value)
    out = cache_dir("data") / cache_name(value)
    if not (out / META_NAME).is_file():  # a second process waits for the first, then reuses
        with output_folder(out, "the data cache", whole=True, wait=True):
            if not (out / META_NAME).is_file():
                if progress:
                    print(f"preparing {value!r} into {out} (first use)", flush=True)
                if out.exists() and not any(out.iterdir()):
                    out.rmdir()
                _prepare(PrepareConfig(data=value, val_tokens=262_144), out, False, progress)
    read_meta(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PrepareConfig)
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="Output folder.")
    parser.add_argument(
        "--force", action="store_true", help="Replace an existing prepared data dir."
    )


def run(args: argparse.Namespace) -> int:
    cfg = dataclasses.replace(PrepareConfig(), **config_overrides(PrepareConfig, args))
    meta = prepare(cfg, args.out, force=args.force)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"wrote {args.out}: {tr['num_tokens']:,} train tokens in {len(tr['shards'])} shard(s), "
        f"{va['num_tokens']:,} val tokens, {meta['num_documents']:,} documents, "
        f"{meta['tokens_per_second']:,.0f} tok/s"
    )
    return 0


def write_token_dir(
    out: str | os.PathLike, train: np.ndarray, val: np.ndarray, source: str = "tokens"
) -> Path:
    """A data dir from token arrays already in memory (tests, synthetic data)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, tokens in (("train", train), ("val", val)):
        writer = ShardWriter(out, name, max(len(tokens), 1))
        writer.write(np.asarray(tokens))
        writer.close()
        splits[name] = writer.summary()
    top = max((int(np.max(t)) for t in (train, val) if len(t)), default=-1)
    meta = {"format": FORMAT, "version": 1, "dtype": "uint16", "tokenizer": "gpt2",
            "vocab_size": 50257, "eot": 50256, "max_token_id": top, "source": source,
            "splits": splits}  # fmt: skip
    write_json(out / META_NAME, meta)
    return out
