"""DDP: 2 CPU processes (gloo, torchrun) == 1 process with twice the gradient accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from causalshift.cli import main
from causalshift.train.prepare import write_token_dir

ARGS = ["train", "--preset", "tiny", "--batch-size", "2", "--block-size", "32", "--eval-iters",
        "2", "--no-compile", "--dtype", "float32", "--threads", "1", "--no-progress",
        "--max-steps", "6", "--eval-interval", "3", "--log-interval", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = np.random.default_rng(0).integers(0, 3000, 20_000)
    return write_token_dir(tmp_path_factory.mktemp("data"), x[:18_000], x[18_000:])


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_with_double_accumulation(data_dir: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*ARGS, "--data", str(data_dir), "--out", str(one), "--grad-accum", "2"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "causalshift", *ARGS, "--data", str(data_dir), "--out", str(two),
           "--grad-accum", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch_sequences"] == 4
    a, b = _records(one), _records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(7))
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss"):
            if ra[key] is None:
                assert rb[key] is None
            else:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-5), (ra, rb)
    assert a[-1]["train_loss"] != a[1]["train_loss"]  # it trained
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
    state = torch.load(two / "train_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["position"] == 6 * 4
