"""bench/gpu_check.sh runs end to end with --device cpu at tiny sizes (so it is known to work
before a GPU runs it): its lines and its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        [str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("[gpu_check] ")]
    heads = [ln.split(":")[0] for ln in lines]
    assert heads[:5] == [
        "[gpu_check] device",
        "[gpu_check] analyze tiny-shaped random model",
        "[gpu_check] train tiny none",
        "[gpu_check] train tiny gate",
        "[gpu_check] eval cs_mc,cs_qa,cs_ppl on cpu",
    ]
    assert len(lines) == 6 and lines[5].startswith("[gpu_check] done in")
    assert lines[5].endswith(f"wrote {out}")
    assert "tokens/s" in lines[1] and "% of the float32 peak" in lines[1]
    assert "MFU" in lines[2] and "exit 0" in lines[4]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["eval"]["exit_code"] == 0
    assert set(res["train"]["mfu"]) == {"none", "gate"}
    assert res["analyze"]["tokens_per_second"]["ours_fast"] > 0
    tasks = {r["task"] for r in res["eval"]["results"]}
    assert tasks == {"cs_mc", "cs_qa", "cs_ppl"}
