"""Streaming logit-lens accumulation over batches of sequences.

For each batch: one forward pass records the residual stream entering block 1 (layer 0) and
after every block (layers 1..L) through hooks, stopping before the final norm and lm_head.
Every layer is normed, all layers' positions are projected onto the vocabulary together in
column chunks (so no [layers x positions x V] tensor ever exists, and positions retire as
soon as their top-k is decided), and reduced at once to per-sequence sums.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from causalshift.lens import metrics as M
from causalshift.lens.models import LensModel

COSINE_METRICS = ("cos_input", "cos_output", "cos_random", "projection")


def metric_names(topk: tuple[int, ...]) -> list[str]:
    """Metric columns in result order: top-k input/output for each k, then the cosines."""
    names = [f"top{k}_{side}" for k in topk for side in ("input", "output")]
    return names + list(COSINE_METRICS)


@dataclass
class LensAccumulator:
    """Per-sequence sums and counts: (S, L+1, M) sums, (S, M) position counts."""

    num_layers: int
    topk: tuple[int, ...]
    num_seqs: int
    sums: Tensor = field(init=False)
    counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.names = metric_names(self.topk)
        shape = (self.num_seqs, self.num_layers + 1, len(self.names))
        self.sums = torch.zeros(shape, dtype=torch.float64)
        self.counts = torch.zeros(self.num_seqs, len(self.names), dtype=torch.float64)

    def layer_summary(self) -> list[dict]:
        """One dict per layer: each metric's mean and its 95% interval."""
        rows = []
        for layer in range(self.num_layers + 1):
            row: dict = {"layer": layer}
            ci = {}
            for m, name in enumerate(self.names):
                mean, lo, hi = M.mean_ci95(self.sums[:, layer, m], self.counts[:, m])
                row[name] = mean
                ci[name] = [lo, hi]
            row["ci95"] = ci
            rows.append(row)
        return rows


class _StopForward(Exception):
    """Raised by the last block's hook: the lens needs nothing after it."""


@contextmanager
def capture_residual_stream(lm: LensModel) -> Iterator[list[Tensor]]:
    """Hooks that collect [layer 0, ..., layer L] residual states (B, T, d) during a forward."""
    states: list[Tensor] = []
    last = len(lm.blocks) - 1

    def before_first(_module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        states.append(h.detach())

    def after(index: int):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            states.append(h.detach())
            if index == last:
                raise _StopForward

        return hook

    handles = [lm.blocks[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [b.register_forward_hook(after(i)) for i, b in enumerate(lm.blocks)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def residual_stream(lm: LensModel, input_ids: Tensor) -> list[Tensor]:
    """The L+1 residual states of a batch (B, T) -> list of (B, T, d)."""
    first_device = lm.embed.device
    with capture_residual_stream(lm) as states:
        try:
            lm.model(input_ids=input_ids.to(first_device), use_cache=False)
        except _StopForward:
            pass
        except TypeError:  # causalshift GPT: forward(idx)
            states.clear()
            try:
                lm.model(input_ids.to(first_device))
            except _StopForward:
                pass
    if len(states) != lm.num_layers + 1:
        raise RuntimeError(f"captured {len(states)} residual states, expected {lm.num_layers + 1}")
    return states


@dataclass
class LensWeights:
    """The matrices of one model prepared once for the lens (compute dtype, one device).

    The vocabulary is reordered by decreasing |U_v|: large logits come early, and the norm of
    the first entry of a chunk bounds every logit from there on (see `decode_ranks`).
    """

    unembed_t: Tensor  # (d, V) U^T in sorted order, contiguous, in the lens compute dtype
    unembed_bias: Tensor | None  # (V,) sorted order, compute dtype
    position: Tensor  # (V,) token id -> column in the sorted order
    norm_from: Tensor  # (V+1,) float32: max |U_v| over sorted columns c.. (0 at the end)
    bias_from: Tensor | None  # (V+1,) float32: max bias over sorted columns c..
    embed_f32: Tensor  # (V, d) float32 W_E for input-side cosines (token order)
    unembed_f32: Tensor  # (V, d) float32 U for target logits and output cosines (token order)

    @classmethod
    def prepare(cls, lm: LensModel, compute_dtype: torch.dtype) -> LensWeights:
        u32 = lm.unembed.detach().float()
        e32 = u32 if lm.tied_embeddings else lm.embed.detach().float().to(u32.device)
        norms = u32.norm(dim=1)
        order = torch.argsort(norms, descending=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order), device=order.device)
        norm_from = torch.cat([norms[order], norms.new_zeros(1)])
        bias = bias_from = None
        if lm.unembed_bias is not None:
            b32 = lm.unembed_bias.detach().float()[order]
            bias = b32.to(compute_dtype)
            rev_max = torch.cummax(b32.flip(0), dim=0).values.flip(0)
            bias_from = torch.cat([rev_max, rev_max.new_full((1,), -torch.inf)])
        u_t = u32[order].T.to(compute_dtype).contiguous()
        return cls(u_t, bias, position, norm_from, bias_from, e32, u32)

    @property
    def vocab_size(self) -> int:
        return self.unembed_t.shape[1]

    def chunks(self, vocab_chunk: int) -> list[tuple[int, int]]:
        """Column ranges: small first (most rows are decided there), growing to vocab_chunk."""
        bounds, c0, size = [], 0, max(1, vocab_chunk // 16)
        while c0 < self.vocab_size:
            bounds.append((c0, min(c0 + size, self.vocab_size)))
            c0, size = c0 + size, min(2 * size, vocab_chunk)
        return bounds


def round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The largest value of `dtype` that is <= x (float32 in, `dtype` out).

    For z in `dtype`, (z > x) == (z > round_down(x)): no value of `dtype` lies strictly
    between them. This keeps the comparison exact while running it in bf16.
    """
    if dtype == x.dtype:
        return x
    y = x.to(dtype)
    return torch.where(y.float() > x, torch.nextafter(y, torch.full_like(y, -torch.inf)), y)


def count_above(z: Tensor, thresholds: Tensor, own: Tensor) -> Tensor:
    """For each row and target j: how many columns of z (n, Vc) exceed thresholds (n, J),
    not counting column own (n, J) (the target itself; out-of-range indices match nothing).
    """
    cols = torch.arange(z.shape[1], device=z.device)
    above = (z[:, None, :] > thresholds[:, :, None]) & (cols != own[:, :, None])  # (n, J, Vc)
    return above.sum(-1)


_compiled_count_above = None


def _count_above_fn(device: torch.device):
    """count_above fused into one pass over z by torch.compile on CPU (eager elsewhere).

    Eager PyTorch materializes the boolean masks and is ~20x slower on CPU here; when
    compilation is unavailable (no C++ compiler) the eager version is used.
    """
    global _compiled_count_above
    if device.type != "cpu":
        return count_above
    if _compiled_count_above is None:
        try:
            fn = torch.compile(count_above, dynamic=True)
            z = torch.zeros(3, 5, dtype=torch.bfloat16)
            fn(z, torch.zeros(3, 2, dtype=torch.bfloat16), torch.zeros(3, 2, dtype=torch.long))
            _compiled_count_above = fn
        except Exception:  # noqa: BLE001 - any compiler failure falls back to eager
            _compiled_count_above = count_above
    return _compiled_count_above


# bf16 logits differ from the exact ones by well under 1% of |h| |U_v|; the bound that
# retires a row is widened by this factor so rounding can never beat it.
BOUND_MARGIN = 1.03


def decode_ranks(
    hn: Tensor,
    weights: LensWeights,
    targets: tuple[Tensor, ...],
    vocab_chunk: int,
    max_rank: int,
) -> list[Tensor]:
    """Ranks of each target set under the lens logits of normed states hn (N, d), capped at
    max_rank: a returned value r < max_rank is the exact rank, max_rank means "max_rank or more".

    rank = number of vocabulary entries whose logit is strictly larger than the target's.
    The target's logit is a float32 dot product; the vocabulary's logits are computed a chunk
    of columns at a time in the compute dtype (bf16 on the fast path) and compared against it
    rounded down to that dtype (exact, see `round_down`); the target's own column is skipped.
    A row is retired once every target is decided: max_rank entries already beat it, or no
    later entry can (|z_v| <= |h| |U_v|, and the vocabulary is sorted by |U_v|). Top-k needs
    nothing more, and most rows retire within the first chunks.
    """
    dtype = weights.unembed_t.dtype
    h32 = hn.float()
    t = torch.stack(targets, dim=1)  # (N, J)
    z_t = (h32[:, None, :] * weights.unembed_f32[t]).sum(-1)  # (N, J) float32
    if weights.unembed_bias is not None:
        z_t = z_t + weights.unembed_bias.float()[weights.position[t]]
    thresholds = round_down(z_t, dtype)
    own = weights.position[t]  # (N, J) target columns in sorted order
    h_norm = h32.norm(dim=1) * BOUND_MARGIN  # (N,)
    hc = h32.to(dtype)
    count = _count_above_fn(hc.device)
    ranks = torch.zeros_like(t)
    active = torch.arange(hc.shape[0], device=hc.device)
    for c0, c1 in weights.chunks(vocab_chunk):
        z = hc[active] @ weights.unembed_t[:, c0:c1]  # (n, Vc)
        if weights.unembed_bias is not None:
            z += weights.unembed_bias[c0:c1]
        ranks[active] += count(z, thresholds[active], own[active] - c0)
        bound = h_norm[active] * weights.norm_from[c1]  # (n,) no later logit exceeds this
        if weights.bias_from is not None:
            bound = bound + weights.bias_from[c1]
        undecided = (ranks[active] < max_rank) & (bound[:, None] > z_t[active])  # (n, J)
        active = active[undecided.any(dim=1)]
        if active.numel() == 0:
            break
    ranks.clamp_(max=max_rank)
    return list(ranks.unbind(1))


def batch_metrics(
    hn: Tensor,
    inputs: Tensor,
    outputs: Tensor,
    randoms: Tensor,
    weights: LensWeights,
    topk: tuple[int, ...],
    vocab_chunk: int,
) -> tuple[Tensor, Tensor]:
    """All metrics of every layer for flattened positions, decoded in one pass.

    hn (Lp, N, d) normed states of Lp layers; inputs/outputs/randoms (N,) token ids.
    All layers go through one `decode_ranks` call: its chunk matmuls get Lp x more rows.
    Returns values (Lp, N, M) and a validity mask (N, M) (projection skips t_i == t_{i+1}).
    """
    n_layers, n, d = hn.shape
    ranks = decode_ranks(
        hn.reshape(n_layers * n, d),
        weights,
        (inputs.repeat(n_layers), outputs.repeat(n_layers)),
        vocab_chunk,
        max(topk),
    )
    rank_in, rank_out = (r.reshape(n_layers, n) for r in ranks)
    a = weights.embed_f32[inputs]  # (N, d), broadcast over layers
    b = weights.unembed_f32[outputs]  # (N, d)
    r = weights.embed_f32[randoms]
    h = hn.float()
    cols = []
    for k in topk:
        cols += [M.topk_hits(rank_in, k), M.topk_hits(rank_out, k)]
    cols += [M.cosine(h, a), M.cosine(h, b), M.cosine(h, r), M.projection(h, a, b)]
    values = torch.stack(cols, dim=-1)  # (Lp, N, M)
    valid = torch.ones(values.shape[1:], dtype=torch.bool, device=values.device)
    valid[:, -1] = inputs != outputs
    return values, valid


@dataclass
class LensRun:
    """What `run_lens` returns for one model."""

    accumulator: LensAccumulator
    num_positions: int
    excluded_projection_positions: int
    seconds: float
    tokens: int


def run_lens(
    lm: LensModel,
    tokens: Tensor,
    *,
    topk: tuple[int, ...] = (1, 5),
    batch_size: int = 4,
    compute_dtype: torch.dtype = torch.bfloat16,
    vocab_chunk: int = 16384,
    seed: int = 0,
    progress: bool = True,
    seq_indices: Tensor | None = None,
) -> LensRun:
    """Accumulate every metric at every layer over `tokens` (S, T).

    seq_indices selects the sequences this process handles (torchrun ranks split them);
    rows of the accumulator for other sequences stay zero, so ranks' accumulators add up.
    """
    num_seqs, seq_len = tokens.shape
    s = M.first_position(tokens, lm.bos_token_id)
    if seq_len - 1 - s < 1:
        raise ValueError("sequences too short for the lens: need at least two positions")
    weights = LensWeights.prepare(lm, compute_dtype)
    acc = LensAccumulator(lm.num_layers, topk, num_seqs)
    vocab = weights.vocab_size
    gen = torch.Generator().manual_seed(seed)
    randoms_all = torch.randint(0, vocab, (num_seqs, seq_len - 1 - s), generator=gen)
    indices = torch.arange(num_seqs) if seq_indices is None else seq_indices
    device = weights.unembed_t.device
    excluded = 0
    norm_device = next(lm.norm.parameters(), weights.unembed_t).device
    t0 = time.perf_counter()
    batches = range(0, len(indices), batch_size)
    bar = tqdm(
        total=len(indices) * seq_len,
        desc=f"lens {lm.name}",
        unit="tok",
        disable=not progress,
        dynamic_ncols=True,
    )
    with torch.inference_mode():
        for start in batches:
            idx = indices[start : start + batch_size]
            batch = tokens[idx]  # (B, T)
            states = residual_stream(lm, batch)
            inputs = batch[:, s : seq_len - 1].to(device)  # (B, P): t_i
            outputs = batch[:, s + 1 :].to(device)  # (B, P): t_{i+1}
            randoms = randoms_all[idx].to(device)
            n_b, n_p = inputs.shape
            flat = (inputs.reshape(-1), outputs.reshape(-1), randoms.reshape(-1))
            excluded += int((flat[0] == flat[1]).sum())
            hn = torch.stack(
                [lm.norm(h[:, s : seq_len - 1].to(norm_device)).to(device) for h in states]
            )  # (L+1, B, P, d)
            values, valid = batch_metrics(
                hn.reshape(len(states), n_b * n_p, -1), *flat, weights, topk, vocab_chunk
            )
            values = torch.where(valid, values, 0).reshape(len(states), n_b, n_p, -1)
            acc.sums[idx] += values.sum(2).transpose(0, 1).double().cpu()  # (B, L+1, M)
            acc.counts[idx] += valid.reshape(n_b, n_p, -1).sum(1).double().cpu()
            del states
            bar.update(batch.numel())
    bar.close()
    seconds = time.perf_counter() - t0
    return LensRun(
        accumulator=acc,
        num_positions=len(indices) * (seq_len - 1 - s),
        excluded_projection_positions=excluded,
        seconds=seconds,
        tokens=len(indices) * seq_len,
    )
