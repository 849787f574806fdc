"""Screening matmuls: cheap approximate lens logits with a rigorous error bound per entry.

The lens only needs, for each row h and target t, how many vocabulary entries v have a logit
h . U_v strictly above the target's float32 logit tau. A screen computes the logits of a
chunk of the vocabulary in a cheaper dtype (bf16 on CPUs with native bf16 and on GPUs; int8,
`Int8Screen` below, on CPUs with int8 dot products) together with a bound on their error:
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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from causalshift.lens.kernels import quantize_fn

SAFETY = 1.01


@dataclass
class ScreenChunk:
    """One chunk of the ordered vocabulary, prepared for the screen matmul."""

    start: int
    stop: int
    weight: Tensor  # (Vc, d) U^ in the screen dtype, contiguous
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


def make_screen(dtype: torch.dtype, device: torch.device | str, hidden: int) -> Screen | Int8Screen:
    """The screen for a dtype: Int8Screen for torch.int8, else Screen."""
    if dtype == torch.int8:
        return Int8Screen(hidden, device)
    return Screen(dtype, device)


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
    def output_dtype(self) -> torch.dtype:
        """dtype of `matmul`'s output."""
        return self.dtype

    @property
    def unit_roundoff(self) -> float:
        """Largest relative error of rounding a float32 to the screen dtype."""
        return 2.0**-8 if self.dtype == torch.bfloat16 else 0.0

    def prepare_chunk(self, rows: Tensor, norm: Tensor, start: int, stop: int) -> ScreenChunk:
        """Chunk of ordered rows of U (Vc, d) (float32, or the weights' dtype; may be a
        reused buffer) and their float32 norms |U_v| (Vc,) -> ScreenChunk.

        |U_v - U^_v| <= u |U_v| (u the unit roundoff: every element is rounded to nearest;
        bf16 keeps float32's exponent range, so only float32 subnormals, below 2^-126, can
        lose more: at most 2^-134 each) and |U^_v| <= (1 + u) |U_v|, so e_v needs no pass
        over the rows. One bound per chunk (its largest |U_v|) keeps the count kernel a
        plain comparison; the vocabulary is mostly ordered by |U_v|, so it is tight.
        """
        w = rows.to(self.dtype, copy=True)
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
    """An int8 screen (CPU): integer dot products, faster than the bf16 matmul with VNNI.

    Residual streams have outlier channels (max |h_j| ~ 10x the RMS), which would make
    int8 steps coarse; both h and U are first rotated by a block Hadamard transform H (blocks
    of B = ROTATION_BLOCK dims, or the largest power of two dividing d): x = H h, y_v = H U_v,
    and x . y_v = B (h . U_v) exactly, while the outliers are spread over their block. Each
    row x is quantized with its own step s_h (max |x_j| = 127 s_h), each chunk of y with one
    step s_C, and the screen computes the integer z = q_h . q_v exactly (int32). With
    x~ and y~ the float32 rotations (error at most kappa |x|, kappa |y_v|: B-term sums),

        |B (h . U_v) - s_h s_C z| <= a' |y_v| + b (e_v + kappa |y_v|)

    with a' = |x~ - s_h q_h| + kappa |x|, b = |s_h q_h|, e_v = |y~_v - s_C q_v|, and
    |y_v| = sqrt(B) |U_v|. The band also covers the float32 rounding of the reference logit
    (rho = d 2^-23 of |h| |U_v|, as in Screen), of z's conversion to float32 and of the
    thresholds themselves; thresholds are returned in units of z. Models whose unembedding
    has a bias use Screen instead.
    """

    ROTATION_BLOCK = 32  # errors at 32 are within 10% of 128's on Gemma 3, at a quarter the cost
    dtype = torch.int8
    output_dtype = torch.int32

    def __init__(self, hidden: int, device: torch.device | str = "cpu") -> None:
        if torch.device(device).type != "cpu":
            raise ValueError("the int8 screen runs on CPU only (use bfloat16 on GPUs)")
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

    def rotate(self, x: Tensor) -> Tensor:
        """(n, d) float32 -> (n, d): each block of B dims multiplied by H."""
        if self.block == 1:
            return x
        return (x.reshape(-1, self.block) @ self.hadamard).reshape(x.shape)

    def prepare_chunk(self, rows: Tensor, norm: Tensor, start: int, stop: int) -> ScreenChunk:
        """Rotate and quantize a chunk of U (Vc, d) with one step for the chunk.

        norm_max bounds |y_v| = sqrt(B) |U_v| (the norms, float32, get SAFETY's slack);
        err_max bounds e_v + kappa |y_v| (the float32 computation of e_v, whose products
        step q are rounded, gets 2^-22 |y| more); hat_max bounds |s_C q_v|.
        """
        y = self.rotate(rows.float())
        lo, hi = torch.aminmax(y)  # chunks are never empty
        top = max(-float(lo), float(hi))
        step = torch.tensor(top / 127 if top > 0 else 1.0)
        q, err = quantize_fn()(y, step)
        y_max = float(norm.max()) * SAFETY * self.block**0.5 * (1 + 2.0**-20)
        e_bound = SAFETY * float(err.max()) + (self.kappa + 2.0**-22) * y_max
        return ScreenChunk(start, stop, q, y_max, e_bound, y_max + e_bound, float(step))

    def rows(self, h: Tensor) -> ScreenRows:
        """Rotate and quantize float32 rows (n, d), each with its own step."""
        x = self.rotate(h)
        top = x.abs().amax(dim=1)  # (n,)
        step = torch.where(top > 0, top / 127, torch.ones_like(top))
        q, err = quantize_fn()(x, step)
        x_norm = h.norm(dim=1) * (self.block**0.5 * SAFETY)  # >= |x| (exact rotation)
        a = SAFETY * err + (self.kappa + 2.0**-22) * x_norm
        b = SAFETY * (q.float() * step[:, None]).norm(dim=1) + 2.0**-22 * x_norm
        return ScreenRows(q, a, b, step, x_norm)

    def matmul(self, rows: ScreenRows, chunk: ScreenChunk) -> Tensor:
        """(n, Vc) int32 dot products of the quantized rows, valid until the next call."""
        w = chunk.weight
        out = self.scratch.take(rows.q.shape[0], w.shape[0], torch.int32, w.device)
        return torch._int_mm(rows.q, w.T, out=out)

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
        return torch.cat([(target + err) / unit, (target - err) / unit], dim=1)
