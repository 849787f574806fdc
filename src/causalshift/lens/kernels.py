"""Elementwise passes of the lens over a chunk's screen logits, fused by torch.compile on CPU.

Eager PyTorch materializes every float copy and boolean mask of these, a pass over memory
each; compiled, each is one pass over z (about 20x faster on CPU). Compiling costs seconds
in every process, though (importing inductor alone takes 1-3 s), so the engine compiles
only for runs large enough to win it back (`engine.COMPILE_AFTER`); small runs, GPUs, and
machines where compilation is unavailable (no C++ compiler) run them eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def count_above(z: Tensor, thresholds: Tensor) -> Tensor:
    """For each row and threshold j: how many columns of z (n, Vc) are strictly above
    thresholds (n, J), compared in float32 (z may be bf16). Returns (n, J) int32.

    One reduction per threshold (unrolled when compiled): on CPU a single (n, J, Vc)
    comparison would materialize J times the chunk.
    """
    zf = z.float()
    above = [
        (zf > thresholds[:, j : j + 1]).sum(-1, dtype=torch.int32)
        for j in range(thresholds.shape[1])
    ]
    return torch.stack(above, dim=1)


def band_mask(z: Tensor, sel: Tensor, lo: Tensor, hi: Tensor, own: Tensor) -> Tensor:
    """The entries of rows sel of z (n, Vc) inside their row's band (lo, hi] (m,), the
    target's own column own (m,) left out: (m, Vc) bool."""
    zf = z.index_select(0, sel).float()
    cols = torch.arange(z.shape[1], device=z.device)
    return (zf > lo[:, None]) & (zf <= hi[:, None]) & (cols != own[:, None])


# Band entries are found in two steps: a count per block of this many columns (a reduction,
# fast when compiled), then an exact look at the few blocks that have any.
BAND_BLOCK = 256


def band_blocks(z: Tensor, sel: Tensor, lo: Tensor, hi: Tensor, own: Tensor) -> Tensor:
    """`band_mask` counted per block of BAND_BLOCK columns: (m, Vc / BAND_BLOCK) int32."""
    inside = band_mask(z, sel, lo, hi, own)
    return inside.reshape(len(sel), -1, BAND_BLOCK).sum(-1, dtype=torch.int32)


def band_entries(
    z: Tensor,
    sel: Tensor,
    lo: Tensor,
    hi: Tensor,
    own: Tensor,
    blocks_fn: Callable[..., Tensor] = band_blocks,
) -> tuple[Tensor, Tensor]:
    """(index into sel, column) of the entries `band_mask` selects, without writing the
    (m, Vc) mask when Vc is a multiple of BAND_BLOCK (the band holds few entries)."""
    n_cols = z.shape[1]
    if n_cols % BAND_BLOCK:
        return band_mask(z, sel, lo, hi, own).nonzero(as_tuple=True)
    br, bb = blocks_fn(z, sel, lo, hi, own).nonzero(as_tuple=True)  # (p,) each
    vals = z.view(z.shape[0], -1, BAND_BLOCK)[sel[br], bb].float()  # (p, BAND_BLOCK)
    cols = bb[:, None] * BAND_BLOCK + torch.arange(BAND_BLOCK, device=z.device)  # (p, G)
    inside = (vals > lo[br, None]) & (vals <= hi[br, None]) & (cols != own[br, None])
    pr, off = inside.nonzero(as_tuple=True)
    return br[pr], cols[pr, off]


_compiled: dict[str, Callable[..., Tensor]] = {}


def compiled_cpu(fn: Callable[..., Tensor], *example: Tensor) -> Callable[..., Tensor]:
    """fn fused into one pass over its inputs by torch.compile, compiled once per process;
    fn itself when compilation is unavailable (e.g. no C++ compiler).

    Inputs with a dimension of 0 or 1 run eagerly: dynamo specializes such sizes, and each
    new specialization (times each dtype) would compile again, for seconds, until its
    recompile limit sends every later call to eager mode.
    """
    if fn.__name__ not in _compiled:
        try:
            compiled = torch.compile(fn, dynamic=True)
            compiled(*example)
        except Exception:  # noqa: BLE001 - any compiler failure falls back to eager
            compiled = None

        def run(*args: Tensor) -> Tensor:
            if compiled is None or any(n < 2 for t in args for n in t.shape):
                return fn(*args)
            return compiled(*args)

        run.compiled = compiled  # type: ignore[attr-defined]
        _compiled[fn.__name__] = run
    return _compiled[fn.__name__]


def compiled_already() -> bool:
    """True once this process has compiled the kernels (later runs get them for free)."""
    return any(fn.compiled is not None for fn in _compiled.values())


def kernels_for(
    device: torch.device, dtype: torch.dtype, compiled: bool = True
) -> tuple[Callable[..., Tensor], ...]:
    """(count_above, band_blocks): compiled on CPU when `compiled` (eager PyTorch
    materializes every float copy and boolean mask); eager elsewhere."""
    if device.type != "cpu" or not compiled:
        return count_above, band_blocks
    z = torch.zeros(3, 2 * BAND_BLOCK, dtype=dtype)
    idx, lo, hi = torch.tensor([0, 2]), torch.zeros(2), torch.ones(2)
    return (
        compiled_cpu(count_above, z, torch.zeros(3, 4)),
        compiled_cpu(band_blocks, z, idx, lo, hi, idx),
    )


def quantize(x: Tensor, step: Tensor, levels: int = 127) -> tuple[Tensor, Tensor]:
    """int8 q = round(x / step) clamped to +-levels, and the float32 error norm |x - step q|
    of each row; x (n, d) float32, step (n,) (one per row) or 0-d (one for all).

    Eager, in place on one temporary: a chunk of U is quantized once per run, rows once per
    batch, both cheap next to the matmuls, and compiling it would cost more than it saves
    in every run (docs/benchmarks.md, "fixed cost")."""
    s = step[:, None] if step.dim() == 1 else step
    t = torch.div(x, s).round_().clamp_(-levels, levels)
    q = t.to(torch.int8)
    return q, t.mul_(s).sub_(x).norm(dim=1)
