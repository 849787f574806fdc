"""Token shards on disk and the deterministic batches read from them.

A data directory (written by `causalshift prepare`):

    meta.json            {"format": "causalshift-tokens", "version": 1, "dtype": "uint16",
                          "tokenizer": "gpt2", "vocab_size": 50257, "eot": 50256,
                          "max_token_id": 50256, "source": SPEC, "splits": {"train":
                          {"num_tokens": N, "shards": [{"file": "train_000000.bin",
                          "num_tokens": n}, ...]}, "val": {...}}}
    train_000000.bin     raw little-endian uint16 tokens (np.memmap-able), documents
    val_000000.bin       each preceded by <|endoftext|>

Training batches are windows of block_size + 1 tokens. Sample k of the global stream
(k = 0, 1, ...) is window perm_e[k mod W] of epoch e = k div W, where perm_e is a permutation
seeded by (seed, e), so a run's data order depends only on the seed and the number of
samples consumed: the position saved in a checkpoint. At each optimizer step the G = B x
accum x world samples of the global batch are split so that rank r's micro-step m reads
samples (m * world + r) * B ... + B: any (world, accum) with the same G sees the same batch.

Opening a data dir for training checks its largest token id against the model's vocabulary
(`check_token_ids`): `prepare` records it in meta.json ("max_token_id"); a data dir
without it (older ones, hand-made shards) is scanned once and the value recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from causalshift.errors import UserError
from causalshift.io import write_json

META_NAME = "meta.json"
FORMAT = "causalshift-tokens"
DTYPE = np.uint16


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a prepared data dir; UserError if missing or malformed."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise UserError(f"data dir {data_dir} not found (make one with `causalshift prepare`)")
    path = data_dir / META_NAME
    if not path.is_file():
        raise UserError(
            f"{data_dir} is not a prepared data dir ({META_NAME} missing) nor a folder of "
            ".txt/.jsonl/.parquet files (make one with `causalshift prepare --data SPEC "
            "--out DIR`)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("dtype") != "uint16":
            raise ValueError(f"unknown format {meta.get('format')!r}")
        for split in ("train", "val"):
            s = meta["splits"][split]
            int(s["num_tokens"])
            for shard in s["shards"]:
                str(shard["file"]), int(shard["num_tokens"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt or of an unknown format: {e}") from None
    return meta


def scan_max_token_id(data_dir: str | os.PathLike, meta: dict[str, Any]) -> int:
    """The largest token id in every shard of both splits (-1 if there are none)."""
    largest = -1
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            path = Path(data_dir) / shard["file"]
            if int(shard["num_tokens"]) and path.is_file():
                tokens = np.memmap(path, dtype=DTYPE, mode="r")
                largest = max(largest, int(tokens.max()) if len(tokens) else -1)
    return largest


def check_token_ids(data_dir: str | os.PathLike, meta: dict[str, Any], vocab_size: int) -> int:
    """Refuse token ids >= `vocab_size` (they would crash training mid-run); returns the
    largest id. Uses meta's "max_token_id"; without it, scans the shards and records the
    value in meta.json when the folder is writable (a read-only one is scanned each time)."""
    largest = meta.get("max_token_id")
    if not isinstance(largest, int) or isinstance(largest, bool):
        largest = scan_max_token_id(data_dir, meta)
        try:
            write_json(Path(data_dir) / META_NAME, {**meta, "max_token_id": largest})
        except OSError:
            pass
    if largest >= vocab_size:
        raise UserError(
            f"{data_dir} holds token id {largest}, outside the model's vocabulary of "
            f"{vocab_size} (ids 0..{vocab_size - 1}): the shards are not GPT-2 tokens for "
            "this model; prepare them again with `causalshift prepare`"
        )
    return largest


class TokenSplit:
    """One split (train or val) as one virtual array over its memmapped shards."""

    def __init__(self, data_dir: str | os.PathLike, split: str) -> None:
        data_dir = Path(data_dir)
        meta = read_meta(data_dir)
        self.split = split
        self.shards: list[np.memmap] = []
        for shard in meta["splits"][split]["shards"]:
            path = data_dir / shard["file"]
            n = int(shard["num_tokens"])
            if not path.is_file() or path.stat().st_size != n * np.dtype(DTYPE).itemsize:
                raise UserError(
                    f"shard {path} is missing or truncated (meta.json says {n} tokens); "
                    "prepare the data again"
                )
            if n:
                self.shards.append(np.memmap(path, dtype=DTYPE, mode="r"))
        sizes = [len(s) for s in self.shards]
        self.starts = np.cumsum([0, *sizes])  # (num_shards + 1,)
        self.num_tokens = int(self.starts[-1])

    def __len__(self) -> int:
        return self.num_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"read [{start}, {start + length}) outside {self.num_tokens} tokens")
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while length > 0:
            offset = start - int(self.starts[i])
            take = min(length, len(self.shards[i]) - offset)
            parts.append(self.shards[i][offset : offset + take])
            start, length, i = start + take, length - take, i + 1
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out.astype(np.int64)


class TrainSampler:
    """Training windows in a seeded order that depends only on the sample index."""

    def __init__(self, tokens: TokenSplit, block_size: int, seed: int) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.seed = seed
        # Each epoch shifts its window grid by an offset in [0, T); W windows fit any offset.
        self.num_windows = (len(tokens) - block_size) // block_size
        if self.num_windows < 1:
            raise UserError(
                f"too little training text: {len(tokens)} tokens, need at least "
                f"{2 * block_size} for block_size {block_size}"
            )
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)
        self._offset = 0

    def _load_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(0, self.block_size))
            self._perm = rng.permutation(self.num_windows)
            self._epoch = epoch

    def window(self, sample: int) -> np.ndarray:
        """(T + 1,) tokens of global sample `sample`."""
        epoch, i = divmod(sample, self.num_windows)
        self._load_epoch(epoch)
        start = self._offset + int(self._perm[i]) * self.block_size
        return self.tokens.read(start, self.block_size + 1)

    def batch(self, first: int, count: int) -> np.ndarray:
        """(count, T + 1) tokens of samples first .. first + count - 1."""
        return np.stack([self.window(k) for k in range(first, first + count)])

    def epoch_of(self, sample: int) -> float:
        return sample / self.num_windows


def eval_windows(tokens: TokenSplit, block_size: int, count: int) -> np.ndarray:
    """Start offsets of `count` fixed, evenly spread validation windows of T + 1 tokens."""
    available = (len(tokens) - 1) // block_size
    if available < 1:
        raise UserError(
            f"too little validation text: {len(tokens)} tokens, need more than {block_size} "
            "(prepare with a larger --val-tokens)"
        )
    if count <= available:
        idx = np.arange(count, dtype=np.int64) * available // count
    else:  # fewer windows than asked for: reuse them
        idx = np.arange(count, dtype=np.int64) % available
    return idx * block_size


def rank_slice(first: int, micro: int, rank: int, world: int, batch_size: int) -> int:
    """Index of the first sample of rank `rank`'s micro-step `micro` in a global batch."""
    return first + (micro * world + rank) * batch_size
