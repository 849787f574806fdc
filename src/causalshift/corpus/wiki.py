"""The embedded Wikipedia sample: 106 English articles shipped inside the gensim wheel.

gensim 4.4.0 (installed with `--no-deps`, never imported) ships a shortened
`enwiki-latest-pages-articles` dump as test data. We parse its MediaWiki XML, skip
redirects and non-article pages, strip the markup with `mwparserfromhell` (references,
templates, tables, files, categories, lists and reference sections go; prose stays) and
write `cache_dir("text")/wiki.jsonl` once.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from causalshift.cache import cache_dir
from causalshift.errors import UserError

from .files import read_jsonl_texts, write_jsonl

DUMP_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_INSTALL = "pip install --no-deps gensim==4.4.0 (part of `make install`)"

# Tags whose whole content is dropped (everything else keeps its text, e.g. <b>, <i>).
_DROP_TAGS = {
    "ref",
    "references",
    "table",
    "gallery",
    "math",
    "chem",
    "ce",
    "timeline",
    "imagemap",
    "score",
    "syntaxhighlight",
    "source",
    "pre",
    "code",
    "hiero",
    "graph",
    "mapframe",
    "templatestyles",
    "div",
    "center",
}
# Namespaced links that are not prose: files, categories, interwiki/interlanguage links.
_LINK_PREFIX = re.compile(r"^\s*:?\s*([A-Za-z\- ]+)\s*:")
_DROP_SECTIONS = {
    "see also",
    "references",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "works cited",
    "notes and references",
    "references and notes",
    "primary sources",
    "secondary sources",
    "general references",
}
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?>")
_LEFTOVER = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|")  # markup the parser could not take apart
_MIN_PARAGRAPH_WORDS = 8
_MIN_ARTICLE_WORDS = 50


def dump_path() -> Path:
    """The bz2 XML dump inside the installed gensim wheel (located, not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc, "test", "test_data", DUMP_NAME)
            if path.is_file():
                return path
    raise UserError(f"the embedded Wikipedia sample (gensim's test data) is missing: {_INSTALL}")


def iter_pages(path: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of each main-namespace, non-redirect page, streamed."""
    with bz2.open(path, "rb") as f:
        for _, el in ET.iterparse(f, events=("end",)):
            if el.tag.rsplit("}", 1)[-1] != "page":
                continue
            ns = el.findtext("{*}ns")
            title = el.findtext("{*}title") or ""
            text = el.findtext("{*}revision/{*}text") or ""
            redirect = el.find("{*}redirect") is not None
            el.clear()
            if ns == "0" and not redirect and not text.lstrip().lower().startswith("#redirect"):
                yield title, text


def _is_prose_link(title: str) -> bool:
    """False for [[File:..]], [[Category:..]], [[de:..]] and other namespaced links."""
    return _LINK_PREFIX.match(title) is None


def _dropped(node) -> bool:
    """True for templates, comments, non-prose tags and namespaced links."""
    import mwparserfromhell as mw

    if isinstance(node, (mw.nodes.Template, mw.nodes.Comment)):
        return True
    if isinstance(node, mw.nodes.Tag):
        return str(node.tag).strip().lower() in _DROP_TAGS
    if isinstance(node, mw.nodes.Wikilink):
        return not _is_prose_link(str(node.title))
    return False


def _prune(code) -> None:
    """Remove dropped nodes from a parsed `Wikicode` tree, in place (one pass, fast)."""
    code.nodes = [node for node in code.nodes if not _dropped(node)]
    for node in code.nodes:
        for child in node.__children__():
            _prune(child)


def clean_wikitext(raw: str) -> str:
    """Prose paragraphs of one article (joined by blank lines), without markup."""
    import mwparserfromhell as mw

    code = mw.parse(raw)
    _prune(code)

    paragraphs: list[str] = []
    skip_level = 0  # inside a dropped section of this heading level (0: not skipping)
    for line in str(code).splitlines():
        line = line.strip()
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2)
            title = mw.parse(title).strip_code().strip().lower()
            if skip_level and level > skip_level:
                continue
            skip_level = level if title in _DROP_SECTIONS else 0
            continue
        if skip_level or not line or line[0] in "*#:;|!{}" or line.startswith("----"):
            continue
        text = mw.parse(line).strip_code(normalize=True, collapse=True)
        text = _HTML_TAG.sub("", text)  # tags split across lines (e.g. <blockquote>)
        text = re.sub(r"'{2,}", "", text)  # stray bold/italic quotes
        text = re.sub(r"\(\s*[,;]?\s*\)", "", text)  # "()" left by dropped templates
        text = re.sub(r"[ \t]{2,}", " ", text)
        text = re.sub(r" ([,.;:])", r"\1", text).strip()
        if len(text.split()) >= _MIN_PARAGRAPH_WORDS and not _LEFTOVER.search(text):
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


def wiki_jsonl() -> Path:
    """`cache_dir("text")/wiki.jsonl` ({"title", "text"} per article), extracted once."""
    out = cache_dir("text") / "wiki.jsonl"
    if out.is_file():
        return out
    from tqdm.auto import tqdm

    rows = []
    for title, raw in tqdm(iter_pages(dump_path()), desc="extracting wiki", leave=False):
        text = clean_wikitext(raw)
        if len(text.split()) >= _MIN_ARTICLE_WORDS:
            rows.append({"title": title, "text": text})
    write_jsonl(out, rows)
    return out


def iter_wiki() -> Iterator[str]:
    """The articles' text, one document each."""
    yield from read_jsonl_texts(wiki_jsonl(), field="text", name="wiki")
