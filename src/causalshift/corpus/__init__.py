"""Text sources -> documents -> token ids.

Data SPEC (`--data`), see docs/data.md:
- `wiki`: 97 English Wikipedia articles (0.53M GPT-2 tokens) from the gensim wheel; the
  default for `analyze`.
- `books`: the embedded training corpus (5.1M GPT-2 tokens): Shakespeare, Milton, the King
  James Bible, Jane Austen, the Brown corpus; each also on its own (`shakespeare`,
  `milton`, `kjv`, `austen`, `brown`).
- `wikitext`: Wikitext-103 test split (hub; needs network), one article per document.
- a `.txt` (documents split on 2+ blank lines), `.jsonl` (`text` field) or `.parquet`
  (`text` column) file, or a folder of them (read in sorted order); streamed.
- `hf:NAME[:CONFIG[:SPLIT]]`: a hub dataset, streamed, `text` field.
Embedded sources are extracted once into `cache_dir("text")`.

API:
- `iter_documents(spec)`: documents (str), streamed; bad SPECs raise `UserError` at once.
- `gpt2_encoding()`: the GPT-2 BPE as a tiktoken Encoding, offline.
- `gpt2_tokenizer_dir()`: the same BPE as a Hugging Face tokenizer folder.
- `token_sequences(tokenizer, spec, num_seqs, seq_len)`: (num_seqs, seq_len) int64 windows
  for the logit lens.
- `iter_token_chunks(spec)`: uint16 GPT-2 token arrays, EOT (50256) after each document,
  for `causalshift prepare`; `count_tokens(spec)` counts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from causalshift.errors import UserError

from .books import BOOK_SOURCES
from .files import SUFFIXES
from .tokenizer import EOT_ID, N_VOCAB, gpt2_encoding, gpt2_tokenizer_dir
from .tokens import count_tokens, iter_token_chunks, token_sequences

EMBEDDED_SPECS = ("wiki", "books", *BOOK_SOURCES)
DATA_SPEC_HELP = (
    "text source: wiki (embedded Wikipedia sample), books (embedded training corpus: "
    f"{', '.join(BOOK_SOURCES)}), wikitext (needs network), a .txt/.jsonl/.parquet file "
    "(`text` field) or a folder of them, or hf:NAME[:CONFIG[:SPLIT]]"
)

__all__ = [
    "BOOK_SOURCES",
    "DATA_SPEC_HELP",
    "EMBEDDED_SPECS",
    "EOT_ID",
    "N_VOCAB",
    "count_tokens",
    "gpt2_encoding",
    "gpt2_tokenizer_dir",
    "iter_documents",
    "iter_token_chunks",
    "token_sequences",
]


def iter_documents(spec: str) -> Iterator[str]:
    """The documents of a data SPEC, one string each, streamed (see the module docstring).

    The SPEC is checked now (missing file, unknown type, missing package: `UserError`);
    reading errors (non-UTF-8 bytes, bad JSON) raise `UserError` while iterating.
    """
    spec = str(spec).strip()
    if spec == "wiki":
        from .wiki import iter_wiki, wiki_jsonl

        wiki_jsonl()
        return iter_wiki()
    if spec == "books" or spec in BOOK_SOURCES:
        from .books import books_jsonl, iter_books, source_jsonl

        books_jsonl() if spec == "books" else source_jsonl(spec)
        return iter_books(spec)
    if spec == "wikitext":
        from .hub import iter_wikitext

        return iter_wikitext()
    if spec.startswith("hf:"):
        from .hub import iter_hf

        return iter_hf(spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() in SUFFIXES or path.exists() or "/" in spec or path.suffix:
        from .files import read_path

        return read_path(path)
    raise UserError(
        f"unknown data SPEC {spec!r}: expected {', '.join(EMBEDDED_SPECS)}, wikitext, "
        f"hf:NAME[:CONFIG[:SPLIT]], or a {'/'.join(SUFFIXES)} file or folder"
    )
