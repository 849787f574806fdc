"""Two processes, one folder (issue 11): `train` runs with the same --out, and `train` runs
that prepare the same --data FILE into the cache on first use. Real processes, real races."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from causalshift.train.prepare import cache_name, write_token_dir

TRAIN = ["--preset", "tiny", "--batch-size", "4", "--block-size", "32", "--eval-iters", "1",
         "--no-compile", "--threads", "1", "--dtype", "float32", "--no-progress"]  # fmt: skip

# `causalshift train ARGS`, started when the file sys.argv[1] appears: processes started one
# after another (each imports torch first) reach the data at the same moment.
TRAIN_AT_SIGNAL = """
import os, sys, time
from causalshift.train import prepare
resolve = prepare.resolve_data
def resolve_when_told(*args, **kwargs):
    open(f"{sys.argv[1]}.ready-{os.getpid()}", "w").close()
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.005)
    return resolve(*args, **kwargs)
prepare.resolve_data = resolve_when_told
from causalshift.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


def _env(cache: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["CAUSALSHIFT_CACHE"] = str(cache)
    return env


def test_two_trains_with_the_same_out(tmp_path: Path) -> None:
    """The second gets exit 2 and the first's PID; the first's run is untouched."""
    rng = np.random.default_rng(0)
    data = write_token_dir(
        tmp_path / "data", rng.integers(0, 2000, 30_000), rng.integers(0, 2000, 4_000)
    )
    out = tmp_path / "run"
    args = [*TRAIN, "--data", str(data), "--out", str(out), "--max-steps", "100000",
            "--checkpoint-interval", "100000", "--log-interval", "1"]  # fmt: skip
    cmd = [sys.executable, "-m", "causalshift", "train", *args]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 180
        while not (out / "metrics.jsonl").is_file():  # training: past every start-up check
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        try:
            second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the second run was not refused: it trains in the first one's folder")
        assert first.poll() is None  # still running
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {first.pid}" in lines[0], second.stderr
    assert "run directory" in lines[0] and str(out) in lines[0]
    assert first.returncode == 128 + signal.SIGTERM, err
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 0 and steps == sorted(steps)  # the second never cleared the log
    assert not (out / ".causalshift.lock").exists()


def _text(path: Path, docs: int = 2500, words: int = 400) -> Path:
    """Enough text that preparing it takes a good part of a second."""
    rnd = random.Random(0)
    vocab = ["".join(rnd.choice("bcdfghklmnprstvz") + rnd.choice("aeiou") for _ in range(3))
             for _ in range(3000)]  # fmt: skip
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            f.write(" ".join(rnd.choices(vocab, k=words)) + ".\n\n")
    return path


@pytest.mark.parametrize("n", [3])
def test_trains_preparing_the_same_data_share_one_result(tmp_path: Path, n: int) -> None:
    """On first use of --data FILE, n `train` runs at once: one prepares, the others wait
    for it and reuse its shards (they used to crash: "Directory not empty")."""
    text = _text(tmp_path / "corpus.txt")
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                TRAIN_AT_SIGNAL,
                str(go),
                *TRAIN,
                "--data",
                str(text),
                "--out",
                str(tmp_path / f"run{i}"),
                "--max-steps",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(cache),
        )  # fmt: skip
        for i in range(n)
    ]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("go.ready-*"))) < n:  # every run is at the data now
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "the runs did not start"
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    entry = cache / "data" / cache_name(str(text))
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["splits"]["train"]["num_tokens"] > 100_000
    for i in range(n):
        assert json.loads((tmp_path / f"run{i}" / "config.json").read_text())["data_dir"] == str(
            entry
        )
    waited = [err for _, err in results if "waiting for PID" in err]
    assert len(waited) == n - 1, [err for _, err in results]  # one prepared, the others waited
    assert all("which holds the data cache" in err for err in waited)
    print(f"prepared in {meta['seconds']} s")
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no lock, no temp
