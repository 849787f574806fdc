"""Shared helpers for the benchmarks: machine facts, interleaved timing, matmul peak, peak RSS.

Every comparison in bench/ is measured side by side in one process: the contenders run in
alternating order (`alternate`), and the reports use medians and ratios, never one absolute
time. Peak memory is measured in a fresh subprocess per configuration (`in_subprocess`),
reading the kernel's high-water mark of resident memory (VmHWM in /proc/self/status).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning, as `causalshift train` sets it.

    Must run before torch is imported to take effect; a no-op afterwards.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo) or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The bf16- and int8-relevant ISA flags this CPU reports."""
    from causalshift.runtime import cpu_flags as flags

    have = flags()
    wanted = (
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
        "amx_tile",
    )
    return [f for f in wanted if f in have]


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels dispatch to (AVX2, AVX512, ...)."""
    from causalshift.runtime import cpu_capability as capability

    return capability()


def isa_env() -> dict[str, str]:
    """The variables that lower the ISA torch, oneDNN and MKL use (an emulated CPU class)."""
    from causalshift.lens.probe import ISA_VARIABLES

    return {v: os.environ[v] for v in ISA_VARIABLES if v in os.environ}


def machine(device: str = "cpu") -> dict[str, Any]:
    """What the measurements ran on: CPU/GPU, threads, library versions, load average."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": cpu_capability(),
        "isa_env": isa_env(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    info.update(provenance())
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def provenance() -> dict[str, Any]:
    """The git commit and whether the lens engine / trainer files differ from it (numbers
    belong to the code they measured), plus a short hash of the engine file."""
    import hashlib

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
        return run.stdout

    out: dict[str, Any] = {}
    try:
        out["git_commit"] = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "src").split("\n")
        out["uncommitted_src"] = sorted(ln[3:] for ln in dirty if ln.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    engine = REPO / "src" / "causalshift" / "lens" / "engine.py"
    if engine.is_file():
        out["engine_sha256"] = hashlib.sha256(engine.read_bytes()).hexdigest()[:12]
    return out


def sync(device: str) -> None:
    """Wait for queued GPU work (timings on CUDA are otherwise meaningless)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """(seconds, result) of one call, synchronizing the device around it."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def alternate(
    fns: dict[str, Callable[[], Any]], reps: int, device: str = "cpu"
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every contender `reps` times in interleaved order (the starting contender rotates
    each round so none always runs first). Returns per-name seconds and each one's last result.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, Any] = {}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            dt, last[n] = timed(fns[n], device)
            times[n].append(dt)
    return times, last


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> str:
    """'median (min-max)' of a list of seconds, for the docs."""
    return f"{median(xs):.3g} s ({min(xs):.3g}-{max(xs):.3g})"


def matmul_peak(
    dtypes: tuple[str, ...] = ("bfloat16", "float32", "int8", "int8-onednn", "int8-fbgemm"),
    size: tuple[int, int, int] = (2048, 2048, 2048),
    reps: int = 5,
    device: str = "cpu",
) -> dict[str, float]:
    """Measured GFLOP/s (int8: GOP/s of `torch._int_mm`; int8-onednn / int8-fbgemm: of the
    quantized-linear kernels the int8 screen can use, 7-bit u8 rows x s8 weights as the
    screen runs them; CPU only, where available) of (m, k) @ (k, n) per dtype, interleaved;
    the best of `reps` (a peak, so the least-disturbed repetition is the right estimate)."""
    import torch

    m, k, n = size
    gen = torch.Generator().manual_seed(0)
    fns = {}
    for d in dtypes:
        if d.startswith("int8"):
            if device != "cpu":
                continue
            fn = _int8_matmul(d, m, k, n, gen)
            if fn is not None:
                fns[d] = fn
        else:
            a = torch.randn(m, k, generator=gen).to(device=device, dtype=getattr(torch, d))
            b = torch.randn(k, n, generator=gen).to(device=device, dtype=getattr(torch, d))
            fns[d] = lambda a=a, b=b: torch.mm(a, b)
    alternate(fns, 1, device)  # warm-up
    times, _ = alternate(fns, reps, device)
    return {d: 2 * m * k * n / min(ts) / 1e9 for d, ts in times.items()}


def peak_key(screen: str) -> str:
    """The `matmul_peak` entry of a lens screen (its matmul's kernel)."""
    return "int8" if screen == "int8-intmm" else screen


def _int8_matmul(name: str, m: int, k: int, n: int, gen: Any) -> Callable[[], Any] | None:
    """One (m, k) x (k, n) int8 product through kernel `name` (None where unavailable)."""
    import torch

    from causalshift.lens.screen import ScreenChunk, ScreenRows, int8_kernel_works, make_screen

    if name == "int8":
        a = torch.randint(-127, 128, (m, k), generator=gen, dtype=torch.int8)
        b = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        return lambda: torch._int_mm(a, b.T)
    if not int8_kernel_works(name):
        return None
    from causalshift.lens.screen import _as_kernel_rows, pack_int8

    screen = make_screen(name, "cpu", k)
    q = torch.randint(-63, 64, (m, k), generator=gen)
    rows = ScreenRows(_as_kernel_rows(q, name), q[:, 0].float(), q[:, 0].float())
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    chunk = ScreenChunk(0, n, pack_int8(w, name), 1.0, 1.0, 1.0)
    return lambda: screen.matmul(rows, chunk)


# ---------------------------------------------------------------------------------------------
# Peak memory: one fresh process per configuration


def vm_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of this process in bytes (Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs), so that a
    later VmHWM is the peak of what ran after this call. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def in_subprocess(target: str, kwargs: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Call `module:function(**kwargs)` in a fresh Python and return its JSON-able dict.

    The function reports its own memory marks (see `vm_status`); a fresh process makes the
    high-water mark belong to this configuration alone.
    """
    cmd = [sys.executable, "-m", "bench.common", target, json.dumps(kwargs)]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{target}({kwargs}) failed ({proc.returncode}): {' | '.join(tail)}")
    return json.loads(lines[-1])


def _call_from_argv(argv: list[str]) -> None:
    module, _, func = argv[0].partition(":")
    kwargs = json.loads(argv[1]) if len(argv) > 1 else {}
    result = getattr(importlib.import_module(module), func)(**kwargs)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Markdown


def emit(res: dict[str, Any], out: str | None = None) -> None:
    """Print a benchmark's result as JSON, and write it to `out` (atomically) when given."""
    text = json.dumps(res, indent=1)
    if out:
        from causalshift.io import write_text

        write_text(out, text + "\n")
    print(text)


def md_table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    """A GitHub markdown table of `rows` (floats shown with 3-4 significant digits)."""
    if not rows:
        return "(no rows)\n"
    cols = cols or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # nan
                return "-"
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _call_from_argv(sys.argv[1:])
