"""Screening matmuls: cheap approximate lens logits with a rigorous error bound per entry.

The lens only needs, for each row h and target t, how many vocabulary entries v have a logit
h . U_v strictly above the target's float32 logit tau. A screen computes the logits of a
chunk of the vocabulary in a cheaper dtype (bf16 on CPUs with native bf16 and on GPUs; int8,
`Int8Screen` below, through one of three integer kernels) together with a bound on their error:
entries above tau + B_v are certainly above, entries at or below tau - B_v certainly not,
and only the few in between are computed again exactly in float32 (see
`engine.decode_ranks`). The ranks are therefore the float32 ranks.

For `Screen` (bf16, float32), with h^ = h rounded to the screen dtype and U^_v = U_v rounded,

    h . U_v - h^ . U^_v = (h - h^) . U_v + h^ . (U_v - U^_v)
    |...| <= a |U_v| + b e_v,   a = |h - h^|,  b = |h^|,  e_v >= |U_v - U^_v| + rho |U^_v|

(Cauchy-Schwarz; e_v = (u + rho (1 + u)) |U_v| with u = 2^-8, bf16's unit roundoff),
where rho covers the matmul's arithmetic: float32 accumulation of d
products (d 2^-23) plus, on GPUs, TF32 (float32 screen, 2^-10) or reduced-precision
reductions (bf16, 2^-8). The output itself is rounded to the screen dtype (relative error
r = 2^-8 for bf16): near the band |z| <= |tau| + a |U_v| + b e_v, so the band is widened by
r (1 + 2^-7) times that (the derivation for either sign of z is in docs/method.md).
Every bound is multiplied by SAFETY against the float32 rounding of the bound itself.

Screens have names (`SCREEN_NAMES`: what `--dtype` forces and results.json's `lens_screens`
records); which one runs by default is measured on the machine (`lens/probe.py`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from causalshift.lens.kernels import quantize

SAFETY = 1.01

# The integer kernels of the int8 screen (screen name -> what runs the chunk matmul).
INT8_KERNELS = {
    "int8-intmm": "torch._int_mm (fast with AVX-512 VNNI / AMX; a reference loop elsewhere)",
    "int8-onednn": "oneDNN's quantized linear (torch.ops.onednn.qlinear_pointwise)",
    "int8-fbgemm": "FBGEMM's quantized linear (torch.ops.quantized, fbgemm engine)",
}
FLOAT_SCREENS = ("float32", "bfloat16")
SCREEN_NAMES = FLOAT_SCREENS + tuple(INT8_KERNELS)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8-intmm"}


def screen_name(screen: str | torch.dtype) -> str:
    """A screen's name from its name or dtype (torch.int8: the `torch._int_mm` screen)."""
    if isinstance(screen, torch.dtype):
        if screen not in _DTYPE_NAMES:
            raise ValueError(f"no lens screen for {screen} (float32, bfloat16, int8)")
        return _DTYPE_NAMES[screen]
    if screen not in SCREEN_NAMES:
        raise ValueError(f"unknown lens screen {screen!r} ({', '.join(SCREEN_NAMES)})")
    return screen


@dataclass
class ScreenChunk:
    """One chunk of the ordered vocabulary, prepared for the screen matmul."""

    start: int
    stop: int
    weight: Any  # (Vc, d) U^ in the screen dtype, contiguous; int8 kernels: their packing
    norm_max: float  # N = max |U_v| over the chunk
    err_max: float  # E = max e_v >= |U_v - U^_v| + rho |U^_v| over the chunk
    hat_max: float  # max |U^_v| over the chunk
    step: float = 1.0  # int8: the chunk's quantization step s_C


@dataclass
class ScreenRows:
    """Rows of normed states prepared for the screen (a is computed exactly)."""

    q: Tensor  # (n, d) h^ in the screen dtype
    err: Tensor  # (n,) a = |h - h^| (int8: of the rotated row, see Int8Screen)
    hat_norm: Tensor  # (n,) b = |h^|
    scale: Tensor | None = None  # (n,) int8: the row's quantization step s_h
    norm: Tensor | None = None  # (n,) int8: a bound on |x| = sqrt(B) |h|

    def take(self, index: Tensor) -> ScreenRows:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return ScreenRows(
            self.q[index], self.err[index], self.hat_norm[index], pick(self.scale), pick(self.norm)
        )


class _Scratch:
    """One output buffer reused by every chunk matmul (grown when needed): a fresh tensor of
    tens of MB per chunk is page-faulted in each time, which costs the int8 matmul much of its
    speed (docs/benchmarks.md). The previous chunk's logits are dead by then."""

    def __init__(self) -> None:
        self.buf: Tensor | None = None

    def take(self, n: int, m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        if self.buf is None or self.buf.numel() < n * m or self.buf.dtype != dtype:
            self.buf = torch.empty(n * m, dtype=dtype, device=device)
        return self.buf[: n * m].view(n, m)


def make_screen(
    screen: str | torch.dtype, device: torch.device | str, hidden: int
) -> Screen | Int8Screen:
    """The screen of a name (`SCREEN_NAMES`) or dtype: Int8Screen for the int8 kernels."""
    name = screen_name(screen)
    if name in INT8_KERNELS:
        return Int8Screen(hidden, device, kernel=name)
    return Screen(getattr(torch, name), device)


class Screen:
    """Approximate logits h^ . U^_v of one vocabulary chunk, and their error bound."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"no lens screen for {dtype} (bfloat16, float32)")
        self.dtype = dtype
        on_gpu = torch.device(device).type != "cpu"
        # Arithmetic beyond float32 accumulation, relative to |h^| |U^_v|: none on CPUs; on
        # GPUs TF32 (float32) or reduced-precision reductions (16-bit dtypes).
        self.arithmetic = (2.0**-10 if dtype == torch.float32 else 2.0**-8) if on_gpu else 0.0
        # Rounding of the output to the screen dtype, relative to the output.
        self.output_rounding = 0.0 if dtype == torch.float32 else 2.0**-8
        self.scratch = _Scratch()

    @property
    def name(self) -> str:
        """The screen's name (`SCREEN_NAMES`)."""
        return screen_name(self.dtype)

    @property
    def output_dtype(self) -> torch.dtype:
        """dtype of `matmul`'s output."""
        return self.dtype

    @property
    def unit_roundoff(self) -> float:
        """Largest relative error of rounding a float32 to the screen dtype."""
        return 2.0**-8 if self.dtype == torch.bfloat16 else 0.0

    def prepare_chunk(
        self, rows: Tensor, norm: Tensor, start: int, stop: int, own: bool = False
    ) -> ScreenChunk:
        """Chunk of ordered rows of U (Vc, d) (float32, or the weights' dtype; may be a
        reused buffer, unless `own`: then they are kept when already in the screen's dtype)
        and their float32 norms |U_v| (Vc,) -> ScreenChunk.

        |U_v - U^_v| <= u |U_v| (u the unit roundoff: every element is rounded to nearest;
        bf16 keeps float32's exponent range, so only float32 subnormals, below 2^-126, can
        lose more: at most 2^-134 each) and |U^_v| <= (1 + u) |U_v|, so e_v needs no pass
        over the rows. One bound per chunk (its largest |U_v|) keeps the count kernel a
        plain comparison; the vocabulary is mostly ordered by |U_v|, so it is tight.
        """
        w = rows if own and rows.dtype == self.dtype else rows.to(self.dtype, copy=True)
        u = self.unit_roundoff
        d = w.shape[1]
        rho = self.arithmetic + d * 2.0**-23
        tiny = d**0.5 * 2.0**-134 if u else 0.0
        n = float(norm.max()) * SAFETY  # norms were computed in float32: a little slack
        hat = (1 + u) * n + tiny
        return ScreenChunk(start, stop, w, n, u * n + tiny + rho * hat, hat)

    def rows(self, h: Tensor) -> ScreenRows:
        """Prepare float32 rows (n, d)."""
        q = h.to(self.dtype)
        hat = q.float()
        return ScreenRows(q, (h - hat).norm(dim=1), hat.norm(dim=1))

    def matmul(self, rows: ScreenRows, chunk: ScreenChunk) -> Tensor:
        """(n, Vc) approximate logits, valid until the next call (a reused buffer)."""
        w = chunk.weight
        out = self.scratch.take(rows.q.shape[0], w.shape[0], self.dtype, w.device)
        return torch.mm(rows.q, w.T, out=out)

    def thresholds(
        self, tau: Tensor, rows: ScreenRows, chunk: ScreenChunk, biased: bool = False
    ) -> Tensor:
        """The band around each target logit tau (n, J) over one chunk: (n, 2J), J "hi"
        thresholds (an entry above is certainly above tau) then J "lo" ones (an entry at or
        below is certainly not).

        B = a N + b E (the error of the product), widened for the output's rounding r:
        B (1 + r) + r |tau| (near the band |z| <= |tau| + B), or, when a bias was added to
        the output after the matmul (|tau| no longer bounds the product), B + r b |U^|max.
        """
        r = self.output_rounding * (1 + 2.0**-7)
        a, b = rows.err[:, None], rows.hat_norm[:, None]  # (n, 1)
        err = a * chunk.norm_max + b * chunk.err_max
        if biased:
            err = err + r * b * chunk.hat_max
        else:
            err = err * (1 + r) + r * tau.abs()
        err = err * SAFETY
        return torch.cat([tau + err, tau - err], dim=1)


def hadamard(block: int) -> Tensor:
    """The (block, block) Sylvester Hadamard matrix of +-1 (block a power of two):
    H H^T = block I."""
    h = torch.ones(1, 1)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


class Int8Screen:
    """An int8 screen (CPU): integer dot products, through one of `INT8_KERNELS`.

    Residual streams have outlier channels (max |h_j| ~ 10x the RMS), which would make
    int8 steps coarse; both h and U are first rotated by a block Hadamard transform H (blocks
    of B = ROTATION_BLOCK dims, or the largest power of two dividing d): x = H h, y_v = H U_v,
    and x . y_v = B (h . U_v) exactly, while the outliers are spread over their block. Each
    row x is quantized with its own step s_h (max |x_j| = levels s_h), each chunk of y with
    one step s_C (max |y| = 127 s_C), and the screen computes the integer z = q_h . q_v
    exactly. With x~ and y~ the float32 rotations (error at most kappa |x|, kappa |y_v|:
    B-term sums),

        |B (h . U_v) - s_h s_C z| <= a' |y_v| + b (e_v + kappa |y_v|)

    with a' = |x~ - s_h q_h| + kappa |x|, b = |s_h q_h|, e_v = |y~_v - s_C q_v|, and
    |y_v| = sqrt(B) |U_v|. The band also covers the float32 rounding of the reference logit
    (rho = d 2^-23 of |h| |U_v|, as in Screen), of z's conversion to float32 and of the
    thresholds themselves; thresholds are returned in units of z. Models whose unembedding
    has a bias use Screen instead.

    Kernels: `torch._int_mm` (int8-intmm) multiplies s8 x s8 into int32, rows at 8 bits
    (levels 127). PyTorch's quantized linear kernels (int8-onednn, int8-fbgemm) multiply u8
    activations by s8 weights; on CPUs without VNNI both use vpmaddubsw, which adds two u8 x s8
    products into a *saturating* int16 (2 x 255 x 127 > 32767: an 8-bit row of 255s against
    127s comes out wrong by millions, seen on an AVX2 EPYC). Rows are therefore kept to 7 bits
    there: q_h in [-63, 63], sent as u8 = q_h + 64 <= 127 with zero point 64 and scale 1, so
    every pair sums to at most 2 x 127 x 127 = 32258 and the int32 result is exact. Their
    output is float32: the exact integer minus 64 colsum(q_v), converted and scaled (by 1) in
    float32, off by a few roundings of values below d x 127 x 191 (`conversion`, in units
    of z, added to the band).
    """

    ROTATION_BLOCK = 32  # errors at 32 are within 10% of 128's on Gemma 3, at a quarter the cost
    dtype = torch.int8
    ZERO_POINT = 64  # u8 = q_h + 64 for the quantized-linear kernels (7-bit rows)

    def __init__(
        self, hidden: int, device: torch.device | str = "cpu", kernel: str = "int8-intmm"
    ) -> None:
        if torch.device(device).type != "cpu":
            raise ValueError("the int8 screen runs on CPU only (use bfloat16 on GPUs)")
        if kernel not in INT8_KERNELS:
            raise ValueError(f"unknown int8 kernel {kernel!r} ({', '.join(INT8_KERNELS)})")
        self.name = kernel
        self.levels = 127 if kernel == "int8-intmm" else 63
        self.output_dtype = torch.int32 if kernel == "int8-intmm" else torch.float32
        # quantized linear: a few float32 roundings of |acc| <= d 127 127 and of the zero
        # point's 64 colsum <= d 64 127, in units of z (0 for _int_mm: z is the exact int32)
        self.conversion = 0.0 if kernel == "int8-intmm" else 8 * 2.0**-24 * hidden * 127 * 191
        block = 1
        while block < self.ROTATION_BLOCK and hidden % (2 * block) == 0:
            block *= 2
        self.block = block
        self.hadamard = hadamard(block)
        # float32 rotation: every output is a sum of B terms +-x_j, error <= gamma_B sum |x_j|,
        # so |x~ - x| <= gamma_B B |x_block| = gamma_B sqrt(B) |x| (x = H h, |x| = sqrt(B) |h|)
        self.kappa = 1.01 * block**1.5 * 2.0**-24
        self.rho = hidden * 2.0**-23  # float32 accumulation of the reference logits
        self.scratch = _Scratch()
        self._ones: dict[int, tuple[Tensor, Tensor]] = {}

    def rotate(self, x: Tensor) -> Tensor:
        """(n, d) float32 -> (n, d): each block of B dims multiplied by H."""
        if self.block == 1:
            return x
        return (x.reshape(-1, self.block) @ self.hadamard).reshape(x.shape)

    def prepare_chunk(
        self, rows: Tensor, norm: Tensor, start: int, stop: int, own: bool = False
    ) -> ScreenChunk:
        """Rotate and quantize a chunk of U (Vc, d) with one step for the chunk, then pack it
        for the kernel (`own` does not matter: the rows are always copied).

        norm_max bounds |y_v| = sqrt(B) |U_v| (the norms, float32, get SAFETY's slack);
        err_max bounds e_v + kappa |y_v| (the float32 computation of e_v, whose products
        step q are rounded, gets 2^-22 |y| more); hat_max bounds |s_C q_v|.
        """
        y = self.rotate(rows.float())
        lo, hi = torch.aminmax(y)  # chunks are never empty
        top = max(-float(lo), float(hi))
        step = torch.tensor(top / 127 if top > 0 else 1.0)
        q, err = quantize(y, step, 127)
        y_max = float(norm.max()) * SAFETY * self.block**0.5 * (1 + 2.0**-20)
        e_bound = SAFETY * float(err.max()) + (self.kappa + 2.0**-22) * y_max
        weight = pack_int8(q, self.name)
        return ScreenChunk(start, stop, weight, y_max, e_bound, y_max + e_bound, float(step))

    def rows(self, h: Tensor) -> ScreenRows:
        """Rotate and quantize float32 rows (n, d), each with its own step."""
        x = self.rotate(h)
        top = x.abs().amax(dim=1)  # (n,)
        step = torch.where(top > 0, top / self.levels, torch.ones_like(top))
        q, err = quantize(x, step, self.levels)
        x_norm = h.norm(dim=1) * (self.block**0.5 * SAFETY)  # >= |x| (exact rotation)
        a = SAFETY * err + (self.kappa + 2.0**-22) * x_norm
        b = SAFETY * (q.float() * step[:, None]).norm(dim=1) + 2.0**-22 * x_norm
        return ScreenRows(_as_kernel_rows(q, self.name), a, b, step, x_norm)

    def matmul(self, rows: ScreenRows, chunk: ScreenChunk) -> Tensor:
        """(n, Vc) dot products of the quantized rows (int32, or float32 holding integers
        for the quantized-linear kernels), valid until the next call."""
        w = chunk.weight
        n, cols = rows.q.shape[0], chunk.stop - chunk.start
        if self.name == "int8-intmm":
            out = self.scratch.take(n, cols, torch.int32, w.device)
            return torch._int_mm(rows.q, w.T, out=out)
        if self.name == "int8-fbgemm":
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                rows.q, 1.0, self.ZERO_POINT, w
            )
        if cols not in self._ones:
            self._ones[cols] = (torch.ones(cols), torch.zeros(cols, dtype=torch.long))
        scale, zero = self._ones[cols]
        qlinear = torch.ops.onednn.qlinear_pointwise
        # x scale 1, zero point 64; per-column weight scales 1, zero points 0; no bias;
        # float32 output with scale 1; no post-op
        return qlinear(
            rows.q,
            1.0,
            self.ZERO_POINT,
            w,
            scale,
            zero,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )

    def thresholds(
        self, tau: Tensor, rows: ScreenRows, chunk: ScreenChunk, biased: bool = False
    ) -> Tensor:
        """The band around each target's float32 logit tau (n, J), in units of z: (n, 2J),
        J "hi" thresholds then J "lo" ones, as `Screen.thresholds`."""
        if biased:
            raise ValueError("the int8 screen does not handle an unembedding bias")
        assert rows.scale is not None and rows.norm is not None
        y, e, s_c = chunk.norm_max, chunk.err_max, chunk.step
        a, b, x = rows.err[:, None], rows.hat_norm[:, None], rows.norm[:, None]  # (n, 1)
        err = a * y + b * e  # the screen's error against B (h . U_v)
        err = err + self.rho * x * y  # the reference logit's rounding, times B
        err = err + 2.0**-23 * b * (y + e)  # z -> float32 when |z| > 2^24
        target = tau * self.block  # exact: B is a power of two
        err = SAFETY * (err + 2.0**-20 * target.abs())  # and the thresholds' own rounding
        unit = rows.scale[:, None] * s_c  # (n, 1) one unit of z in logits x B
        hi, lo = (target + err) / unit, (target - err) / unit
        if self.conversion:  # the kernel's float32 output, off by at most this many units
            hi, lo = hi + self.conversion * SAFETY, lo - self.conversion * SAFETY
        return torch.cat([hi, lo], dim=1)


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    """torch.backends.quantized.engine set to `name` for the block (packing reads it)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def pack_int8(q: Tensor, kernel: str) -> Any:
    """int8 (Vc, d) rows of U in the layout `kernel`'s matmul takes (scale 1, zero point 0)."""
    if kernel == "int8-intmm":
        return q
    if kernel == "int8-onednn":
        return torch.ops.onednn.qlinear_prepack(q, None)
    with warnings.catch_warnings(), _quantized_engine("fbgemm"):
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, the kernels are not
        qt = torch._make_per_tensor_quantized_tensor(q, 1.0, 0)
        return torch.ops.quantized.linear_prepack(qt, None)


@functools.cache
def int8_kernel_works(kernel: str) -> bool:
    """True when this torch build runs `kernel` and its products are exact on a check made
    to saturate: 7-bit rows at their extremes against +-127 weights (pairs summing to
    2 x 127 x 127), and random values. False where the kernel is missing (ARM, macOS, a build
    without FBGEMM or oneDNN) or wrong."""
    if kernel not in INT8_KERNELS:
        return False
    engine = {"int8-fbgemm": "fbgemm", "int8-onednn": "onednn"}.get(kernel)
    if engine is not None and engine not in torch.backends.quantized.supported_engines:
        return False
    try:
        d = 64
        screen = Int8Screen(d, "cpu", kernel)
        g = torch.Generator().manual_seed(0)
        w = torch.randint(-127, 128, (48, d), generator=g, dtype=torch.int8)
        w[:8] = 127
        w[8:16] = -127
        q = torch.randint(-screen.levels, screen.levels + 1, (6, d), generator=g)
        q[0], q[1] = screen.levels, -screen.levels
        rows = ScreenRows(_as_kernel_rows(q, kernel), q[:, 0].float(), q[:, 0].float())
        chunk = ScreenChunk(0, len(w), pack_int8(w, kernel), 1.0, 1.0, 1.0)
        got = screen.matmul(rows, chunk)
        return bool(torch.equal(got.long(), q.long() @ w.long().T))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _as_kernel_rows(q: Tensor, kernel: str) -> Tensor:
    """Integer rows (n, d) in the form `kernel`'s matmul takes: int8 for _int_mm; for oneDNN
    u8 = q + 64 (in [1, 127]: 7-bit rows); for FBGEMM float32 integers, which the kernel
    quantizes itself with scale 1 and zero point 64 (exactly: they are integers)."""
    if kernel == "int8-onednn":
        return (q.to(torch.int16) + Int8Screen.ZERO_POINT).to(torch.uint8)
    if kernel == "int8-fbgemm":
        return q.float()
    return q.to(torch.int8)
