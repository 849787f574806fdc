"""Speed on the CPU at hand: what a run pays before its first batch, tokens/s by run size
against the model's forward alone, which screen the probe chose and why, and the int8
kernels against float32 on the lens's own chunk shape.

- `startup_probe` (one fresh process per size, through `bench.common.in_subprocess`): load
  the model and touch its weights (timed, not counted), then time the tokenization, the
  screen choice (the probe, cached or not), preparing U's chunks and every batch of one
  `run_lens` call; then the forward alone over the same tokens. The fixed cost is everything
  in the call that is not a batch (tokenization, choice, preparation), plus what the first
  batch took beyond the median of the later ones (lazy work: compiling, first calls).
- `kernels`: each screen's chunk step (quantize the rows, multiply; rows x VOCAB_CHUNK x d)
  in G(FL)OP/s, interleaved, and the milliseconds to prepare a chunk; the quantized-linear
  kernels' exactness with 7-bit rows and their error with full 8-bit rows (the saturation
  Int8Screen's 7-bit rows avoid).
- `probe_record`: the probe measured afresh (its seconds: the cost a first run pays) and the
  screens it picks for runs of 1, 4 and 32 sequences.

    python -m bench.speed [--model gemma-3-270m] [--seqs 1,4,32] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import alternate, emit, in_subprocess, machine, median, quiet_openmp


def _wrap_timing(obj: Any, name: str, log: list[float]) -> Any:
    """Replace obj.name by a wrapper that appends each call's seconds to log; returns the
    attribute as stored (a classmethod stays one when restored)."""
    stored = vars(obj)[name]
    original = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            log.append(time.perf_counter() - t0)

    setattr(obj, name, timed)
    return stored


def startup_probe(
    model: str = "gemma-3-270m",
    num_seqs: int = 1,
    seq_len: int = 128,
    batch_size: int = 8,
    data: str = "wiki",
    compile: bool | None = None,
) -> dict[str, Any]:
    """One `analyze`-sized run in this (fresh) process, its time split into the fixed cost
    and the batches; the forward alone on the same tokens afterwards. compile: None for the
    engine's rule (`engine.COMPILE_AFTER`), True / False to force the counting kernels
    compiled / eager (to see where compiling pays)."""
    quiet_openmp()
    t_start = time.perf_counter()
    import torch

    from causalshift.corpus import token_sequences
    from causalshift.lens import engine
    from causalshift.lens.models import load

    imports = time.perf_counter() - t_start
    if compile is not None:
        engine.COMPILE_AFTER = 0 if compile else float("inf")
    t0 = time.perf_counter()
    lm = load(model)
    with torch.inference_mode():
        for p in lm.model.parameters():  # page the weights in: part of loading
            p.sum()
    load_s = time.perf_counter() - t0
    logs: dict[str, list[float]] = {"choose": [], "prepare": [], "batches": []}
    targets = ((engine, "choose"), (engine.LensWeights, "prepare"), (engine._BatchSink, "add"))
    originals = [
        (obj, name, _wrap_timing(obj, name, log))
        for (obj, name), log in zip(targets, logs.values(), strict=True)
    ]
    try:
        t0 = time.perf_counter()
        tokens = token_sequences(lm.tokenizer, data, num_seqs, seq_len, progress=False)
        tokenize_s = time.perf_counter() - t0
        run = engine.run_lens(lm, tokens, batch_size=batch_size, progress=False)
        total_s = time.perf_counter() - t0
    finally:
        for obj, name, original in originals:
            setattr(obj, name, original)
    t1 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, num_seqs, batch_size):
            engine.residual_stream(lm, tokens[i : i + batch_size])
    forward_s = time.perf_counter() - t1
    batches = logs["batches"]
    later = median(batches[1:]) if len(batches) > 1 else None
    setup_s = total_s - sum(batches)
    n_tok = tokens.numel()
    return {
        "model": lm.name,
        "num_seqs": num_seqs,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "imports_s": imports,
        "load_s": load_s,
        "tokenize_s": tokenize_s,
        "choose_s": sum(logs["choose"]),
        "prepare_s": sum(logs["prepare"]),
        "batch_s": batches,
        "setup_s": setup_s,
        "first_batch_extra_s": None if later is None else batches[0] - later,
        "fixed_s": setup_s + (0.0 if later is None else max(0.0, batches[0] - later)),
        "total_s": total_s,
        "tokens_per_second": n_tok / total_s,
        "forward_s": forward_s,
        "forward_tokens_per_second": n_tok / forward_s,
        "lens_share_of_time": 1 - forward_s / total_s,
        "screens": list(run.screens),
        "screen_how": run.screen_choice.how if run.screen_choice else None,
        "compiled_kernels": run.compiled,
        "compile_forced": compile,
    }


def startup(
    model: str = "gemma-3-270m", seqs: tuple[int, ...] = (1, 4, 32), seq_len: int = 128
) -> list[dict[str, Any]]:
    """`startup_probe` for each number of sequences, each in a fresh process (after one
    untimed run that warms the caches a first use fills: the probe's, inductor's), then the
    smaller sizes again with the counting kernels compiled or not, whichever the engine's
    rule did not choose (where compiling pays: `engine.COMPILE_AFTER`)."""
    warm = {"model": model, "num_seqs": 1, "seq_len": 16, "compile": True}
    in_subprocess("bench.speed:startup_probe", warm)
    rows = [
        in_subprocess(
            "bench.speed:startup_probe", {"model": model, "num_seqs": n, "seq_len": seq_len}
        )
        for n in seqs
    ]
    for r in rows[:-1]:
        other = {"model": model, "num_seqs": r["num_seqs"], "seq_len": seq_len}
        rows.append(
            in_subprocess(
                "bench.speed:startup_probe", {**other, "compile": not r["compiled_kernels"]}
            )
        )
    return rows


def fit_fixed_cost(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least-squares line total_s = fixed + per_seq x num_seqs over the startup rows: the
    intercept is the fixed cost as the issue measured it (runs of different sizes)."""
    rows = [r for r in rows if r.get("compile_forced") is None]  # the engine's own rule
    if len(rows) < 2:
        return None
    xs = [float(r["num_seqs"]) for r in rows]
    ys = [float(r["total_s"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return {"fixed_s": my - slope * mx, "per_sequence_s": slope}


# ---------------------------------------------------------------------------------------------
# The screens' kernels on the chunk shape


def kernels(
    hidden: int = 640, vocab_chunk: int = 4096, rows: tuple[int, ...] = (256, 2048), reps: int = 3
) -> dict[str, Any]:
    """Each available screen's chunk step at rows x vocab_chunk x hidden (G(FL)OP/s,
    interleaved, median of reps) and its chunk preparation (ms); the quantized kernels'
    7-bit exactness and 8-bit saturation."""
    import torch

    from causalshift.lens.probe import available
    from causalshift.lens.screen import SCREEN_NAMES, make_screen

    g = torch.Generator().manual_seed(0)
    u = torch.randn(vocab_chunk, hidden, generator=g)
    names = [n for n in SCREEN_NAMES if available(n)]
    prepare_ms, table = {}, []
    steps = {}
    for name in names:
        screen = make_screen(name, "cpu", hidden)
        t0 = time.perf_counter()
        chunk = screen.prepare_chunk(u, u.norm(dim=1), 0, vocab_chunk)
        prepare_ms[name] = 1000 * (time.perf_counter() - t0)
        steps[name] = (screen, chunk)
    for n in rows:
        h = torch.randn(n, hidden, generator=g)
        fns = {
            name: (lambda s=s, c=c, h=h: s.matmul(s.rows(h), c))
            for name, (s, c) in steps.items()
            if not (name == "int8-intmm" and n > 256)  # a reference loop without VNNI: minutes
        }
        alternate(fns, 1)  # warm-up
        times, _ = alternate(fns, reps)
        flop = 2.0 * n * vocab_chunk * hidden
        table.append({"rows": n, **{k: flop / median(v) / 1e9 for k, v in times.items()}})
    return {
        "hidden": hidden,
        "vocab_chunk": vocab_chunk,
        "reps": reps,
        "gflops": table,
        "prepare_ms": prepare_ms,
        "saturation": saturation(hidden),
    }


def saturation(hidden: int = 640) -> dict[str, Any]:
    """Largest error of each quantized-linear kernel against the exact integer products:
    rows at 7 bits (what the int8 screen sends: must be 0) and at 8 bits (u8 up to 255:
    vpmaddubsw's int16 pair sums saturate on CPUs without VNNI)."""
    import torch

    from causalshift.lens.screen import ScreenChunk, int8_kernel_works, pack_int8

    out: dict[str, Any] = {}
    w = torch.full((64, hidden), 127, dtype=torch.int8)
    w[32:] = -127
    for kernel in ("int8-onednn", "int8-fbgemm"):
        if not int8_kernel_works(kernel):
            out[kernel] = None
            continue
        packed = ScreenChunk(0, len(w), pack_int8(w, kernel), 1.0, 1.0, 1.0)
        errors = {}
        for bits, level, zero in ((7, 63, 64), (8, 127, 128)):
            q = torch.full((4, hidden), level)
            exact = (q.long() @ w.long().T).double()
            u8 = (q + zero).to(torch.uint8) if kernel == "int8-onednn" else q.float()
            errors[f"{bits}_bit"] = float((_kernel(kernel, u8, zero, packed) - exact).abs().max())
        out[kernel] = errors
    return out


def _kernel(kernel: str, rows: Any, zero: int, chunk: Any) -> Any:
    """The quantized kernel's product of rows (u8 or float integers, zero point `zero`)."""
    import torch

    if kernel == "int8-fbgemm":
        f = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        return f(rows, 1.0, zero, chunk.weight).double()
    cols = chunk.stop - chunk.start
    scale, zeros = torch.ones(cols), torch.zeros(cols, dtype=torch.long)
    f = torch.ops.onednn.qlinear_pointwise
    out = f(
        rows, 1.0, zero, chunk.weight, scale, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )
    return out.double()


def probe_record(
    hidden: int = 640,
    vocab: int = 262144,
    layers: int = 18,
    seq_len: int = 128,
    seqs: tuple[int, ...] = (1, 4, 32),
) -> dict[str, Any]:
    """The probe measured afresh (not from the cache), its seconds, and what it picks for
    runs of each number of sequences of a model of this shape."""
    from causalshift.lens import probe

    t0 = time.perf_counter()
    timings = probe.probe(hidden, 4096)
    seconds = time.perf_counter() - t0
    picks = []
    for n in seqs:
        rows = n * (seq_len - 2) * (layers + 1)
        costs = probe.estimate(timings, rows, vocab, 4096)
        picks.append({"num_seqs": n, "screens": list(probe.pick(costs)), "estimate_s": costs})
    return {
        "hidden": hidden,
        "seconds": seconds,
        "timings_ms": timings,
        "picks": picks,
        "key": probe.machine_key(hidden, 4096),
        "budget_s": probe.BUDGET_S,
    }


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--seqs", default="1,4,32")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    seqs = tuple(int(x) for x in a.seqs.split(","))
    rows = startup(a.model, seqs, a.seq_len)
    res = {
        "machine": machine(),
        "startup": rows,
        "fit": fit_fixed_cost(rows),
        "kernels": kernels(),
        "probe": probe_record(),
    }
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
