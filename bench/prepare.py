"""`causalshift prepare` against tiktoken's own batched encoder on the same text.

Both read the same documents (the first `max_docs` of a data SPEC, held in memory, written
to a .jsonl file for `prepare`); `prepare` also splits train/val, writes uint16 shards and
fsyncs them. Interleaved repetitions; tokens/s of each and the ratio.

    python -m bench.prepare [--data books] [--max-docs 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import alternate, machine, median


def compare(
    data: str = "books", max_docs: int = 400, threads: int = 2, reps: int = 3
) -> dict[str, Any]:
    from causalshift.corpus import gpt2_encoding, iter_documents
    from causalshift.train.prepare import PrepareConfig, prepare

    docs = list(itertools.islice(iter_documents(data), max_docs))
    enc = gpt2_encoding()
    n_tokens = sum(len(t) + 1 for t in enc.encode_ordinary_batch(docs, num_threads=threads))
    n_chars = sum(len(d) for d in docs)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        cfg = PrepareConfig(data=str(src), threads=threads, val_tokens=max(1, n_tokens // 50))
        out = Path(tmp) / "prepared"

        def ours():
            shutil.rmtree(out, ignore_errors=True)
            return prepare(cfg, out, progress=False)

        def tiktoken_batch():
            return enc.encode_ordinary_batch(docs, num_threads=threads)

        times, last = alternate({"prepare": ours, "tiktoken_batch": tiktoken_batch}, reps)
        meta = last["prepare"]
    tok_s = {k: n_tokens / median(v) for k, v in times.items()}
    return {
        "data": data,
        "documents": len(docs),
        "characters": n_chars,
        "tokens": n_tokens,
        "prepared_tokens": meta["splits"]["train"]["num_tokens"]
        + meta["splits"]["val"]["num_tokens"],
        "threads": threads,
        "reps": reps,
        "seconds": times,
        "tokens_per_second": tok_s,
        "ratio_prepare_vs_tiktoken": tok_s["prepare"] / tok_s["tiktoken_batch"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="books")
    p.add_argument("--max-docs", type=int, default=400)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    res = compare(args.data, args.max_docs, args.threads, args.reps)
    res["machine"] = machine()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
