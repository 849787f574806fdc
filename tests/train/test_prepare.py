"""`causalshift prepare`: shards decode back to the text; val split; errors; resolve_data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from causalshift.cli import main
from causalshift.corpus import gpt2_encoding, iter_documents
from causalshift.train.data import TokenSplit, read_meta
from causalshift.train.prepare import PrepareConfig, prepare, resolve_data

EOT = 50256


def make_text(path: Path, n_docs: int = 60) -> list[str]:
    rng = np.random.default_rng(0)
    words = "the causal shift moves a token one place ahead through residual depth".split()
    docs = []
    for i in range(n_docs):
        n = int(rng.integers(5, 80))
        body = " ".join(words[j] for j in rng.integers(0, len(words), n))
        docs.append(f"Document {i}: {body.capitalize()}.\nSecond line, café ünïcode {i}.")
    path.write_text("\n\n\n".join(docs) + "\n", encoding="utf-8")
    return docs


def decode_docs(split: TokenSplit) -> list[str]:
    tokens = split.read(0, len(split)).tolist()
    assert tokens[0] == EOT
    enc = gpt2_encoding()
    docs, cur = [], []
    for t in tokens[1:] + [EOT]:
        if t == EOT:
            docs.append(enc.decode(cur))
            cur = []
        else:
            cur.append(t)
    return docs


def test_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "corpus.txt"
    make_text(src)
    docs = list(iter_documents(str(src)))
    out = tmp_path / "data"
    cfg = PrepareConfig(data=str(src), val_tokens=100_000, val_fraction=0.1, shard_tokens=700)
    meta = prepare(cfg, out, progress=False)
    assert meta == read_meta(out)
    assert meta["source"] == str(src) and meta["tokenizer"] == "gpt2"
    train, val = TokenSplit(out, "train"), TokenSplit(out, "val")
    assert len(train.shards) > 1  # small shards: several files
    assert meta["splits"]["train"]["num_tokens"] == len(train)
    assert meta["splits"]["val"]["num_tokens"] == len(val)
    total = sum(len(gpt2_encoding().encode_ordinary(d)) + 1 for d in docs)
    assert len(train) + len(val) == total
    assert 0.05 * total < len(val) < 0.15 * total
    got_val, got_train = decode_docs(val), decode_docs(train)
    # An order-preserving split of the documents, val spread through the stream.
    val_idx = [docs.index(d) for d in got_val]
    assert val_idx == sorted(val_idx) and val_idx[-1] > len(docs) // 2
    assert got_train == [d for i, d in enumerate(docs) if i not in set(val_idx)]
    raw = np.fromfile(out / meta["splits"]["train"]["shards"][0]["file"], dtype=np.uint16)
    assert raw[0] == EOT  # plain uint16 files


def test_val_split_is_capped(tmp_path: Path) -> None:
    src = tmp_path / "corpus.txt"
    docs = make_text(src)
    out = tmp_path / "data"
    prepare(PrepareConfig(data=str(src), val_tokens=300, val_fraction=0.2), out, progress=False)
    train, val = TokenSplit(out, "train"), TokenSplit(out, "val")
    assert len(val) == 300
    total = sum(len(gpt2_encoding().encode_ordinary(d)) + 1 for d in docs)
    assert len(train) + len(val) == total + 1  # the cut document got a second EOT
    got_val = decode_docs(val)
    assert all(d in docs for d in got_val[:-1])
    assert any(d.startswith(got_val[-1]) for d in docs)


def test_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "c.txt"
    make_text(src, 20)
    out = tmp_path / "d"
    assert main(["prepare", "--data", str(src), "--out", str(out), "--val-tokens", "100"]) == 0
    assert "train tokens" in capsys.readouterr().out
    assert main(["prepare", "--data", str(src), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["prepare", "--data", str(src), "--out", str(out), "--force"]) == 0
    assert (
        main(["prepare", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "e")])
        == 2
    )
    assert not (tmp_path / "e").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["prepare", "--data", str(empty), "--out", str(tmp_path / "f")]) == 2
    assert not (tmp_path / "f").exists() and not list(tmp_path.glob(".f.tmp-*"))
    assert (
        main(["prepare", "--data", str(src), "--out", str(tmp_path / "g"), "--val-tokens", "0"])
        == 2
    )


def test_resolve_data_prepares_a_spec_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "c.txt"
    make_text(src, 30)
    first = resolve_data(str(src), progress=False)
    assert first.parent == tmp_path / "cache" / "data"
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert resolve_data(str(src), progress=False) == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp  # not redone
    assert resolve_data(str(first)) == first  # a prepared dir is used as is
    meta = json.loads((first / "meta.json").read_text())
    assert meta["splits"]["train"]["num_tokens"] > 0
