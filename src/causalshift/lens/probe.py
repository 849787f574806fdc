"""Which lens screen runs: measured on this machine, not guessed from CPU flags.

Which screen is fastest depends on the CPU and on the torch build in ways its flags do not
tell: on an AVX-512 VNNI EPYC `torch._int_mm` and bf16 matmuls win; on an AVX2-only EPYC
`torch._int_mm` is a reference loop (about 2 GOP/s) and bf16 runs at a tenth of float32,
while oneDNN's and FBGEMM's quantized int8 GEMMs run about twice float32. `probe` times
each available screen on the lens's own chunk shape (PROBE_ROWS rows x the vocabulary chunk
x the model's width: preparing a chunk, then quantizing rows and multiplying them, median of
PROBE_REPS after a warm-up) and caches the timings in the cache folder, keyed by the CPU
(model name, a hash of its flags, the ISA torch dispatches to), the torch version, the
thread count, the chunk and a bucket of the hidden size, so later runs on the same machine
pay nothing (a probe taken while the load average exceeds the CPU count is used for its run
but not cached; delete the cache file to measure again). Screens more than DROP_SLOWER times
slower than the best on a small shape are not timed at full size (they would cost the probe
most of its time), and full-size timings stop after BUDGET_S seconds (under 0.3 s in all on
an idle machine).

`choose` turns the timings into the screens of one run (`ScreenChoice`): the screen with
the lowest estimated cost for the run's size (preparing every chunk once, plus the chunk
matmuls that the pruned lens executes, about WORK_FRACTION of the dense work), where a
screen other than float32 must beat float32 by PREFER_MARGIN (its wider band re-scores more
entries). A forced `--dtype` never probes.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from causalshift import runtime
from causalshift.cache import cache_dir
from causalshift.errors import UserError
from causalshift.io import read_json_object, write_json
from causalshift.lens.screen import (
    FLOAT_SCREENS,
    INT8_KERNELS,
    SCREEN_NAMES,
    ScreenRows,
    int8_kernel_works,
    make_screen,
    screen_name,
)

PROBE_ROWS = 256  # rows of the timed chunk matmul (runs see thousands early, hundreds later)
PROBE_REPS = 3
SMALL_SHAPE = (64, 1024)  # rows x columns of the first, cheap look at every screen
DROP_SLOWER = 3.0
# the fastest int8 kernel is timed at full size unless this much slower on the small shape
INT8_SLACK = 8.0
BUDGET_S = 0.25  # full-size timings stop once the probe has run this long
PREFER_MARGIN = 0.9  # another screen is chosen over float32 only below 0.9x its cost
# Share of the dense (rows x vocabulary) work that the pruned lens multiplies: 25% on Gemma 3
# 270M over wiki text (docs/benchmarks.md), fewer where rows retire sooner.
WORK_FRACTION = 0.25
CACHE_FILE = "screen-probe-v1.json"
# Environment variables that change which kernels torch runs (part of the cache key).
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


@dataclass
class ScreenChoice:
    """The screens of one run and why: `screens` in vocabulary order (an int8 screen comes
    after the float screen that takes the first columns, see `engine.INT8_AFTER`)."""

    screens: tuple[str, ...]
    how: str  # "probe", "probe (cached)", "--dtype", "gpu"
    timings_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    probe_seconds: float = 0.0
    key: dict[str, Any] = field(default_factory=dict)
    estimate_s: dict[str, float] = field(default_factory=dict)  # each plan's estimated cost

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["screens"] = list(self.screens)
        return out


# ---------------------------------------------------------------------------------------------
# The machine


def hidden_bucket(hidden: int) -> int:
    """The power of two at or above `hidden`: one probe serves widths of the same bucket."""
    return 1 << max(0, math.ceil(math.log2(max(1, hidden))))


def machine_key(hidden: int, vocab_chunk: int) -> dict[str, Any]:
    """What the timings depend on: CPU, its flags, the ISA torch uses, torch, threads,
    the chunk shape (works without /proc/cpuinfo: macOS and ARM have no flags line)."""
    flags = " ".join(sorted(runtime.cpu_flags()))
    return {
        "cpu": runtime.cpu_model(),
        "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:12],
        "capability": runtime.cpu_capability(),
        "isa_env": {v: os.environ[v] for v in ISA_VARIABLES if v in os.environ},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "hidden_bucket": hidden_bucket(hidden),
        "vocab_chunk": vocab_chunk,
    }


def _key_text(key: dict[str, Any]) -> str:
    return "|".join(f"{k}={key[k]}" for k in sorted(key))


def available(name: str) -> bool:
    """Whether this machine and torch build run screen `name` (bf16 and float32 always)."""
    if name in FLOAT_SCREENS:
        return True
    if name == "int8-intmm":
        return runtime.int_mm_works()
    return int8_kernel_works(name)


# ---------------------------------------------------------------------------------------------
# Timing


def _screen_step(name: str, u: torch.Tensor, h: torch.Tensor) -> tuple[float, Any]:
    """Screen `name` with chunk u (Vc, d) prepared: (ms it took to prepare, a function that
    quantizes rows h (n, d) and multiplies them by the chunk)."""
    screen = make_screen(name, "cpu", u.shape[1])
    norms = u.norm(dim=1)
    t0 = time.perf_counter()
    chunk = screen.prepare_chunk(u, norms, 0, len(u))
    prepare = 1000 * (time.perf_counter() - t0)

    def step() -> None:
        rows: ScreenRows = screen.rows(h)
        screen.matmul(rows, chunk)

    return prepare, step


def _times_ms(fn: Any, reps: int, give_up: float = math.inf) -> list[float]:
    """Wall milliseconds of up to reps calls of fn; stops once two calls were slower than
    give_up (one slow call may be another process's doing)."""
    times: list[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
        if sum(t > give_up for t in times) >= 2:
            break
    return times


def probe(hidden: int, vocab_chunk: int) -> dict[str, dict[str, Any]]:
    """Time every available screen on (PROBE_ROWS x vocab_chunk x hidden) random data:
    {name: {"prepare": ms, "matmul": ms}} or {name: {"skipped": why}}.

    First a cheap look at each on SMALL_SHAPE (the best of up to 3 calls, 2 for a screen
    DROP_SLOWER times slower than the best so far: `torch._int_mm` without VNNI would take
    the probe's whole budget), then those within DROP_SLOWER of the best, fastest first, and
    float32 at full size (preparing a chunk once, the median of PROBE_REPS calls after a
    warm-up) until BUDGET_S seconds have passed (the fastest, float32, the reference, and
    the fastest int8 kernel always are)."""
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    u = torch.randn(vocab_chunk, hidden, generator=g)
    h = torch.randn(PROBE_ROWS, hidden, generator=g)
    out: dict[str, dict[str, Any]] = {}
    small: dict[str, float] = {}
    rows, cols = min(SMALL_SHAPE[0], PROBE_ROWS), min(SMALL_SHAPE[1], vocab_chunk)
    for name in SCREEN_NAMES:
        if not available(name):
            out[name] = {"skipped": "not available in this torch build or on this CPU"}
            continue
        best = min(small.values(), default=math.inf)
        step = _screen_step(name, u[:cols], h[:rows])[1]
        small[name] = min(_times_ms(step, 3, DROP_SLOWER * best))
    first = min(small, key=small.__getitem__)
    best = small[first]
    # timed whatever the budget: the fastest, float32 (the reference), and the fastest int8
    # kernel (the small shape favours float32: the int8 kernels' fixed costs weigh more there)
    int8 = [n for n in sorted(small, key=small.__getitem__) if n in INT8_KERNELS]
    always = {first, "float32", *int8[:1]}
    for name in sorted(small, key=small.__getitem__):
        limit = INT8_SLACK if name in always else DROP_SLOWER
        if name != "float32" and small[name] > limit * best:
            out[name] = {"skipped": f"{small[name] / best:.1f}x the fastest on {rows} x {cols}"}
        elif name not in always and time.perf_counter() - t_start > BUDGET_S:
            out[name] = {"skipped": f"probe budget ({BUDGET_S} s) spent on faster screens"}
        else:
            prepare, step = _screen_step(name, u, h)
            step()  # warm-up: first-call costs (kernel selection, buffers) are not the screen's
            out[name] = {
                "prepare": prepare,
                "matmul": statistics.median(_times_ms(step, PROBE_REPS)),
            }
    return {name: out[name] for name in SCREEN_NAMES}


# ---------------------------------------------------------------------------------------------
# The cache


def cached_probe(hidden: int, vocab_chunk: int) -> tuple[dict[str, Any], float, bool]:
    """(timings, seconds the probe took, whether they came from the cache)."""
    key = machine_key(hidden, vocab_chunk)
    path = cache_dir("probe") / CACHE_FILE
    text = _key_text(key)
    try:
        known = read_json_object(path, "the screen probe cache") if path.is_file() else {}
    except Exception:  # noqa: BLE001 - a damaged cache is measured again, not an error
        known = {}
    entry = known.get(text)
    if isinstance(entry, dict) and isinstance(entry.get("timings_ms"), dict):
        return entry["timings_ms"], float(entry.get("seconds", 0.0)), True
    t0 = time.perf_counter()
    timings = probe(hidden, vocab_chunk)
    seconds = time.perf_counter() - t0
    if machine_busy():  # timings taken while other processes ran are used once, not kept
        return timings, seconds, False
    known[text] = {"key": key, "timings_ms": timings, "seconds": seconds, "date": time.ctime()}
    try:
        write_json(path, known)
    except OSError:  # a read-only cache costs a probe per run, nothing else
        pass
    return timings, seconds, False


def machine_busy() -> bool:
    """True when the 1-minute load average exceeds the number of CPUs (other processes were
    running: the probe's timings are not the machine's); False where there is no load
    average (Windows)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return False


# ---------------------------------------------------------------------------------------------
# The choice


def forced_screens(name: str | torch.dtype) -> tuple[str, ...]:
    """The screens `--dtype name` (or a torch.dtype) asks for, without probing: an int8
    screen comes after the CPU's float screen (bf16 with bf16 matmul, else float32); `int8`
    is the int8 kernel this CPU has (`torch._int_mm` with VNNI/AMX, else oneDNN's, else
    FBGEMM's quantized GEMM)."""
    if isinstance(name, str) and name == "int8":
        name = default_int8_kernel()
    screen = screen_name(name)
    if screen in INT8_KERNELS:
        if not available(screen):
            raise UserError(
                f"--dtype {screen}: this kernel does not run on this machine or torch build "
                "(use auto, which measures what does)"
            )
        return (screen_name(runtime.cpu_float_screen()), screen)
    return (screen,)


def default_int8_kernel() -> str:
    """The int8 kernel `--dtype int8` uses: from the CPU's facts, not a measurement."""
    if runtime.cpu_has_int8():
        return "int8-intmm"
    for kernel in ("int8-onednn", "int8-fbgemm"):
        if int8_kernel_works(kernel):
            return kernel
    return "int8-intmm"


def estimate(
    timings: dict[str, dict[str, Any]], rows: int, vocab: int, vocab_chunk: int
) -> dict[str, float]:
    """Estimated seconds of each timed screen for a run decoding `rows` rows over `vocab`
    columns: every chunk prepared once, WORK_FRACTION of the dense work multiplied."""
    chunks = max(1, math.ceil(vocab / vocab_chunk))
    matmuls = chunks * WORK_FRACTION * rows / PROBE_ROWS
    return {
        name: (chunks * t["prepare"] + matmuls * t["matmul"]) / 1000
        for name, t in timings.items()
        if "matmul" in t
    }


def pick(costs: dict[str, float]) -> tuple[str, ...]:
    """The screens of the cheapest plan: float32 unless another is below PREFER_MARGIN of
    its cost; an int8 screen comes with the cheapest float screen for the first columns."""
    if not costs:
        return ("float32",)
    best = min(costs, key=costs.__getitem__)
    if "float32" in costs and best != "float32" and costs[best] > PREFER_MARGIN * costs["float32"]:
        best = "float32"
    if best in INT8_KERNELS:
        floats = {n: c for n, c in costs.items() if n in FLOAT_SCREENS}
        companion = min(floats, key=floats.__getitem__) if floats else "float32"
        return (companion, best)
    return (best,)


def choose(
    dtype: str | torch.dtype | None,
    device: torch.device | str,
    hidden: int,
    *,
    rows: int = 10**6,
    vocab: int = 262144,
    vocab_chunk: int = 4096,
) -> ScreenChoice:
    """The screens of one run. dtype: None or "auto" (GPU: bf16; CPU: measured), a screen
    name, "int8", or a torch.dtype (forced: never probes). rows and vocab size the run
    (rows = positions x (layers + 1)) for the estimate that picks the screen."""
    on_gpu = torch.device(device).type != "cpu"
    if dtype is not None and dtype != "auto":
        if on_gpu and forced_screens(dtype)[-1] in INT8_KERNELS:
            raise ValueError("the int8 screen runs on CPU only (use bfloat16 on GPUs)")
        return ScreenChoice(forced_screens(dtype), "--dtype")
    if on_gpu:
        return ScreenChoice(("bfloat16",), "gpu")
    timings, seconds, cached = cached_probe(hidden, vocab_chunk)
    costs = estimate(timings, rows, vocab, vocab_chunk)
    return ScreenChoice(
        pick(costs),
        "probe (cached)" if cached else "probe",
        timings,
        0.0 if cached else round(seconds, 4),
        machine_key(hidden, vocab_chunk),
        {n: round(c, 4) for n, c in costs.items()},
    )
