"""One writer per output folder: an exclusive lock held for the life of a command.

`output_folder(path)` is what every command that writes a folder opens first (train's run
directory, `analyze --out`, `prepare --out`, `export --out`, `report --out`), before it
loads anything: it creates the folder, checks that a file can be written there, takes the
lock and removes the temporaries that killed processes left behind. A second process that
asks for the same folder gets one line naming the holder's PID (exit code 2).

The lock is `fcntl.flock` on a file holding the owner's PID: the kernel releases it when
the process dies, however it dies, so a killed run never leaves a folder locked. A folder
written file by file holds its lock file inside (`.causalshift.lock`); a folder built as a
temporary sibling and renamed into place (prepare, export) holds it beside itself
(`.NAME.causalshift.lock`), since the rename would carry a lock file inside away.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from causalshift.errors import UserError
from causalshift.io import check_writable, make_dirs, remove_stale_temporaries

LOCK_NAME = ".causalshift.lock"


def lock_path(folder: str | os.PathLike, whole: bool = False) -> Path:
    """The lock file of `folder`: inside it, or beside it for a folder replaced whole."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}{LOCK_NAME}" if whole else folder / LOCK_NAME


class FolderLock:
    """An exclusive `flock` on `path`; `wait`: block until the holder is done instead of
    raising. The lock file is removed on release."""

    def __init__(self, path: str | os.PathLike, what: str, wait: bool = False) -> None:
        self.path, self.what, self.wait = Path(path), what, wait
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not self.wait:
                    os.close(fd)
                    raise UserError(
                        f"{self.what} is in use by another causalshift process ({holder}): "
                        "wait for it to finish or choose another folder"
                    ) from None
                print(f"waiting for {holder}, which holds {self.what}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
            else:  # the holder removed the file as it let go: lock the new one
                os.close(fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before letting go: a waiter then sees the file is gone
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """'PID 1234' from the lock file (empty while the holder is still writing it)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "PID unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _remove_stale(path: Path, whole: bool) -> None:
    """Nobody else writes here now: what dead processes left is garbage (in the folder and
    its subfolders, such as a run's figures/; beside it for a folder replaced whole)."""
    if whole:
        remove_stale_temporaries(path.parent, name=path.name)
        return
    remove_stale_temporaries(path, legacy=True)
    for sub in path.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            remove_stale_temporaries(sub, legacy=True)


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike,
    what: str = "--out",
    *,
    whole: bool = False,
    lock: bool = True,
    wait: bool = False,
) -> Iterator[Path]:
    """Create, check and lock the output folder `path` for the life of the block.

    whole=False: a folder written file by file (a run directory): created now, the lock file
    inside. whole=True: a folder built beside itself and renamed into place (prepare,
    export): its parent is created and checked, `path` itself is left to the caller.
    lock=False: create and check only (the other ranks of a torchrun job). wait: queue
    behind a holder instead of failing. Folders created here that are still empty at the
    end are removed again, so a command that fails leaves nothing behind."""
    path = Path(path)
    name = f"{what} {path}".strip()
    if whole and path.exists() and not path.is_dir():
        raise UserError(f"{name} exists and is not a folder")
    folder = path.parent if whole else path
    created = make_dirs(folder, what if not whole else f"the folder of {what}")
    held = None
    try:
        check_writable(folder, what if not whole else "")
        if lock:
            held = FolderLock(lock_path(path, whole), name, wait=wait).acquire()
            _remove_stale(path, whole)
        yield path
    finally:
        if held is not None:
            held.release()
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
