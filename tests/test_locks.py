"""causalshift.locks: one writer per output folder, checked and created before any work."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from causalshift.errors import UserError
from causalshift.locks import LOCK_NAME, FolderLock, lock_path, output_folder

HOLD = textwrap.dedent(
    """
    import sys
    from causalshift.locks import output_folder
    with output_folder(sys.argv[1], whole=sys.argv[2] == "whole"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin
    """
)


def _holder(folder: Path, whole: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), "whole" if whole else "inside"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_second_holder_in_another_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        assert (run / LOCK_NAME).read_text().strip() == str(proc.pid)
        with pytest.raises(
            UserError, match=f"in use by another causalshift process \\(PID {proc.pid}\\)"
        ):
            with output_folder(run, "run directory"):
                pass
    finally:
        proc.communicate("")
    assert proc.returncode == 0
    assert not (run / LOCK_NAME).exists()  # removed on release
    with output_folder(run):  # free again
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_a_killed_holder_leaves_the_folder_free(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _holder(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / LOCK_NAME).exists()  # the file stays, the kernel's lock does not
    with output_folder(run):
        pass


def test_same_process_twice_is_refused(tmp_path: Path) -> None:
    with output_folder(tmp_path / "out"):
        with pytest.raises(UserError, match=f"PID {os.getpid()}"):
            with output_folder(tmp_path / "out"):
                pass


def test_wait_queues_behind_the_holder(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    out = tmp_path / "data"
    proc = _holder(out, whole=True)
    assert lock_path(out, whole=True).exists() and not out.exists()
    t0 = time.monotonic()
    threading.Timer(0.5, lambda: proc.stdin.close()).start()  # type: ignore[union-attr]
    with output_folder(out, whole=True, wait=True):
        assert time.monotonic() - t0 >= 0.4
    proc.wait()
    assert f"waiting for PID {proc.pid}" in capfd.readouterr().err


def test_lock_file_replaced_while_waiting_is_not_trusted(tmp_path: Path) -> None:
    """A waiter that wins the lock of a file its holder already removed tries again."""
    path = tmp_path / "x.lock"
    first = FolderLock(path, "x").acquire()
    fd = os.open(path, os.O_RDWR)  # a waiter that opened the old file
    first.release()
    assert not path.exists()
    second = FolderLock(path, "x").acquire()  # a new file, a new lock
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old inode is free, but stale
    with pytest.raises(UserError):
        FolderLock(path, "x").acquire()
    second.release()
    os.close(fd)


def test_output_folder_is_created_checked_and_removed_if_left_empty(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with output_folder(out):
            assert out.is_dir()
            raise RuntimeError("the command failed")
    assert not (tmp_path / "a").exists()  # nothing left behind
    with output_folder(out):
        (out / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_output_folder_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--out .*file/sub.*a file is in the way"):
        with output_folder(tmp_path / "file" / "sub"):
            pass
    with pytest.raises(UserError, match="exists and is not a folder"):
        with output_folder(tmp_path / "file", whole=True):
            pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_output_folder_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(UserError, match="permission denied"):
            with output_folder(ro):
                pass
        with pytest.raises(UserError, match="permission denied"):
            with output_folder(ro / "sub"):
                pass
    finally:
        os.chmod(ro, 0o755)


def test_stale_temporaries_are_removed_when_the_folder_is_opened(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = tmp_path / "run"
    run.mkdir()
    stale = run / f".model.safetensors.causalshift-tmp-{proc.pid}-0"
    stale.mkdir()
    (stale / ".tmpXy12Ab").write_bytes(b"\0" * 100)
    (run / ".tmpQw34Er").write_bytes(b"\0" * 100)  # an earlier version's safetensors temporary
    (run / "model.safetensors").write_bytes(b"kept")
    (run / "figures").mkdir()
    (run / "figures" / f".loss.png.causalshift-tmp-{proc.pid}-7").mkdir()
    beside = tmp_path / f".data.causalshift-tmp-{proc.pid}"
    beside.mkdir()
    with output_folder(run):
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "figures", "model.safetensors"]
        assert list((run / "figures").iterdir()) == []
    with output_folder(tmp_path / "data", whole=True):
        assert not beside.exists()


# ---- every command checks its output folder before it loads anything ------------------------

FIXTURES = Path(__file__).parent / "fixtures"


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("loaded before the output folder was checked")


def _command(name: str, tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """argv of `name` writing to `out`, with its first expensive step patched to fail."""
    if name == "analyze":
        import causalshift.lens.models as models

        monkeypatch.setattr(models, "load", _never)
        return ["analyze", "--model", "gpt2", "--device", "cpu", "--out", str(out)]
    if name == "export":
        import causalshift.evaluate.export as export

        monkeypatch.setattr(export, "load_model", _never)
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text('{"model": {}}')
        return ["export", str(run), "--out", str(out)]
    if name == "report":
        import causalshift.report.sources as sources

        monkeypatch.setattr(sources, "find_sources", _never)
        return ["report", str(FIXTURES / "analyze"), "--out", str(out)]
    if name == "prepare":
        import causalshift.corpus as corpus

        monkeypatch.setattr(corpus, "gpt2_encoding", _never)
        return ["prepare", "--data", "books", "--out", str(out)]
    import causalshift.train.prepare as prepare

    monkeypatch.setattr(prepare, "resolve_data", _never)
    return ["train", "--preset", "tiny", "--out", str(out)]


@pytest.mark.parametrize("name", ["analyze", "export", "report", "prepare", "train"])
def test_out_under_a_file_fails_before_any_work(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from causalshift.cli import main

    (tmp_path / "file").write_text("x")
    argv = _command(name, tmp_path, tmp_path / "file" / "sub" / "out", monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "a file is in the way" in err, err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("name", ["analyze", "export", "report", "prepare", "train"])
def test_out_in_use_fails_before_any_work(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from causalshift.cli import main

    out = tmp_path / "out"
    argv = _command(name, tmp_path, out, monkeypatch)
    proc = _holder(out, whole=name in ("prepare", "export"))
    try:
        assert main(argv) == 2
    finally:
        proc.communicate("")
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"(PID {proc.pid})" in err, err


def test_full_disk_while_writing_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno

    from matplotlib.figure import Figure

    from causalshift.cli import main

    def full(self: Figure, path: str, **kwargs: object) -> None:
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "report"
    assert main(["report", str(FIXTURES / "analyze"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no space left on device" in err, err
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
