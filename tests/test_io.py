"""causalshift.io: atomic writes (names, modes, disk errors), checksums, stale temporaries."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from causalshift import io
from causalshift.errors import UserError


@pytest.fixture
def umask_002() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- names and modes ------------------------------------------------------------------------


def test_temporaries_carry_the_pid_and_go_away(tmp_path: Path) -> None:
    seen = []

    def write(tmp: str) -> None:
        seen.append(Path(tmp))
        Path(tmp).write_text("x")
        Path(tmp).with_name(".tmpAbC123").write_text("a helper file of the writer")

    io.atomic_write(tmp_path / "a.txt", write)
    box = seen[0].parent
    assert box.parent == tmp_path
    assert box.name == f".a.txt.causalshift-tmp-{os.getpid()}-" + box.name.rsplit("-", 1)[1]
    assert (tmp_path / "a.txt").read_text() == "x"
    assert _leftovers(tmp_path) == []  # the writer's own temporary went with the folder


@pytest.mark.usefixtures("umask_002")
def test_written_files_get_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    io.write_text(tmp_path / "a.txt", "x")
    # a writer that creates its file 0600 (as safetensors and mkstemp do)
    io.atomic_write(
        tmp_path / "b.bin", lambda t: os.close(os.open(t, os.O_CREAT | os.O_WRONLY, 0o600))
    )
    mode = plain.stat().st_mode & 0o777
    assert mode == 0o664
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode
    assert io.file_mode() == 0o664


def test_plain_modes_opens_up_a_private_folder(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir(mode=0o700)
    (folder / "w").write_text("x")
    os.chmod(folder / "w", 0o600)
    io.plain_modes(folder)
    mask = io.umask()
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (folder / "w").stat().st_mode & 0o777 == 0o666 & ~mask


# ---- disk errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path: Path, code: int) -> None:
    target = tmp_path / "out.json"
    target.write_text('{"old": 1}')

    def write(tmp: str) -> None:
        Path(tmp).write_text('{"half')
        raise OSError(code, os.strerror(code))

    with pytest.raises(UserError, match=f"cannot write {target}: {io.DISK_ERRORS[code]}"):
        io.atomic_write(target, write)
    assert target.read_text() == '{"old": 1}'  # the old file is untouched
    assert _leftovers(tmp_path) == []


def test_a_full_disk_hidden_by_a_library_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports ENOSPC as 'unexpected pos ...', safetensors as 'os error 28'."""
    assert io.disk_error(RuntimeError("Error while serializing: I/O error: (os error 28)")) == (
        "no space left on device"
    )
    assert io.disk_error(RuntimeError("unexpected pos 576 vs 534"), tmp_path) is None

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(io.os, "statvfs", lambda _: Full())

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(UserError, match="no space left on device"):
        io.atomic_write(tmp_path / "state.pt", write)
    assert _leftovers(tmp_path) == []
    assert io.disk_error(KeyboardInterrupt(), tmp_path) is None  # never hides an interrupt


def test_other_errors_pass_through(tmp_path: Path) -> None:
    def write(tmp: str) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        io.atomic_write(tmp_path / "x", write)
    assert _leftovers(tmp_path) == []


def test_folder_under_a_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a file is in the way"):
        io.make_dirs(tmp_path / "file" / "sub", "--out")
    with pytest.raises(UserError, match="exists and is not a folder"):
        io.make_dirs(tmp_path / "file", "--out")
    with pytest.raises(UserError, match="cannot create"):
        io.write_text(tmp_path / "file" / "sub" / "a.txt", "x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_is_a_user_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(UserError, match="permission denied"):
            io.check_writable(ro, "--out")
        with pytest.raises(UserError, match="permission denied"):
            io.write_text(ro / "a.txt", "x")
        with pytest.raises(UserError, match="permission denied"):
            io.make_dirs(ro / "sub", "--out")
    finally:
        os.chmod(ro, 0o755)


# ---- checksums ------------------------------------------------------------------------------


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checksum_is_recorded_and_verified(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    io.atomic_write(f, lambda t: Path(t).write_bytes(b"abc" * 1000), checksum=True)
    doc = json.loads((tmp_path / io.CHECKSUMS_NAME).read_text())
    assert doc["files"] == {"w.bin": [io.sha256_file(f)]}
    assert io.verify_checksum(f) is True
    _flip_middle(f)
    with pytest.raises(UserError, match=f"{f} is truncated or corrupt: its sha256"):
        io.verify_checksum(f)


def test_no_checksum_file_still_loads(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"old run")
    assert io.verify_checksum(f) is False


def test_damaged_checksum_file_is_a_user_error(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    io.atomic_write(f, lambda t: Path(t).write_bytes(b"abc"), checksum=True)
    (tmp_path / io.CHECKSUMS_NAME).write_text('{"files": {"w.bin": 3}}')
    with pytest.raises(UserError, match="damaged"):
        io.verify_checksum(f)


def test_a_kill_around_the_rename_never_breaks_the_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed before the rename: the old file matches; after it: the new one."""
    f = tmp_path / "w.bin"
    io.atomic_write(f, lambda t: Path(t).write_bytes(b"one"), checksum=True)

    def killed(*a: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(io.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            io.atomic_write(f, lambda t: Path(t).write_bytes(b"two"), checksum=True)
    assert f.read_bytes() == b"one" and io.verify_checksum(f)

    notes = []
    real = io._note_checksum

    def note(path: Path, digest: str, pending: bool = False) -> None:
        if not pending:
            notes.append(digest)
            raise KeyboardInterrupt  # renamed, the final note not written
        real(path, digest, pending)

    with monkeypatch.context() as m:
        m.setattr(io, "_note_checksum", note)
        with pytest.raises(KeyboardInterrupt):
            io.atomic_write(f, lambda t: Path(t).write_bytes(b"three"), checksum=True)
    assert f.read_bytes() == b"three" and io.verify_checksum(f)
    io.atomic_write(f, lambda t: Path(t).write_bytes(b"four"), checksum=True)
    doc = json.loads((tmp_path / io.CHECKSUMS_NAME).read_text())
    assert doc["files"]["w.bin"] == [io.sha256_file(f)]  # only the new one once settled
    (tmp_path / "w.bin").write_bytes(b"three")
    with pytest.raises(UserError):
        io.verify_checksum(f)


# ---- stale temporaries ----------------------------------------------------------------------


def test_stale_temporaries_of_dead_pids_are_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale = [f".model.safetensors.causalshift-tmp-{dead}-0", f".data.causalshift-tmp-{dead}",
             f".data.tmp-{dead}"]  # fmt: skip
    kept = [f".x.causalshift-tmp-{alive}-3", "notes.tmp", ".hidden"]
    legacy = [".tmpAb12Cd", ".model.safetensors.k2j_a9x1.tmp"]
    for name in stale + kept + legacy:
        (tmp_path / name).mkdir() if "data" in name else (tmp_path / name).write_text("x")
    (tmp_path / f".data.causalshift-tmp-{dead}" / "train_000000.bin").write_text("x")
    removed = io.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + legacy)
    removed = io.remove_stale_temporaries(tmp_path, legacy=True)
    assert sorted(p.name for p in removed) == sorted(legacy)


def test_stale_temporaries_of_one_name(tmp_path: Path) -> None:
    dead = _dead_pid()
    for name in (f".a.causalshift-tmp-{dead}", f".b.causalshift-tmp-{dead}"):
        (tmp_path / name).mkdir()
    io.remove_stale_temporaries(tmp_path, name="a")
    assert [p.name for p in tmp_path.iterdir()] == [f".b.causalshift-tmp-{dead}"]
