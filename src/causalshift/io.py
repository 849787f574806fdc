"""Files: atomic writes, checksums, temporaries, disk errors, JSON/JSONL readers.

Every result and checkpoint is written by `atomic_write`: into a private temporary folder
beside the target, named `.NAME.causalshift-tmp-PID-N` (so a kill -9 leaves something
recognisable, which `remove_stale_temporaries` deletes once PID has died), then renamed onto
the target. Written files get the mode a plain `open()` would give them (0666 & ~umask).
A full disk, a quota, a read-only file system or a missing permission during a write is a
`UserError` naming the file; the temporary is removed, the old file is left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from causalshift.errors import UserError

TEMP_MARK = ".causalshift-tmp-"
# `.NAME.causalshift-tmp-PID` or `...-PID-N` (files and folders), and prepare's older
# `.NAME.tmp-PID` folders.
_TEMP_RE = re.compile(r"^\..+(?:\.causalshift-tmp-|\.tmp-)(\d+)(?:-\d+)?$")
# Temporaries of earlier versions, which carried no PID: safetensors' own `.tmpXXXXXX` and
# mkstemp's `.NAME.XXXXXXXX.tmp`. Removed only from a folder whose lock is held.
_LEGACY_TEMP_RE = re.compile(r"^(?:\.tmp[A-Za-z0-9]{6}|\..+\.[a-z0-9_]{8}\.tmp)$")
_counter = itertools.count()

CHECKSUMS_NAME = "checksums.json"
# errno -> the words of the one-line error.
DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large",
}
_OS_ERROR_RE = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report errno
FULL_BYTES = 1 << 20  # a failed write that leaves less free than this: the disk is full
_checksum_lock = threading.Lock()


# ---- temporaries and modes ------------------------------------------------------------------


def temp_path(path: str | os.PathLike) -> Path:
    """`.NAME.causalshift-tmp-PID-N` beside `path`: unique in this process, recognisable."""
    path = Path(path)
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{next(_counter)}"


def pid_alive(pid: int) -> bool:
    """True if a process `pid` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike, name: str | None = None, legacy: bool = False
) -> list[Path]:
    """Remove temporaries of dead processes in `folder` (only those of `name` if given;
    with `legacy`, also the PID-less ones of earlier versions); returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        if name is not None and not entry.name.startswith(f".{name}."):
            continue
        m = _TEMP_RE.match(entry.name)
        stale = (m is not None and not pid_alive(int(m[1]))) or (
            legacy and m is None and _LEGACY_TEMP_RE.match(entry.name) is not None
        )
        if stale:
            _remove(entry)
            removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def umask() -> int:
    """The process umask, read without changing it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0666 & ~umask."""
    return 0o666 & ~umask()


def plain_modes(folder: str | os.PathLike) -> None:
    """Give `folder` and everything in it the modes plain `mkdir`/`open` would (tools such
    as tempfile and safetensors create 0700 folders and 0600 files)."""
    mask = umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


# ---- disk errors ----------------------------------------------------------------------------


def disk_error(exc: BaseException, folder: str | os.PathLike | None = None) -> str | None:
    """The one-line reason if `exc` is a full disk, quota, read-only file system or missing
    permission (also when a library hid the errno: a folder left with no free space), else
    None."""
    if not isinstance(exc, Exception) or isinstance(exc, UserError):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        m = _OS_ERROR_RE.search(str(exc))
        code = int(m[1]) if m else None
    if code in DISK_ERRORS:
        return DISK_ERRORS[code]
    if folder is not None:  # torch.save reports a full disk as "unexpected pos ..."
        try:
            st = os.statvfs(folder)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize < FULL_BYTES:
            return DISK_ERRORS[errno.ENOSPC]
    return None


def make_dirs(folder: str | os.PathLike, what: str = "") -> list[Path]:
    """Create `folder` and its parents; returns those created (outermost first). A file in
    the way, a missing permission or a read-only disk is a UserError naming `what`."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    name = f"{what} {folder}".strip()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{name} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create {name}: a file is in the way") from None
    except OSError as e:
        raise UserError(f"cannot create {name}: {DISK_ERRORS.get(e.errno, e.strerror)}") from None
    return list(reversed(missing))


def check_writable(folder: str | os.PathLike, what: str = "") -> None:
    """Write and remove a small file in `folder`: UserError now rather than after the work."""
    probe = temp_path(Path(folder) / "probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"causalshift\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        name = f"{what} {folder}".strip()
        raise UserError(f"cannot write to {name}: {DISK_ERRORS.get(e.errno, e.strerror)}") from None
    finally:
        probe.unlink(missing_ok=True)


# ---- atomic writes and checksums ------------------------------------------------------------


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], checksum: bool = False
) -> Path:
    """Call `write(tmp_path)`, fsync it, then rename it onto `path`.

    tmp_path lies in a private folder `.NAME.causalshift-tmp-PID-N/`, so whatever the writer
    creates beside it (safetensors writes its own temporary and renames it) goes when that
    folder goes. With `checksum`, the file's sha256 is recorded in `checksums.json` beside
    it (see `verify_checksum`)."""
    path = Path(path)
    make_dirs(path.parent)
    box = temp_path(path)
    tmp = box / path.name
    try:
        box.mkdir()
        write(str(tmp))
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp) if checksum else None
        if digest:  # both the old and the new file match while the rename is pending
            _note_checksum(path, digest, pending=True)
        os.replace(tmp, path)
        if digest:
            _note_checksum(path, digest)
        _fsync_dir(path.parent)
    except BaseException as e:
        reason = disk_error(e, path.parent)
        shutil.rmtree(box, ignore_errors=True)
        if reason:
            raise UserError(f"cannot write {path}: {reason}") from None
        raise
    shutil.rmtree(box, ignore_errors=True)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (not possible everywhere: then skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_checksums(folder: str | os.PathLike) -> dict[str, list[str]] | None:
    """checksums.json of `folder` as {file name: [sha256, ...]}, None if there is none."""
    path = Path(folder) / CHECKSUMS_NAME
    if not path.is_file():
        return None
    doc = read_json_object(path, "checksum file")
    files = doc.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, list) and all(isinstance(h, str) for h in v) for v in files.values()
    ):
        raise UserError(f"checksum file {path} is damaged: delete it to load without checks")
    return files


def _note_checksum(path: Path, digest: str, pending: bool = False) -> None:
    """Record `digest` for `path`; `pending` keeps the old one too (the rename is to come)."""
    with _checksum_lock:
        try:
            files = read_checksums(path.parent) or {}
        except UserError:
            files = {}
        # Pending: every digest recorded so far stays valid (a kill may have come between
        # an earlier pending note and its rename); afterwards only the new one.
        keep = files.get(path.name, []) if pending else []
        files[path.name] = [digest, *[h for h in keep if h != digest]]
        doc = {"algorithm": "sha256", "files": dict(sorted(files.items()))}
        write_json(path.parent / CHECKSUMS_NAME, doc)


def record_checksums(folder: str | os.PathLike, names: Iterable[str]) -> Path:
    """Record the sha256 of the files `names` in `folder` (a folder written as a whole,
    then renamed: an export)."""
    folder = Path(folder)
    files = {n: [sha256_file(folder / n)] for n in sorted(names)}
    return write_json(folder / CHECKSUMS_NAME, {"algorithm": "sha256", "files": files})


def verify_checksum(path: str | os.PathLike) -> bool:
    """Check `path` against checksums.json beside it: True if it matches, False if no
    checksum was recorded (runs of earlier versions), a UserError naming the file if not."""
    path = Path(path)
    files = read_checksums(path.parent)
    if not files or path.name not in files or not path.is_file():
        return False
    if sha256_file(path) not in files[path.name]:
        raise UserError(
            f"{path} is truncated or corrupt: its sha256 differs from the one recorded in "
            f"{path.parent / CHECKSUMS_NAME} when it was written"
        )
    return True


# ---- text and JSON --------------------------------------------------------------------------


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_jsonl_records(path: str | os.PathLike, key: str = "step") -> list[dict[str, Any]]:
    """The JSON objects with `key` in a .jsonl file such as metrics.jsonl.

    A missing file gives []; a partial last line (from a kill) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and key in rec:
            records.append(rec)
    return records


def read_json_object(path: str | os.PathLike, what: str = "") -> dict[str, Any]:
    """A JSON file holding an object; anything else is a UserError naming `what` and path."""
    path = Path(path)
    name = f"{what} {path}".strip()
    if not path.is_file():
        raise UserError(f"{name} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{name} must hold a JSON object")
    return data
