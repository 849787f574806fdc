"""The GPU figures docs/benchmarks.md lacks, in one run (`bench/gpu_check.sh`; under 8 minutes
on one GPU), printed as `[gpu_check] ...` lines and written as JSON:

1. analyze throughput on a random model of Gemma-2-2B's shape (bf16 weights and screen) and
   the lens projection's effective TFLOP/s as a fraction of the bf16 `torch.mm` peak
   measured in the same run;
2. `gpt2-124m` training tokens/s and MFU (against that bf16 peak) for residual modes `none`
   and `gate` (the trainer's step, compiled, interleaved);
3. `causalshift eval` on the local tasks (tests/data/tasks: cs_mc, cs_qa, cs_ppl) on the
   device, for a random GPT of `gpt2-124m`'s shape: seconds and scores.

`--device cpu` runs the same code at tiny sizes (the test suite does, so the script is known
to work before a GPU runs it).

    bench/gpu_check.sh [--device cuda|cpu] [--out bench/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, matmul_peak, quiet_openmp

TASKS = REPO / "tests" / "data" / "tasks"

SIZES: dict[str, dict[str, Any]] = {
    "cuda": dict(
        analyze=dict(shape="gemma2-2b", num_seqs=16, seq_len=256, batch_size=8, reps=2),
        peak=(8192, 8192, 8192),
        train=dict(preset="gpt2-124m", batch_size=16, steps=5, reps=3, compile=True),
        eval=dict(preset="gpt2-124m", limit=None, batch_size=16),
    ),
    "cpu": dict(
        analyze=dict(shape="tiny", num_seqs=2, seq_len=16, batch_size=2, reps=1),
        peak=(256, 256, 256),
        train=dict(preset="tiny", batch_size=2, steps=1, reps=1, compile=False),
        eval=dict(preset="tiny", limit=2, batch_size=4),
    ),
}


def say(line: str) -> None:
    print(f"[gpu_check] {line}", flush=True)


def analyze_check(device: str, shape: str, num_seqs: int, seq_len: int, batch_size: int, reps: int):
    """The lens's default path on a random model (Gemma-2-2B's shape, or a tiny Gemma 2):
    tokens/s and the projection's effective throughput against the bf16 peak."""
    from bench import lens

    if shape == "gemma2-2b":
        return lens.gemma2_2b_shape(device, num_seqs, seq_len, batch_size, reps)
    tiny = dict(lens.GEMMA2_2B_SHAPE, hidden_size=64, num_hidden_layers=2, vocab_size=512)
    tiny.update(num_attention_heads=2, num_key_value_heads=1, head_dim=32, intermediate_size=128)
    lm = lens.random_model("gemma2", device=device, **tiny)
    tokens = lens.random_tokens(num_seqs, seq_len, tiny["vocab_size"])
    peak = matmul_peak(("bfloat16",), size=(256, 256, 256), device=device)
    return lens.compare(
        lm, tokens, reps=reps, batch_size=batch_size, device=device, with_plain=False,
        with_float32=False, peak=peak,
    )  # fmt: skip


def train_check(
    device: str, preset: str, batch_size: int, steps: int, reps: int, compile: bool, peak: float
) -> dict[str, Any]:
    """Trainer tokens/s for `none` and `gate`, and MFU against `peak` (GFLOP/s)."""
    from bench import train
    from causalshift.gpt.model import GPT

    res = train.residual_modes(
        preset, modes=("none", "gate"), batch_size=batch_size, steps=steps, reps=reps,
        device=device, compile=compile,
    )  # fmt: skip
    model_cfg = train.bench_config(preset, "cpu").model
    flops = GPT(model_cfg).flops_per_token()
    res["flops_per_token"] = flops
    res["mfu"] = {m: v * flops / (peak * 1e9) for m, v in res["tokens_per_second"].items()}
    return res


def eval_check(device: str, preset: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """`causalshift eval` of a random GPT of the preset's shape on the local tasks."""
    import torch

    from bench import train
    from causalshift.cli import main
    from causalshift.gpt.io import save_model
    from causalshift.gpt.model import GPT

    model_cfg = train.bench_config(preset, "cpu").model
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"seed": 0, "model": model_cfg.to_dict()}))
        save_model(GPT(model_cfg), run)
        out = Path(tmp) / "eval"
        argv = ["eval", str(run), "--tasks", "cs_mc,cs_qa,cs_ppl", "--include-path", str(TASKS)]
        argv += ["--device", device, "--batch-size", str(batch_size), "--out", str(out)]
        if limit is not None:
            argv += ["--limit", str(limit)]
        t0 = time.perf_counter()
        code = main(argv)
        seconds = time.perf_counter() - t0
        result = json.loads((out / "eval.json").read_text()) if code == 0 else {}
    return {"exit_code": code, "seconds": seconds, "results": result.get("results", [])}


def run(device: str) -> dict[str, Any]:
    """All three checks on `device`, each line printed as soon as it is measured."""
    sizes = SIZES["cuda" if device.startswith("cuda") else "cpu"]
    info = machine(device)
    t_all = time.perf_counter()
    # the precision the lens screen and training run in: bf16 on GPUs; float32 on the CPU
    # (a smoke test there: its sizes are too small for these figures to mean anything)
    precision = "bfloat16" if device.startswith("cuda") else "float32"
    peak = matmul_peak((precision,), size=sizes["peak"], device=device)[precision]
    name = info.get("gpu") or info.get("cpu")
    say(
        f"device: {device} ({name}), torch {info['torch']}, {precision} matmul peak "
        f"{peak:.4g} GFLOP/s"
    )
    out: dict[str, Any] = {"device": device, "machine": info, "peak_gflops": {precision: peak}}
    a = analyze_check(device, **sizes["analyze"])
    frac = a["effective_gflops"]["ours_fast"] / peak
    say(
        f"analyze {sizes['analyze']['shape']}-shaped random model: "
        f"{a['tokens_per_second']['ours_fast']:.4g} tokens/s ({a['num_seqs']} x {a['seq_len']} "
        f"tokens, screens {'+'.join(a['fast_screens'])}), projection "
        f"{a['effective_gflops']['ours_fast']:.4g} effective GFLOP/s = "
        f"{100 * frac:.1f}% of the {precision} peak (executed fraction "
        f"{100 * a['executed_fraction']:.1f}%)"
    )
    out["analyze"] = a
    t = train_check(device, peak=peak, **sizes["train"])
    for mode in ("none", "gate"):
        say(
            f"train {sizes['train']['preset']} {mode}: {t['tokens_per_second'][mode]:.4g} "
            f"tokens/s, MFU {100 * t['mfu'][mode]:.1f}%"
        )
    out["train"] = t
    e = eval_check(device, **sizes["eval"])
    scores = ", ".join(
        f"{r['task']} {r['metric']} {r['value']:.3g}"
        for r in e["results"] or []
        if isinstance(r, dict) and isinstance(r.get("value"), (int, float))
    )
    say(
        f"eval cs_mc,cs_qa,cs_ppl on {device}: exit {e['exit_code']}, "
        f"{e['seconds']:.3g} s; {scores}"
    )
    out["eval"] = e
    out["total_seconds"] = time.perf_counter() - t_all
    return out


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny sizes)")
    p.add_argument("--out", default=str(REPO / "bench" / "gpu_check.json"))
    a = p.parse_args(argv)
    res = run(a.device)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
    say(f"done in {res['total_seconds']:.1f} s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
