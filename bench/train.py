"""Training benchmarks: `causalshift train`'s step against a plain nanoGPT-style step.

- `compare`: the trainer's own optimizer step (`Trainer.train_step`: sampler, autocast,
  compiled forward/backward, clip, statistics, AdamW) vs `bench.nanogpt.PlainTrainer` of
  the same shape, precision and compile setting, interleaved blocks of steps; MFU against
  the bf16 matmul peak measured in the same run.
- `residual_modes`: none / fixed / gate / gate-hard / scalar, interleaved, cost vs none.
- `growth`: the trainer's tokens/s and MFU by model size and tokens per step.

Logging, validation and checkpoints are outside the timed step, as in the trainer's own
`tokens_per_second` metric.

    python -m bench.train [--device cuda] [--preset cpu-small|gpt2-124m] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import alternate, emit, machine, matmul_peak, median, quiet_openmp


def _data_dir(root: Path, block_size: int, seed: int = 0) -> Path:
    """A prepared data dir of random GPT-2 token ids (speed does not depend on the text)."""
    import numpy as np

    from causalshift.train.prepare import write_token_dir

    rng = np.random.default_rng(seed)
    n = max(200_000, 64 * (block_size + 1))
    return write_token_dir(root / "data", rng.integers(0, 50257, n), rng.integers(0, 50257, 4096))


def make_trainer(root: Path, cfg, device: str = "cpu", name: str = "run"):
    """A `causalshift.train.loop.Trainer` on random tokens (not run: call `train_step`)."""
    from causalshift import runtime
    from causalshift.train.loop import Trainer

    info = runtime.DistInfo(
        rank=0, local_rank=0, world_size=1, device=runtime.resolve_device(device)
    )
    data = root / "data"
    if not data.exists():
        _data_dir(root, cfg.model.block_size)
    return Trainer(cfg, root / name, data, info, progress=False)


def bench_config(
    preset: str = "cpu-small", device: str = "cpu", **overrides: Any
):  # -> TrainConfig
    """The preset with benchmark-friendly overrides: no eval during the timed steps, and one
    micro-step per optimizer step (grad_accum 1, no batch_tokens) unless overridden."""
    from causalshift.train.config import preset as get_preset

    cfg = get_preset(preset).replace(
        device=device, eval_iters=1, data="", grad_accum=1, batch_tokens=None
    )
    return cfg.replace(**overrides)


def _ours_steps(trainer, k: int):
    def run():
        for _ in range(k):
            trainer.train_step(0)
            trainer.step += 1
            trainer.position += trainer.global_batch

    return run


def _plain_steps(plain, batches, k: int):
    def run():
        for i in range(k):
            x, y = batches[i % len(batches)]
            plain.step(x, y)

    return run


def compare(
    preset: str = "cpu-small",
    *,
    batch_size: int = 4,
    steps: int = 3,
    reps: int = 3,
    warmup: int = 2,
    device: str = "cpu",
    compile: bool = True,
    dtype: str = "auto",
    peak: dict[str, float] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Trainer step vs plain step: tokens/s (medians over interleaved blocks of `steps`)."""
    import torch

    from bench.nanogpt import PlainTrainer
    from causalshift.runtime import autocast_dtype

    cfg = bench_config(
        preset,
        device,
        batch_size=batch_size,
        compile=compile,
        dtype=dtype,
        **overrides,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ours = make_trainer(Path(tmp), cfg, device)
        amp = autocast_dtype(cfg.dtype, ours.device)
        plain = PlainTrainer(
            cfg.model.n_layer,
            cfg.model.n_head,
            cfg.model.n_embd,
            cfg.model.block_size,
            cfg.model.vocab_size,
            amp=amp,
            compile=compile,
            lr=cfg.lr,
            device=ours.device,
        )
        gen = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(4):
            t = torch.randint(0, 50257, (batch_size, cfg.model.block_size + 1), generator=gen)
            batches.append((t[:, :-1].to(ours.device), t[:, 1:].to(ours.device)))
        _ours_steps(ours, warmup)()  # compile + warm-up
        _plain_steps(plain, batches, warmup)()
        fns = {"ours": _ours_steps(ours, steps), "plain": _plain_steps(plain, batches, steps)}
        times, _ = alternate(fns, reps, device)
        flops_per_token = ours.model.flops_per_token()
        n_params = ours.model.num_params()
    tokens = steps * batch_size * cfg.model.block_size
    tok_s = {k: tokens / median(v) for k, v in times.items()}
    m = cfg.model
    out = {
        "preset": preset,
        "shape": dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size),
        "params": n_params,
        "batch_size": batch_size,
        "tokens_per_step": batch_size * cfg.model.block_size,
        "steps_per_block": steps,
        "reps": reps,
        "compile": compile,
        "precision": str(amp).replace("torch.", "") if amp else "float32",
        "seconds": times,
        "tokens_per_second": tok_s,
        "ratio_ours_vs_plain": tok_s["ours"] / tok_s["plain"],
        "ratio_per_rep": [p / o for o, p in zip(times["ours"], times["plain"], strict=True)],
        "flops_per_token": flops_per_token,
    }
    if peak:
        key = "bfloat16" if amp is not None else "float32"
        out["peak_gflops"] = {key: peak[key]}
        out["mfu"] = {k: v * flops_per_token / (peak[key] * 1e9) for k, v in tok_s.items()}
    return out


def logits_output_cost(
    preset: str = "cpu-small",
    *,
    batch_size: int = 4,
    steps: int = 2,
    reps: int = 4,
    device: str = "cpu",
    compile: bool = True,
) -> dict[str, Any]:
    """What returning the logits costs: the same plain step with the compiled forward also
    returning the (B, T, V) logits (as `causalshift.gpt.GPT.forward` does unless the trainer's
    `return_logits=False`), against the loss-only plain step and the trainer."""
    import torch

    from bench.nanogpt import PlainTrainer
    from causalshift.runtime import autocast_dtype

    cfg = bench_config(preset, device, batch_size=batch_size, compile=compile)
    with tempfile.TemporaryDirectory() as tmp:
        ours = make_trainer(Path(tmp), cfg, device)
        amp = autocast_dtype(cfg.dtype, ours.device)
        m = cfg.model
        shape = (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size)
        plain = PlainTrainer(*shape, amp=amp, compile=compile, device=ours.device)
        with_logits = PlainTrainer(
            *shape, amp=amp, compile=compile, device=ours.device, return_logits=True
        )
        t = torch.randint(
            0, 50257, (batch_size, m.block_size + 1), generator=torch.Generator().manual_seed(0)
        )
        batches = [(t[:, :-1].to(ours.device), t[:, 1:].to(ours.device))]
        fns = {
            "trainer": _ours_steps(ours, steps),
            "plain_returning_logits": _plain_steps(with_logits, batches, steps),
            "plain_loss_only": _plain_steps(plain, batches, steps),
        }
        for f in fns.values():
            f()  # compile + warm-up
        times, _ = alternate(fns, reps, device)
    base = median(times["plain_loss_only"])
    return {
        "preset": preset,
        "batch_size": batch_size,
        "steps_per_block": steps,
        "reps": reps,
        "seconds": times,
        "tokens_per_second_vs_plain": {k: base / median(v) for k, v in times.items()},
    }


def loop_overhead(preset: str = "cpu-small", batch_size: int = 4, n: int = 200) -> dict:
    """Milliseconds per step of the trainer's work around the model (sampler read + tensor
    conversion, residual.begin_step, learning-rate update, the statistics sync), timed alone."""
    import time

    import torch

    cfg = bench_config(preset, "cpu", batch_size=batch_size, compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        tr = make_trainer(Path(tmp), cfg, "cpu")
        t0 = time.perf_counter()
        for i in range(n):
            tr._to_device(tr.sampler.batch(i * batch_size, batch_size))
        t1 = time.perf_counter()
        for i in range(n):
            tr.model.residual.begin_step(i, cfg.seed)
            for group in tr.optimizer.param_groups:
                group["lr"] = group["base_lr"] * 0.5
            torch.stack([torch.zeros(()), torch.zeros(()), torch.tensor(0.0)]).double().tolist()
        t2 = time.perf_counter()
    return {"sampler_ms": 1e3 * (t1 - t0) / n, "bookkeeping_ms": 1e3 * (t2 - t1) / n}


def residual_modes(
    preset: str = "cpu-small",
    *,
    modes: tuple[str, ...] = ("none", "fixed", "gate", "gate-hard", "scalar"),
    batch_size: int = 4,
    steps: int = 2,
    reps: int = 3,
    device: str = "cpu",
    compile: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Tokens/s of each residual mode (interleaved) and its cost relative to `none`."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for mode in modes:
            n_layer = overrides.get("n_layer") or bench_config(preset, device).model.n_layer
            extra = {"cut_layer": max(1, n_layer * 2 // 3)} if mode == "fixed" else {}
            cfg = bench_config(
                preset,
                device,
                batch_size=batch_size,
                compile=compile,
                residual=mode,
                **extra,
                **overrides,
            )
            tr = make_trainer(Path(tmp), cfg, device, name=mode)
            _ours_steps(tr, 2)()  # compile + warm-up
            trainers[mode] = tr
        fns = {m: _ours_steps(tr, steps) for m, tr in trainers.items()}
        times, _ = alternate(fns, reps, device)
    tokens = steps * batch_size * cfg.model.block_size
    tok_s = {m: tokens / median(t) for m, t in times.items()}
    # Paired: each round ran every mode back to back, so the ratio within a round cancels
    # most of the machine's drift; the median over rounds is the claim.
    paired = {
        m: median([a / b - 1 for a, b in zip(t, times["none"], strict=True)])
        for m, t in times.items()
    }
    return {
        "preset": preset,
        "batch_size": batch_size,
        "compile": compile,
        "steps_per_block": steps,
        "reps": reps,
        "seconds": times,
        "tokens_per_second": tok_s,
        "overhead_vs_none": {m: tok_s["none"] / v - 1 for m, v in tok_s.items()},
        "overhead_vs_none_paired": paired,
    }


def trainer_throughput(
    preset: str = "cpu-small",
    *,
    batch_size: int = 4,
    steps: int = 2,
    reps: int = 1,
    device: str = "cpu",
    compile: bool = True,
    dtype: str = "auto",
    peak: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Tokens/s (and MFU) of the trainer's step alone, for the growth table."""
    from causalshift.runtime import autocast_dtype

    cfg = bench_config(
        preset,
        device,
        batch_size=batch_size,
        compile=compile,
        dtype=dtype,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tr = make_trainer(Path(tmp), cfg, device)
        _ours_steps(tr, 2)()  # compile + warm-up
        times, _ = alternate({"ours": _ours_steps(tr, steps)}, reps, device)
        flops, params = tr.model.flops_per_token(), tr.model.num_params()
        amp = autocast_dtype(cfg.dtype, tr.device)
    tok_s = steps * batch_size * cfg.model.block_size / median(times["ours"])
    key = "bfloat16" if amp is not None else "float32"
    return {
        "preset": preset,
        "params": params,
        "tokens_per_step": batch_size * cfg.model.block_size,
        "precision": key,
        "tokens_per_second": tok_s,
        "flops_per_token": flops,
        "mfu": tok_s * flops / (peak[key] * 1e9) if peak else None,
    }


def growth(
    rows: tuple[tuple[str, int], ...] = (
        ("tiny", 8),
        ("tiny", 32),
        ("cpu-small", 2),
        ("cpu-small", 8),
    ),
    **kw: Any,
) -> list[dict[str, Any]]:
    """Trainer tokens/s by model size and tokens per step."""
    return [trainer_throughput(p, batch_size=b, **kw) for p, b in rows]


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="cpu-small", help="tiny | cpu-small | gpt2-124m")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--modes", action="store_true", help="also the residual modes' overhead")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    size = (8192, 8192, 8192) if args.device.startswith("cuda") else (2048, 2048, 2048)
    peak = matmul_peak(size=size, device=args.device)
    res: dict[str, Any] = {
        "compare": compare(
            args.preset,
            batch_size=args.batch_size,
            steps=args.steps,
            reps=args.reps,
            device=args.device,
            compile=args.compile,
            peak=peak,
        ),
    }
    if args.modes:
        res["residual_modes"] = residual_modes(
            args.preset, batch_size=args.batch_size, device=args.device, compile=args.compile
        )
    res["machine"] = machine(args.device)
    emit(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
