"""A small reader for R's serialization format: enough to read character vectors from a
lazy-load database (`data/Rdata.rdx` + `data/Rdata.rdb`) without R.

Format (R Internals, "Serialization formats"): XDR big-endian; each item starts with an
int of flags (type in the low 8 bits, has-attributes 1<<9, has-tag 1<<10). The `.rdx`
index is a gzipped serialized list `variables` mapping each object name to an
(offset, length) pair in the `.rdb` file; each `.rdb` entry is a 4-byte uncompressed
length, then (for version-2 compression) a one-byte type ('Z' zlib, '2' bzip2,
'X' xz, '0' none) or (version 1) a bare zlib stream.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

# SEXP types
_SYM, _LIST, _CLO, _ENV, _PROM, _LANG, _CHAR = 1, 2, 3, 4, 5, 6, 9
_LGL, _INT, _REAL, _CPLX, _STR, _DOT = 10, 13, 14, 15, 16, 17
_VEC, _EXPR, _RAW = 19, 20, 24
_REF, _NIL, _GLOBALENV, _UNBOUND, _MISSING, _BASENS = 255, 254, 253, 252, 251, 250
_NAMESPACE, _PACKAGE, _PERSIST, _EMPTYENV, _BASEENV = 249, 248, 247, 242, 241
_ATTRLANG, _ATTRLIST, _ALTREP = 240, 239, 238
_NA_INT = -(2**31)


class RFormatError(ValueError):
    """The bytes are not R serialization data this reader understands."""


class RList(list):
    """An R vector/list with its attributes (e.g. `names`)."""

    attributes: dict[str, Any]


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RFormatError("truncated R data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RFormatError("not XDR-format R serialization data")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RFormatError(f"R serialization version {version} is not supported")

    def attributes(self) -> dict[str, Any]:
        pairs = self.item()
        return dict(pairs) if isinstance(pairs, list) else {}

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in (_NIL, _GLOBALENV, _UNBOUND, _MISSING, _BASENS, _EMPTYENV, _BASEENV):
            return None
        if kind == _REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind in (_PERSIST, _NAMESPACE, _PACKAGE):
            if self.int() != 0:
                raise RFormatError("unexpected persistent-name format")
            value = [self.item() for _ in range(self.int())]
            self.refs.append(value)
            return value
        if kind == _SYM:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _ENV:
            env: dict[str, Any] = {}
            self.refs.append(env)
            self.int()  # locked
            self.item(), self.item(), self.item(), self.item()  # enclos, frame, hashtab, attr
            return env
        if kind in (_LIST, _LANG, _CLO, _PROM, _DOT, _ATTRLANG, _ATTRLIST):
            pairs: list[tuple[Any, Any]] = []
            while True:  # a pairlist, read iteratively along its CDR
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                pairs.append((tag, self.item()))
                flags = self.int()
                kind = flags & 0xFF
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if kind not in (_LIST, _LANG, _CLO, _PROM, _DOT, _ATTRLANG, _ATTRLIST):
                    self.pos -= 4
                    self.item()  # the final CDR (usually NULL)
                    return pairs
        if kind == _CHAR:
            n = self.int()
            return None if n == -1 else self.take(n).decode("utf-8", errors="replace")
        if kind in (_LGL, _INT):
            n = self.length()
            value = RList(
                v if v != _NA_INT else None for v in struct.unpack(f">{n}i", self.take(4 * n))
            )
        elif kind == _REAL:
            n = self.length()
            value = RList(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == _CPLX:
            n = self.length()
            raw = struct.unpack(f">{2 * n}d", self.take(16 * n))
            value = RList(complex(a, b) for a, b in zip(raw[::2], raw[1::2], strict=True))
        elif kind == _RAW:
            value = RList([self.take(self.length())])
        elif kind in (_STR, _VEC, _EXPR):
            value = RList(self.item() for _ in range(self.length()))
        elif kind == _ALTREP:
            info, state, attr = self.item(), self.item(), self.item()
            value = _altrep(info, state)
            value.attributes = dict(attr) if isinstance(attr, list) else {}
            return value
        else:
            raise RFormatError(f"R object type {kind} is not supported")
        value.attributes = self.attributes() if has_attr else {}
        return value


def _altrep(info: Any, state: Any) -> RList:
    """Expand the compact ALTREP classes R writes for plain vectors."""
    cls = info[0][1] if isinstance(info, list) and info else None
    if cls in ("compact_intseq", "compact_realseq"):
        n, start, step = state
        return RList(
            int(start + i * step) if cls == "compact_intseq" else start + i * step
            for i in range(int(n))
        )
    if cls in ("wrap_integer", "wrap_real", "wrap_string", "wrap_logical", "wrap_list"):
        inner = state[0]  # the wrapped vector: first element of a (tag, value) pairlist
        return RList(inner[1] if isinstance(inner, tuple) else inner)
    if cls == "deferred_string":
        return RList(str(v) for v in state[0][1])
    raise RFormatError(f"R ALTREP class {cls!r} is not supported")


def unserialize(data: bytes) -> Any:
    """Decode one R-serialized object (XDR format, version 2 or 3)."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress(blob: bytes) -> bytes:
    """One `.rdb` entry: 4-byte length, then a type byte (version 2) or a zlib stream."""
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    kind = body[:1]
    if kind == b"Z":
        out = zlib.decompress(body[1:])
    elif kind == b"2":
        out = bz2.decompress(body[1:])
    elif kind == b"X":
        out = lzma.decompress(body[1:])
    elif kind == b"0":
        out = body[1:]
    else:
        out = zlib.decompress(body)
    if len(out) != size:
        raise RFormatError("R database entry has the wrong length")
    return out


def read_lazyload_db(base: str | Path) -> dict[str, Any]:
    """All objects of an R lazy-load database `base.rdx` / `base.rdb`, by name."""
    base = Path(base)
    index = unserialize(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    fields = dict(zip(index.attributes.get("names", []), index, strict=True))
    variables = fields["variables"]
    names = variables.attributes.get("names", [])
    data = base.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in zip(names, variables, strict=True):
        out[name] = unserialize(_decompress(data[int(offset) : int(offset) + int(length)]))
    return out
