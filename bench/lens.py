"""Logit-lens benchmarks: our engine against a plain implementation, side by side.

- `plain_lens`: what one would write first: a Hugging Face forward with every hidden
  state, float32 logits of every layer (final norm + the full lm_head matmul), torch.topk
  for the top-k match, the cosines. Reference for speed (and, with `run_lens` in float32,
  for the metrics).
- `compare`: plain vs ours float32 vs ours fast path (bf16), interleaved repetitions on
  the same sequences; the metrics' largest absolute differences; the projection's effective
  and executed GFLOP/s against the matmul peak measured in the same run.
- `scaling`: time per token as sequences, seq-len, layers and vocabulary grow.
- `memory`: peak resident memory per configuration, each in a fresh process.

    python -m bench.lens [--device cuda] [--gemma2-2b-shape] [--num-seqs 4] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import (
    alternate,
    emit,
    in_subprocess,
    machine,
    matmul_peak,
    median,
    peak_key,
    quiet_openmp,
    reset_peak_rss,
    sync,
    timed,
    vm_status,
)
from causalshift.testing import random_lens_model as random_model

# Gemma-2-2B's shape (its published config); weights are random, so the lens' metrics mean
# nothing there: only throughput is measured.
GEMMA2_2B_SHAPE = dict(
    hidden_size=2304,
    num_hidden_layers=26,
    vocab_size=256000,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    intermediate_size=9216,
    max_position_embeddings=8192,
    final_logit_softcapping=30.0,
    attn_logit_softcapping=50.0,
    query_pre_attn_scalar=256,
    sliding_window=4096,
)


# ---------------------------------------------------------------------------------------------
# Models


def random_tokens(num_seqs: int, seq_len: int, vocab: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (num_seqs, seq_len), generator=gen)


def gemma_inputs(num_seqs: int, seq_len: int, device: str = "cpu"):
    """The embedded Gemma 3 270M and `num_seqs` x `seq_len` windows of the `wiki` text."""
    from causalshift.corpus import token_sequences
    from causalshift.lens.models import load

    lm = load("gemma-3-270m", device=device)
    return lm, token_sequences(lm.tokenizer, "wiki", num_seqs, seq_len)


# ---------------------------------------------------------------------------------------------
# The plain implementation


def _hidden_states(lm, batch):
    """L+1 pre-norm residual states from a plain HF forward (output_hidden_states)."""
    from causalshift.lens.engine import residual_stream

    if getattr(getattr(lm.model, "config", None), "model_type", None) in (None, "causalshift_gpt"):
        return residual_stream(lm, batch)
    out = lm.model(input_ids=batch.to(lm.embed.device), output_hidden_states=True, use_cache=False)
    return list(out.hidden_states)


def plain_lens(lm, tokens, topk: tuple[int, ...] = (1, 5), batch_size: int = 4, seed: int = 0):
    """The plain logit lens: per layer, float32 logits over the whole vocabulary, torch.topk.

    Returns (means (L+1, M) float64 in `metric_names(topk)` order, number of positions).
    Same positions, targets and random tokens as `run_lens` (seed `seed`); the columns are
    the metric table's (`causalshift.lens.metrics.metric_table`), fed torch.topk's ranks.
    """
    import torch

    from causalshift.lens import metrics as M

    num_seqs, seq_len = tokens.shape
    s = M.first_position(tokens, lm.bos_token_id)
    vocab = lm.unembed.shape[0]
    gen = torch.Generator().manual_seed(seed)
    randoms_all = torch.randint(0, vocab, (num_seqs, seq_len - 1 - s), generator=gen)
    columns = M.metric_table(topk)
    shift = torch.tensor([c.shift_only for c in columns])
    sums = torch.zeros(lm.num_layers + 1, len(columns), dtype=torch.float64)
    counts = torch.zeros(len(columns), dtype=torch.float64)
    dev = lm.unembed.device
    with torch.inference_mode():
        U = lm.unembed.float()  # (V, d)
        E = lm.embed.float()
        bias = None if lm.unembed_bias is None else lm.unembed_bias.float()
        for start in range(0, num_seqs, batch_size):
            batch = tokens[start : start + batch_size]
            states = _hidden_states(lm, batch)
            inp = batch[:, s : seq_len - 1].reshape(-1).to(dev)  # (N,)
            out = batch[:, s + 1 :].reshape(-1).to(dev)
            rnd = randoms_all[start : start + batch_size].reshape(-1).to(dev)
            keep = (inp != out).double()
            mask = torch.where(shift.to(dev), keep[:, None], 1.0)  # (N, M)
            for layer, h in enumerate(states):
                hn = lm.norm(h[:, s : seq_len - 1]).float().reshape(len(inp), -1)  # (N, d)
                logits = hn @ U.T  # (N, V) float32
                if bias is not None:
                    logits = logits + bias
                top = torch.topk(logits, max(topk), dim=1).indices  # (N, K)
                seen = M.LensInputs(
                    states=hn,
                    input_rank=_place_in(top, inp),
                    output_rank=_place_in(top, out),
                    input_embed=E[inp],
                    output_unembed=U[out],
                    random_embed=E[rnd],
                )
                values = torch.stack([c.values(seen).double() for c in columns], 1)  # (N, M)
                sums[layer] += (values * mask).sum(0).cpu()
            counts += torch.where(shift, float(keep.sum()), float(len(inp)))
    return sums / counts, int(counts[0])


def _place_in(top, target):
    """The target's place in each row's torch.topk list (N, K), K where absent: its rank
    capped at K, as far as top-k membership goes (ties ordered as torch.topk orders them)."""
    import torch

    hit = top == target[:, None]
    return torch.where(hit.any(1), hit.int().argmax(1), top.shape[1])


def default_screens(lm, tokens, vocab_chunk: int | None = None) -> tuple[str, ...]:
    """The screens `run_lens` picks by default (`--dtype auto`) for a run over `tokens`."""
    from causalshift.lens import engine as E
    from causalshift.lens import metrics as M
    from causalshift.lens.probe import choose

    s = M.first_position(tokens, lm.bos_token_id)
    rows = tokens.shape[0] * (tokens.shape[1] - 1 - s) * (lm.num_layers + 1)
    vocab, hidden = lm.unembed.shape
    chunk = vocab_chunk or E.VOCAB_CHUNK
    return choose(
        None, lm.unembed.device, hidden, rows=rows, vocab=vocab, vocab_chunk=chunk
    ).screens


def run_means(run) -> Any:
    """(L+1, M) pooled means of a LensRun (same order as `plain_lens`)."""
    acc = run.accumulator
    return acc.sums.sum(0) / acc.counts.sum(0)


# ---------------------------------------------------------------------------------------------
# Counting what the pruned path multiplies


@contextmanager
def counting_screen_matmuls() -> Iterator[list[tuple[int, int, str]]]:
    """Record (rows, columns, screen name) of every screen matmul the engine runs."""
    from causalshift.lens.screen import Int8Screen, Screen

    seen: list[tuple[int, int, str]] = []
    originals = {cls: cls.matmul for cls in (Screen, Int8Screen)}

    def counting(original):
        def matmul(self, rows, chunk):
            out = original(self, rows, chunk)
            seen.append((out.shape[0], out.shape[1], self.name))
            return out

        return matmul

    for cls, original in originals.items():
        cls.matmul = counting(original)
    try:
        yield seen
    finally:
        for cls, original in originals.items():
            cls.matmul = original


def count_executed(lm, tokens, **kw) -> dict[str, Any]:
    """Run the lens once counting the screen matmuls: the matmul work actually done, in all
    and per screen dtype (fractions of the dense work)."""
    from causalshift.lens import engine as E

    with counting_screen_matmuls() as seen:
        run = E.run_lens(lm, tokens, progress=False, **kw)
    d, vocab = lm.unembed.shape[1], lm.unembed.shape[0]
    full = (lm.num_layers + 1) * run.num_positions * vocab
    row_cols = sum(r * c for r, c, _ in seen)
    by_screen: dict[str, float] = {}
    for r, c, dt in seen:
        by_screen[dt] = by_screen.get(dt, 0.0) + r * c / full
    return {
        "executed_flops": 2.0 * d * row_cols,
        "effective_flops": 2.0 * d * full,
        "executed_fraction": row_cols / full,
        "executed_fraction_by_screen": by_screen,
        "chunk_matmuls": len(seen),
    }


def retirement_by_layer(lm, tokens, topk: tuple[int, ...] = (1, 5), vocab_chunk: int | None = None):
    """Per layer: the share of rows that scan the whole vocabulary (never retired early), the
    share of the dense work executed, and the top-k match rates of that layer. Calls the
    engine's `decode_ranks` once per layer (vocabulary ordered as `run_lens` orders it),
    counting its screen matmuls; shows which rows the pruning cannot retire."""
    import torch

    from causalshift.lens import engine as E
    from causalshift.lens import metrics as M

    chunk = vocab_chunk or E.VOCAB_CHUNK
    screens = default_screens(lm, tokens, chunk)  # what run_lens would use on these tokens
    weights = E.LensWeights.prepare(lm, screens, chunk, first=E.by_frequency(tokens))
    n_chunks = len(weights.chunks)
    k = max(topk)
    s = M.first_position(tokens, lm.bos_token_id)
    T = tokens.shape[1]
    dev = weights.unembed_f32.device
    rows = []
    with torch.inference_mode(), counting_screen_matmuls() as seen:
        states = E.residual_stream(lm, tokens)
        inp = tokens[:, s : T - 1].reshape(-1).to(dev)
        out = tokens[:, s + 1 :].reshape(-1).to(dev)
        for layer, h in enumerate(states):
            hn = lm.norm(h[:, s : T - 1]).reshape(len(inp), -1).to(dev)
            seen.clear()
            r_in, r_out = E.decode_ranks(hn, weights, (inp, out), k)
            n = len(inp)
            at_end = seen[-1][0] if len(seen) == n_chunks else 0
            rows.append(
                {
                    "layer": layer,
                    "rows_scanning_all_vocab": at_end / n,
                    "work_executed": sum(r * c for r, c, _ in seen) / (n * weights.vocab_size),
                    f"top{k}_input": float((r_in < k).float().mean()),
                    f"top{k}_output": float((r_out < k).float().mean()),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# The comparison


def compare(
    lm,
    tokens,
    *,
    reps: int = 2,
    batch_size: int = 8,
    device: str = "cpu",
    with_plain: bool = True,
    with_float32: bool = True,
    peak: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Plain vs ours float32 vs ours bf16 vs ours fast (the default, `--dtype auto`: the int8
    screen where the CPU has int8 dot products), interleaved, on the same sequences.

    Times are wall seconds of the whole call (forward, lens and weight preparation).
    """
    fns, fast_screens = _compare_fns(lm, tokens, batch_size, with_plain, with_float32)
    times, last = alternate(fns, reps, device)
    n_tok = tokens.numel()
    positions = last["ours_fast"].num_positions
    d, vocab = lm.unembed.shape[1], lm.unembed.shape[0]
    lens_flops = (lm.num_layers + 1) * 2.0 * d * vocab * positions
    out: dict[str, Any] = {
        "model": lm.name,
        "num_seqs": int(tokens.shape[0]),
        "seq_len": int(tokens.shape[1]),
        "batch_size": batch_size,
        "tokens": n_tok,
        "positions": positions,
        "layers": lm.num_layers,
        "d_model": d,
        "vocab": vocab,
        "reps": reps,
        "fast_screens": fast_screens,
        "seconds": times,
        "median_seconds": {k: median(v) for k, v in times.items()},
        "tokens_per_second": {k: n_tok / median(v) for k, v in times.items()},
        "lens_gflop_per_token": lens_flops / positions / 1e9,
    }
    med = out["median_seconds"]
    out.update(_speedups(times, med, with_plain, with_float32))
    out.update(_agreement(last, positions, with_plain, with_float32))
    # Throughput of the projection.
    lens_seconds = {k: med[k] - med["forward_only"] for k in med if k != "forward_only"}
    out["lens_seconds_excluding_forward"] = lens_seconds
    out["effective_gflops"] = {k: lens_flops / med[k] / 1e9 for k in med if k != "forward_only"}
    from causalshift.lens.engine import LensWeights

    fast = tuple(fast_screens)
    out["weights_prepare_seconds"] = timed(lambda: LensWeights.prepare(lm, fast), device)[
        0
    ]  # order + the screens' copies of U, once per run_lens call (included in the times above)
    executed = count_executed(lm, tokens, batch_size=batch_size)
    out.update(executed)
    out["executed_gops_fast"] = executed["executed_flops"] / med["ours_fast"] / 1e9
    if peak:
        out["matmul_peak_gflops"] = peak
        main = peak.get(peak_key(fast_screens[-1]), float("nan"))  # most columns' screen
        out["effective_fraction_of_fast_peak"] = out["effective_gflops"]["ours_fast"] / main
        out["executed_fraction_of_fast_peak"] = out["executed_gops_fast"] / main
    return out


def _compare_fns(
    lm, tokens, batch_size: int, with_plain: bool, with_float32: bool
) -> tuple[dict[str, Any], list[str]]:
    """`compare`'s contestants (after a warm-up) and the default screens' dtypes."""
    import torch

    from causalshift.lens.engine import residual_stream, run_lens

    def ours(dtype):
        return lambda: run_lens(
            lm, tokens, compute_dtype=dtype, batch_size=batch_size, progress=False
        )

    from causalshift.lens import engine

    # Warm-up: compiles the kernels (the steady state of a long run; runs after it in this
    # process reuse them), touches every weight once. The fixed costs are measured apart
    # (bench/speed.py).
    limit, engine.COMPILE_AFTER = engine.COMPILE_AFTER, 0
    try:
        run_lens(lm, tokens[:1, :16], compute_dtype=torch.bfloat16, progress=False)
        run_lens(lm, tokens[:1, :16], compute_dtype=torch.float32, progress=False)
    finally:
        engine.COMPILE_AFTER = limit
    fast_screens = list(default_screens(lm, tokens))
    fns: dict[str, Any] = {}
    if with_plain:
        fns["plain"] = lambda: plain_lens(lm, tokens, batch_size=batch_size)
    if with_float32:
        fns["ours_float32"] = ours(torch.float32)
    if fast_screens != ["bfloat16"]:
        fns["ours_bf16"] = ours(torch.bfloat16)
    fns["ours_fast"] = ours(None)

    def forward_only():
        with torch.inference_mode():
            for i in range(0, len(tokens), batch_size):
                residual_stream(lm, tokens[i : i + batch_size])

    fns["forward_only"] = forward_only
    return fns, fast_screens


def _speedups(times, med, with_plain: bool, with_float32: bool) -> dict[str, Any]:
    """Ratios of median seconds between `compare`'s contestants."""
    out: dict[str, Any] = {}
    if with_plain:
        out["speedup_fast_vs_plain"] = med["plain"] / med["ours_fast"]
        # ratio of each repetition's pair (they ran next to each other)
        out["speedup_fast_vs_plain_per_rep"] = [
            p / b for p, b in zip(times["plain"], times["ours_fast"], strict=True)
        ]
    if "ours_bf16" in med:
        out["speedup_fast_vs_bf16"] = med["ours_bf16"] / med["ours_fast"]
    if with_float32:
        out["speedup_fast_vs_float32"] = med["ours_float32"] / med["ours_fast"]
    if with_plain and with_float32:
        out["speedup_float32_vs_plain"] = med["plain"] / med["ours_float32"]
    return out


def _agreement(last, positions: int, with_plain: bool, with_float32: bool) -> dict[str, Any]:
    """How far the metrics of `compare`'s contestants are apart (their last repetition)."""
    out: dict[str, Any] = {}
    fast = run_means(last["ours_fast"])
    names = last["ours_fast"].accumulator.names
    if with_float32:
        ref = run_means(last["ours_float32"])
        out["max_abs_diff_fast_vs_float32"] = float((fast - ref).abs().max())
        out["max_abs_diff_by_metric"] = dict(
            zip(names, (fast - ref).abs().amax(0).tolist(), strict=True)
        )
        if "ours_bf16" in last:
            bf16 = run_means(last["ours_bf16"])
            out["max_abs_diff_bf16_vs_float32"] = float((bf16 - ref).abs().max())
        # A top-k mean moves by 1/positions per position whose hit flips: how many flipped.
        out["flipped_positions_fast_vs_float32"] = {
            n: round(float((fast - ref)[:, i].abs().max()) * positions)
            for i, n in enumerate(names)
            if n.startswith("top")
        }
    if with_plain:
        plain, plain_positions = last["plain"]
        assert plain_positions == positions
        if with_float32:
            out["max_abs_diff_plain_vs_float32"] = float((plain - ref).abs().max())
        out["max_abs_diff_fast_vs_plain"] = float((fast - plain).abs().max())
    return out


def chunk_layout(
    d: int = 640, vocab: int = 262144, rows: int = 512, chunk: int = 16384, reps: int = 3
) -> dict[str, Any]:
    """Micro-benchmark behind a proposal for the engine: the chunk matmul with U^T stored
    (d, V) and sliced by columns (strided, as the engine does) vs U stored (V, d) and sliced by
    rows (contiguous; multiplied as its transpose). bf16, same shapes, interleaved."""
    import torch

    gen = torch.Generator().manual_seed(0)
    u = torch.randn(vocab, d, generator=gen).to(torch.bfloat16)
    u_t = u.T.contiguous()  # (d, V)
    h = torch.randn(rows, d, generator=gen).to(torch.bfloat16)
    bounds = [(c, min(c + chunk, vocab)) for c in range(0, vocab, chunk)]

    def cols():
        for c0, c1 in bounds:
            h @ u_t[:, c0:c1]

    def rows_t():
        for c0, c1 in bounds:
            h @ u[c0:c1].T

    times, _ = alternate({"column_slice_of_UT": cols, "row_slice_of_U": rows_t}, reps)
    flops = 2.0 * rows * d * vocab
    return {
        "rows": rows,
        "chunk": chunk,
        "gflops": {k: flops / median(v) / 1e9 for k, v in times.items()},
        "speedup_row_slice": median(times["column_slice_of_UT"]) / median(times["row_slice_of_U"]),
    }


# ---------------------------------------------------------------------------------------------
# Scaling and memory


def time_fast_path(lm, tokens, batch_size: int = 8, reps: int = 1, device: str = "cpu") -> float:
    """Median wall seconds of `run_lens` (bf16 fast path) on `tokens`."""
    from causalshift.lens.engine import run_lens

    run_lens(lm, tokens[:1, :8], progress=False)  # warm-up
    ts = [
        timed(lambda: run_lens(lm, tokens, batch_size=batch_size, progress=False), device)[0]
        for _ in range(reps)
    ]
    return median(ts)


def scaling(
    lm,
    tokens,
    *,
    seqs: tuple[int, ...] = (1, 2, 4),
    seq_lens: tuple[int, ...] = (32, 64, 128),
    base_len: int = 64,
    layers: tuple[int, ...] = (6, 12, 24),
    vocabs: tuple[int, ...] = (32768, 131072, 262144),
    hidden: int = 640,
    random_tokens_shape: tuple[int, int] = (2, 64),
    device: str = "cpu",
) -> dict[str, list[dict[str, Any]]]:
    """Fast-path time as the work grows: sequences and seq-len on the real model `lm`
    (`tokens` must hold max(seqs) x max(seq_lens)); layers and vocabulary on random Llamas of
    width `hidden` (random weights retire rows sooner than a trained model's: the forward and
    the first chunks dominate there)."""
    out: dict[str, list[dict[str, Any]]] = {"seqs": [], "seq_len": [], "layers": [], "vocab": []}
    for n in seqs:
        t = tokens[:n, :base_len]
        sec = time_fast_path(lm, t, device=device)
        out["seqs"].append(
            {
                "num_seqs": n,
                "seq_len": base_len,
                "seconds": sec,
                "ms_per_token": 1e3 * sec / t.numel(),
            }
        )
    for T in seq_lens:
        t = tokens[:1, :T]
        sec = time_fast_path(lm, t, device=device)
        out["seq_len"].append(
            {"num_seqs": 1, "seq_len": T, "seconds": sec, "ms_per_token": 1e3 * sec / t.numel()}
        )
    S, T = random_tokens_shape
    for L in layers:
        m = random_model(hidden=hidden, layers=L, vocab=vocabs[0], device=device)
        t = random_tokens(S, T, vocabs[0])
        sec = time_fast_path(m, t, device=device)
        out["layers"].append(
            {"layers": L, "vocab": vocabs[0], "seconds": sec, "ms_per_token": 1e3 * sec / t.numel()}
        )
        del m
    for V in vocabs:
        m = random_model(hidden=hidden, layers=layers[0], vocab=V, device=device)
        t = random_tokens(S, T, V)
        sec = time_fast_path(m, t, device=device)
        out["vocab"].append(
            {"layers": layers[0], "vocab": V, "seconds": sec, "ms_per_token": 1e3 * sec / t.numel()}
        )
        del m
    return out


def memory_probe(
    model: str = "random",
    num_seqs: int = 4,
    seq_len: int = 64,
    batch_size: int = 4,
    layers: int = 6,
    vocab: int = 32768,
    hidden: int = 640,
) -> dict[str, Any]:
    """Run in a fresh process (see `in_subprocess`): load, then one fast-path run; report the
    resident memory after loading and the peak (VmHWM) after it (reset once loaded, so the
    peak of loading itself does not count)."""
    quiet_openmp()
    from causalshift.lens.engine import run_lens

    if model == "gemma-3-270m":
        lm, tokens = gemma_inputs(num_seqs, seq_len)
    else:
        lm = random_model(hidden=hidden, layers=layers, vocab=vocab)
        tokens = random_tokens(num_seqs, seq_len, vocab)
    _touch(lm)
    peak_reset = reset_peak_rss()  # the peak of loading is not the lens' working set
    loaded = vm_status()
    t0 = time.perf_counter()
    run_lens(lm, tokens, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t0
    peak = vm_status()
    mib = 1 / 2**20
    return {
        "model": model,
        "layers": lm.num_layers,
        "vocab": lm.unembed.shape[0],
        "num_seqs": num_seqs,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "rss_after_load_mib": loaded.get("VmRSS", 0) * mib,
        "peak_rss_mib": peak.get("VmHWM", 0) * mib,
        "working_set_mib": (peak.get("VmHWM", 0) - loaded.get("VmRSS", 0)) * mib,
        "seconds": seconds,
        "peak_reset": peak_reset,
    }


def _touch(lm) -> None:
    """Make every weight resident (safetensors maps them lazily), so that the RSS after
    loading counts the whole model and the working set is the lens' own."""
    import torch

    with torch.inference_mode():
        for p in lm.model.parameters():
            p.sum()


def weights_memory_probe(vocab: int = 262144, hidden: int = 640) -> dict[str, Any]:
    """Peak memory and time of `LensWeights.prepare` (ordering the vocabulary, the default
    screens' copy of U built a chunk at a time), in a fresh process."""
    quiet_openmp()
    from causalshift.lens.engine import LensWeights
    from causalshift.lens.probe import choose

    lm = random_model(hidden=hidden, layers=1, vocab=vocab)
    _touch(lm)
    screens = choose(None, "cpu", hidden, rows=32 * 127 * 19, vocab=vocab).screens  # make run
    peak_reset = reset_peak_rss()
    base = vm_status()
    t0 = time.perf_counter()
    w = LensWeights.prepare(lm, screens)
    seconds = time.perf_counter() - t0
    peak = vm_status()
    mib = 1 / 2**20
    return {
        "vocab": vocab,
        "d_model": hidden,
        "screens": "+".join(s.name for s in w.screens),
        "copy_mib": sum(
            (c.stop - c.start) * hidden * w.screens[k].dtype.itemsize
            for c, k in zip(w.chunks, w.chunk_screen, strict=True)
        )
        * mib,
        "extra_peak_mib": (peak.get("VmHWM", 0) - base.get("VmRSS", 0)) * mib,
        "seconds": seconds,
        "peak_reset": peak_reset,
    }


def memory(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`memory_probe` for each config, each in its own process."""
    return [in_subprocess("bench.lens:memory_probe", c) for c in configs]


# ---------------------------------------------------------------------------------------------
# GPU path: a model of Gemma-2-2B's shape


def gemma2_2b_shape(
    device: str = "cuda", num_seqs: int = 16, seq_len: int = 256, batch_size: int = 8, reps: int = 2
) -> dict[str, Any]:
    """Fast-path throughput on random weights of Gemma-2-2B's shape (bf16 weights on CUDA),
    and the lens projection's effective GFLOP/s against the bf16 matmul peak measured here.
    Only throughput means anything (the metrics of random weights do not)."""
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    lm = random_model("gemma2", device=device, dtype=dtype, **GEMMA2_2B_SHAPE)
    tokens = random_tokens(num_seqs, seq_len, GEMMA2_2B_SHAPE["vocab_size"])
    size = (8192, 8192, 8192) if device.startswith("cuda") else (2048, 2048, 2048)
    peak = matmul_peak(("bfloat16",), size=size, device=device)
    res = compare(
        lm,
        tokens,
        reps=reps,
        batch_size=batch_size,
        device=device,
        with_plain=False,
        with_float32=False,
        peak=peak,
    )
    sync(device)
    return res


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-seqs", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument(
        "--gemma2-2b-shape",
        action="store_true",
        help="random weights of Gemma-2-2B's shape instead of Gemma 3 270M",
    )
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.gemma2_2b_shape:
        res = gemma2_2b_shape(args.device, args.num_seqs, args.seq_len, args.batch_size, args.reps)
    else:
        peak = matmul_peak(device=args.device)
        lm, tokens = gemma_inputs(args.num_seqs, args.seq_len, args.device)
        res = compare(
            lm, tokens, reps=args.reps, batch_size=args.batch_size, device=args.device, peak=peak
        )
    res["machine"] = machine(args.device)
    emit(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
