"""Fitting a tuned lens: KL(model || lens) at every layer, over the full vocabulary, in chunks.

For a position with final-layer (the model's own) next-token distribution p = softmax(z)
and a lens row with logits y = U . N(h + A h + b) (+ bias, soft-capped like the model), the
loss is KL(p || softmax(y)) = sum_v p_v log p_v - sum_v p_v y_v + logsumexp(y). Its gradient
with respect to the normed state N(.) is softmax(y) U - p U (times the soft-capping's
derivative where the model caps its logits). Neither needs a (rows x V) tensor:

- the model's side (`Teacher`) is reduced once per batch to sum p log p, logsumexp(z) and,
  without soft-capping, the d-vectors p U and the numbers p . bias, with which the cross
  term sum p y is a dot product;
- the lens side streams over vocabulary chunks (`engine.chunk_bounds`) with an online
  logsumexp: a running maximum m, s = sum exp(y - m), and G = sum exp(y - m) U_v rescaled
  whenever m grows, so logsumexp(y) = m + log s and softmax(y) U = G / s come out of one
  pass, two matmuls per chunk. The gradient is computed in the forward pass and kept for
  backward (`_LensKL`), so nothing is recomputed.

Layers are processed in groups so that a chunk's logits (layers x positions x chunk) stay
under CHUNK_ELEMENTS floats; each group's loss is backpropagated at once (its graph freed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from causalshift.lens.engine import chunk_bounds
from causalshift.lens.models import LensModel
from causalshift.lens.tuned import TunedLens

# Floats in one chunk's logits (groups of layers x positions x chunk columns): 64 MiB each;
# a few such temporaries live at once.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class Unembedding:
    """What the KL reads of the model's head, float32 on one device."""

    weight: Tensor  # U (V, d)
    bias: Tensor | None  # (V,)
    softcap: float | None
    bounds: list[tuple[int, int]]  # vocabulary chunks

    @classmethod
    def of(cls, lm: LensModel, vocab_chunk: int, device: torch.device) -> Unembedding:
        u = lm.unembed.detach().to(device=device, dtype=torch.float32)
        b = lm.unembed_bias
        bias = None if b is None else b.detach().to(device=device, dtype=torch.float32)
        return cls(u, bias, lm.softcap or None, chunk_bounds(u.shape[0], vocab_chunk))

    def logits(self, h: Tensor, c0: int, c1: int) -> tuple[Tensor, Tensor | None]:
        """Chunk c0:c1 of the (soft-capped) logits of normed states h (..., d), and the
        soft-capping's derivative there (None without it)."""
        z = h @ self.weight[c0:c1].T
        if self.bias is not None:
            z = z + self.bias[c0:c1]
        if not self.softcap:
            return z, None
        t = torch.tanh(z / self.softcap)
        return t * self.softcap, 1 - t * t


@dataclass
class Teacher:
    """The model's own next-token distribution p at n positions, reduced for the KL."""

    normed: Tensor  # (n, d) N(h_L): its logits are recomputed under soft-capping
    lse: Tensor  # (n,) logsumexp of the final logits z
    plogp: Tensor  # (n,) sum_v p_v log p_v
    pu: Tensor | None  # (n, d) sum_v p_v U_v (without soft-capping)
    pbias: Tensor | None  # (n,) sum_v p_v bias_v (without soft-capping, with a bias)


@torch.no_grad()
def teacher(normed: Tensor, head: Unembedding) -> Teacher:
    """Reduce the final layer's distribution (normed final states (n, d)) in one pass."""
    h = normed.float()
    n, d = h.shape
    m = h.new_full((n,), -math.inf)
    s, sz = h.new_zeros(n), h.new_zeros(n)
    pu = None if head.softcap else h.new_zeros(n, d)
    pb = h.new_zeros(n) if head.bias is not None and not head.softcap else None
    for c0, c1 in head.bounds:
        z, _ = head.logits(h, c0, c1)
        m_new = torch.maximum(m, z.amax(-1))
        scale = torch.exp(m - m_new)
        e = torch.exp(z - m_new[:, None])
        s = s * scale + e.sum(-1)
        sz = sz * scale + (e * z).sum(-1)
        if pu is not None:
            pu = pu * scale[:, None] + e @ head.weight[c0:c1]
        if pb is not None:
            assert head.bias is not None
            pb = pb * scale + e @ head.bias[c0:c1]
        m = m_new
    lse = m + torch.log(s)
    return Teacher(
        normed=h,
        lse=lse,
        plogp=sz / s - lse,
        pu=None if pu is None else pu / s[:, None],
        pbias=None if pb is None else pb / s,
    )


def kl_and_grad(
    hn: Tensor, target: Teacher, head: Unembedding, grad: bool = True
) -> tuple[Tensor, Tensor | None]:
    """KL(p || lens) for normed lens states hn (G, n, d) of G layers at the teacher's n
    positions: (G, n) float32, and its gradient with respect to hn (None unless grad)."""
    h = hn.float()
    g_rows, n, d = h.shape
    m = h.new_full((g_rows, n), -math.inf)
    s, cross = h.new_zeros(g_rows, n), h.new_zeros(g_rows, n)
    acc = h.new_zeros(g_rows, n, d) if grad else None  # sum exp(y - m) y' U
    pgrad = h.new_zeros(g_rows, n, d) if grad and head.softcap else None  # sum p y' U
    for c0, c1 in head.bounds:
        y, dy = head.logits(h, c0, c1)  # (G, n, c)
        m_new = torch.maximum(m, y.amax(-1))
        scale = torch.exp(m - m_new)
        e = torch.exp(y - m_new[..., None])
        s = s * scale + e.sum(-1)
        u = head.weight[c0:c1]
        if acc is not None:
            acc = acc * scale[..., None] + (e if dy is None else e * dy) @ u
        if head.softcap:  # the cross term needs p itself here
            zf, _ = head.logits(target.normed, c0, c1)
            p = torch.exp(zf - target.lse[:, None])  # (n, c)
            cross += (p * y).sum(-1)
            if pgrad is not None:
                pgrad += (p * dy) @ u
        m = m_new
    lse = m + torch.log(s)
    if not head.softcap:
        assert target.pu is not None
        cross = (h * target.pu).sum(-1)
        if target.pbias is not None:
            cross = cross + target.pbias
    kl = target.plogp - cross + lse
    if acc is None:
        return kl, None
    return kl, acc / s[..., None] - (target.pu if pgrad is None else pgrad)


class _LensKL(torch.autograd.Function):
    """kl_and_grad as an autograd function: the gradient comes with the forward pass."""

    @staticmethod
    def forward(ctx, hn: Tensor, target: Teacher, head: Unembedding) -> Tensor:  # type: ignore[override]
        kl, g = kl_and_grad(hn.detach(), target, head)
        ctx.save_for_backward(g)
        return kl

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return grad_out[..., None] * g, None, None


def lens_kl(hn: Tensor, target: Teacher, head: Unembedding) -> Tensor:
    """KL(p || lens) (G, n), differentiable with respect to hn (G, n, d)."""
    return _LensKL.apply(hn, target, head)


def layer_groups(layers: Sequence[int], positions: int, head: Unembedding) -> list[list[int]]:
    """`layers` cut into groups whose chunk logits hold at most CHUNK_ELEMENTS floats."""
    widest = max(c1 - c0 for c0, c1 in head.bounds)
    size = max(1, CHUNK_ELEMENTS // max(1, positions * widest))
    return [list(layers[i : i + size]) for i in range(0, len(layers), size)]


def batch_states(lm: LensModel, batch: Tensor, first: int) -> list[Tensor]:
    """The L+1 residual states of a batch (B, T) at positions first..T-1, as (n, d) rows
    that autograd may save (the engine captures them in inference mode)."""
    from causalshift.lens.engine import residual_stream

    states = residual_stream(lm, batch.to(lm.device))
    return [h[:, first:].reshape(-1, h.shape[-1]).clone() for h in states]


def normed_rows(
    lm: LensModel, lens: TunedLens | None, layers: list[int], hs: list[Tensor]
) -> Tensor:
    """N(translated h) of each layer in `layers`: (G, n, d); lens None is the logit lens."""
    rows = [hs[i] if lens is None else lens.translate(i, hs[i]) for i in layers]
    return torch.stack([lm.norm(h) for h in rows])


def train_step(
    lm: LensModel, lens: TunedLens, batch: Tensor, first: int, head: Unembedding
) -> Tensor:
    """Forward and backward of one batch: the sum over layers 0..L-1 of the mean KL over its
    positions, accumulated into the translators' .grad; returns each layer's mean KL (L,)."""
    hs = batch_states(lm, batch, first)
    target = teacher(lm.norm(hs[-1]).detach(), head)
    n = hs[0].shape[0]
    means = torch.zeros(lm.num_layers)
    for group in layer_groups(range(lm.num_layers), n, head):
        kl = lens_kl(normed_rows(lm, lens, group, hs), target, head)  # (G, n)
        per_layer = kl.mean(-1)
        per_layer.sum().backward()
        means[group] = per_layer.detach().cpu()
    return means


@torch.no_grad()
def held_out_kl(
    lm: LensModel,
    lens: TunedLens | None,
    tokens: Tensor,
    batch_size: int,
    head: Unembedding,
    progress: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sequence KL sums (S, L+1) and position counts (S,) of the lens on `tokens` (S, T),
    layers 0..L (row L: the model itself; zero up to rounding). lens None: the logit lens."""
    from causalshift.lens.metrics import first_position

    first = first_position(tokens, lm.bos_token_id)
    rows = list(range(lm.num_layers + 1))
    sums = torch.zeros(len(tokens), len(rows), dtype=torch.float64)
    counts = torch.zeros(len(tokens), dtype=torch.float64)
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        hs = batch_states(lm, batch, first)
        target = teacher(lm.norm(hs[-1]), head)
        n_b, n = len(batch), hs[0].shape[0]
        for group in layer_groups(rows, n, head):
            kl, _ = kl_and_grad(normed_rows(lm, lens, group, hs), target, head, grad=False)
            per_seq = kl.reshape(len(group), n_b, -1).sum(-1).T  # (B, G)
            sums[start : start + n_b, group] = per_seq.double().cpu()
        counts[start : start + n_b] = n // n_b
        if progress is not None:
            progress(n_b)
    return sums, counts
