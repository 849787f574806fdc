"""Screening matmuls: cheap approximate lens logits with a rigorous error bound per entry.

The lens only needs, for each row h and target t, how many vocabulary entries v have a logit
h . U_v strictly above the target's float32 logit tau. A screen computes the logits of a
chunk of the vocabulary in a cheaper dtype (bf16 on CPUs with native bf16 and on GPUs)
together with a bound on their error: entries above tau + B_v are certainly above, entries at
or below tau - B_v certainly not, and only the few in between are computed again exactly in
float32 (see `engine.decode_ranks`). The ranks are therefore the float32 ranks.

With h^ = h rounded to the screen dtype and U^_v = U_v rounded,

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


@dataclass
class ScreenRows:
    """Rows of normed states prepared for the screen (a is computed exactly)."""

    q: Tensor  # (n, d) h^ in the screen dtype
    err: Tensor  # (n,) a = |h - h^|
    hat_norm: Tensor  # (n,) b = |h^|

    def take(self, index: Tensor) -> ScreenRows:
        return ScreenRows(self.q[index], self.err[index], self.hat_norm[index])


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

    @property
    def unit_roundoff(self) -> float:
        """Largest relative error of rounding a float32 to the screen dtype."""
        return 2.0**-8 if self.dtype == torch.bfloat16 else 0.0

    def prepare_chunk(self, w: Tensor, norm: Tensor, start: int, stop: int) -> ScreenChunk:
        """Chunk of ordered rows already rounded to the screen dtype, w (Vc, d), and their
        float32 norms |U_v| (Vc,) -> ScreenChunk.

        |U_v - U^_v| <= u |U_v| (u the unit roundoff: every element is rounded to nearest;
        bf16 keeps float32's exponent range, so only float32 subnormals, below 2^-126, can
        lose more: at most 2^-134 each) and |U^_v| <= (1 + u) |U_v|, so e_v needs no pass
        over the rows. One bound per chunk (its largest |U_v|) keeps the count kernel a
        plain comparison; the vocabulary is mostly ordered by |U_v|, so it is tight.
        """
        u = self.unit_roundoff
        d = w.shape[1]
        rho = self.arithmetic + d * 2.0**-23
        tiny = d**0.5 * 2.0**-134 if u else 0.0
        n = float(norm.max()) * SAFETY  # norms were computed in float32: a little slack
        hat = (1 + u) * n + tiny
        return ScreenChunk(start, stop, w.contiguous(), n, u * n + tiny + rho * hat, hat)

    def rows(self, h: Tensor) -> ScreenRows:
        """Prepare float32 rows (n, d)."""
        q = h.to(self.dtype)
        hat = q.float()
        return ScreenRows(q, (h - hat).norm(dim=1), hat.norm(dim=1))

    def matmul(self, rows: ScreenRows, chunk: ScreenChunk) -> Tensor:
        """(n, Vc) approximate logits."""
        return rows.q @ chunk.weight.T

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
