"""Documents -> token ids: logit-lens windows for any HF tokenizer, GPT-2 chunks for training."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from causalshift.errors import UserError

from .tokenizer import EOT_ID, gpt2_encoding

if TYPE_CHECKING:
    import torch


def adds_bos(tokenizer) -> bool:
    """True if `tokenizer("a").input_ids` starts with the tokenizer's BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def token_sequences(
    tokenizer,
    spec: str,
    num_seqs: int,
    seq_len: int,
    *,
    name: str = "",
    documents: Iterable[str] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """(num_seqs, seq_len) int64 windows of the token stream of `spec`, for the logit lens.

    Documents are encoded without special tokens and joined with the tokenizer's EOS id
    between them (nothing if it has none), then cut into consecutive non-overlapping
    windows. If the tokenizer adds a BOS token in normal use, each row is [BOS] followed
    by seq_len - 1 stream tokens. Reading stops once enough tokens are collected.
    documents: these texts instead of the SPEC's (spec then only names them in messages);
    progress: allow the tokenizing bar (shown only when tokenizing takes over 2 s).
    """
    import torch
    from tqdm.auto import tqdm

    from . import iter_documents

    if num_seqs < 1 or seq_len < 1:
        raise UserError(f"--num-seqs and --seq-len must be >= 1 (got {num_seqs}, {seq_len})")
    bos = adds_bos(tokenizer)
    if bos and seq_len < 2:
        raise UserError("--seq-len must be >= 2 for a tokenizer that adds a BOS token")
    width = seq_len - int(bos)  # stream tokens per row
    need = num_seqs * width
    eos = getattr(tokenizer, "eos_token_id", None)
    label = f"{name or 'tokenizer'}"

    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):  # documents are longer than the model's context: expected
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True
    stream: list[int] = []
    bar = tqdm(
        total=need,
        desc=f"tokenizing {spec}",
        unit="tok",
        leave=False,
        delay=2.0,
        disable=not progress,
    )
    batch = 4  # documents per tokenizer call, doubled up to 64: fast tokenizers batch in Rust
    docs = iter(documents) if documents is not None else iter_documents(spec)
    try:
        while len(stream) < need:
            texts = list(itertools.islice(docs, batch))
            if not texts:
                break
            batch = min(2 * batch, 64)
            for ids in tokenizer(texts, add_special_tokens=False).input_ids:
                if len(stream) >= need:
                    break
                if stream and eos is not None:
                    stream.append(eos)
                stream.extend(ids)
            bar.update(min(len(stream), need) - bar.n)
    finally:
        bar.close()
    found = len(stream)
    if found < need:
        raise UserError(
            f"{spec}: only {found} tokens of text ({label}), need {num_seqs} x {width} = "
            f"{need}: lower --num-seqs or --seq-len"
        )
    windows = torch.tensor(stream[:need], dtype=torch.int64).view(num_seqs, width)
    if bos:
        first = torch.full((num_seqs, 1), tokenizer.bos_token_id, dtype=torch.int64)
        windows = torch.cat([first, windows], dim=1)
    return windows  # (num_seqs, seq_len)


def iter_token_chunks(
    spec: str, *, docs_per_chunk: int = 256, num_threads: int | None = None
) -> Iterator[np.ndarray]:
    """GPT-2 tokens of `spec` as uint16 arrays, `<|endoftext|>` (50256) after each document.

    Each array holds `docs_per_chunk` documents (the last may hold fewer); their
    concatenation is the whole token stream. Encoding uses tiktoken's thread pool.
    """
    from . import iter_documents

    enc = gpt2_encoding()
    threads = num_threads or max(1, min(8, os.cpu_count() or 1))
    docs = iter_documents(spec)
    while True:
        texts = list(itertools.islice(docs, docs_per_chunk))
        if not texts:
            return
        encoded = enc.encode_ordinary_batch(texts, num_threads=threads)
        out = np.empty(sum(len(ids) + 1 for ids in encoded), dtype=np.uint16)
        pos = 0
        for ids in encoded:
            out[pos : pos + len(ids)] = ids
            out[pos + len(ids)] = EOT_ID
            pos += len(ids) + 1
        yield out


def count_tokens(spec: str) -> int:
    """Number of GPT-2 tokens in `spec`, one `<|endoftext|>` per document included."""
    return sum(len(chunk) for chunk in iter_token_chunks(spec))
