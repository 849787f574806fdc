"""`causalshift prepare`: shards decode back to the text; val split; errors; resolve_data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from causalshift.cli import main
from causalshift.corpus import gpt2_encoding, iter_documents
from causalshift.errors import UserError
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


def test_one_document_is_split_by_tokens(tmp_path: Path) -> None:
    src = tmp_path / "one.txt"  # no run of 2+ blank lines: a single document
    src.write_text("\n".join(f"Line {i} of the only document." for i in range(400)))
    (doc,) = iter_documents(str(src))
    ids = gpt2_encoding().encode_ordinary(doc)
    cfg = PrepareConfig(data=str(src), val_tokens=262_144, val_fraction=0.1)
    meta = prepare(cfg, tmp_path / "data", progress=False)  # before: "no text found"
    train, val = TokenSplit(tmp_path / "data", "train"), TokenSplit(tmp_path / "data", "val")
    n_val = round((len(ids) + 1) * 0.1)
    assert (len(train), len(val)) == (len(ids) + 1 - n_val, n_val + 1)
    assert train.read(0, len(train)).tolist() == [EOT, *ids[: len(ids) - n_val]]
    assert val.read(0, len(val)).tolist() == [EOT, *ids[len(ids) - n_val :]]
    assert meta["num_documents"] == 1 and meta["max_token_id"] == EOT
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Hi")
    with pytest.raises(UserError, match="one document of 1 token"):
        prepare(PrepareConfig(data=str(tiny)), tmp_path / "tiny", progress=False)


def test_folder_of_files_in_sorted_order(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "fineweb"
    (folder / "b").mkdir(parents=True)
    (folder / ".cache").mkdir()
    texts = [f"Document {i}: the shift moves ahead through depth, {i} times." for i in range(9)]
    pq.write_table(pa.table({"text": texts[:3], "id": [0, 1, 2]}), folder / "a.parquet")
    (folder / "b" / "c.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in texts[3:6])
    )
    (folder / "d.txt").write_text("\n\n\n".join(texts[6:]))
    (folder / ".cache" / "x.jsonl").write_text('{"text": "hidden: skipped"}\n')
    (folder / "notes.md").write_text("not a data file")
    assert list(iter_documents(str(folder))) == texts  # a.parquet, b/c.jsonl, d.txt
    out = tmp_path / "data"
    args = ["prepare", "--data", str(folder), "--out", str(out), "--val-tokens", "20"]
    assert main(args) == 0  # before: "not a file"
    assert "files" in capsys.readouterr().err  # the progress bar over the files
    assert read_meta(out)["num_documents"] == 9
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    assert resolve_data(str(folder), progress=False).parent == tmp_path / "cache" / "data"
    assert resolve_data(str(out)) == out  # a prepared one is a data dir
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"holds no \.txt, \.jsonl, \.parquet files"):
        list(iter_documents(str(empty)))


def test_meta_records_the_largest_token_id(tmp_path: Path) -> None:
    from causalshift.train.data import check_token_ids

    src = tmp_path / "c.txt"
    make_text(src, 20)
    meta = prepare(PrepareConfig(data=str(src), val_tokens=100), tmp_path / "d", progress=False)
    train, val = TokenSplit(tmp_path / "d", "train"), TokenSplit(tmp_path / "d", "val")
    top = max(train.read(0, len(train)).max(), val.read(0, len(val)).max())
    assert meta["max_token_id"] == top == EOT
    assert check_token_ids(tmp_path / "d", meta, 50257) == EOT
    with pytest.raises(UserError, match="holds token id 50256, outside the model's vocab"):
        check_token_ids(tmp_path / "d", meta, 50000)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--val-fraction", "nan", "--val-fraction must be a finite number in (0, 1), got nan"),
        ("--val-fraction", "1", "--val-fraction must be in (0, 1), got 1.0"),
        ("--val-tokens", "0", "--val-tokens must be a positive integer, got 0"),
        ("--shard-tokens", "-5", "--shard-tokens must be a positive integer, got -5"),
        ("--threads", "-1", "--threads must be an integer >= 0, got -1"),
    ],
)
def test_bad_numbers(tmp_path: Path, capsys, option: str, value: str, message: str) -> None:
    out = tmp_path / "d"
    assert main(["prepare", "--data", "books", "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
