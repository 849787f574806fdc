"""Streaming logit-lens accumulation over batches of sequences.

For each batch: one forward pass records the residual stream entering block 1 (layer 0) and
after every block (layers 1..L) through hooks, stopping before the final norm and lm_head.
Each layer is then normed, projected onto the vocabulary in row chunks (so no
[layers x positions x V] tensor ever exists), and reduced at once to per-sequence sums.
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
    """The matrices of one model prepared once for the lens (compute dtype, one device)."""

    unembed: Tensor  # (V, d) in the lens compute dtype
    unembed_bias: Tensor | None
    embed_f32: Tensor  # (V, d) float32 W_E for input-side cosines
    unembed_f32: Tensor  # (V, d) float32 U for output-side cosines

    @classmethod
    def prepare(cls, lm: LensModel, compute_dtype: torch.dtype) -> LensWeights:
        u32 = lm.unembed.detach().float()
        e32 = u32 if lm.tied_embeddings else lm.embed.detach().float().to(u32.device)
        u = u32 if compute_dtype == torch.float32 else u32.to(compute_dtype)
        bias = None if lm.unembed_bias is None else lm.unembed_bias.detach().to(compute_dtype)
        return cls(unembed=u.contiguous(), unembed_bias=bias, embed_f32=e32, unembed_f32=u32)


def decode_ranks(
    hn: Tensor, weights: LensWeights, targets: tuple[Tensor, ...], chunk_rows: int
) -> list[Tensor]:
    """Ranks of each target row-set under the lens logits of normed states hn (N, d).

    Logits are formed chunk_rows rows at a time in the compute dtype; only ranks are kept.
    In bf16 the target's own logit is computed in float32 (a d-long dot product per row) and
    compared against the bf16 logits: rounding the target's logit to bf16 as well would make
    it tie with its neighbours and count ties in its favour, inflating the top-k rates.
    """
    out: list[list[Tensor]] = [[] for _ in targets]
    exact = weights.unembed.dtype == torch.float32
    hc = hn if exact else hn.to(weights.unembed.dtype)
    h32 = hn.float()
    for start in range(0, hc.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        z = hc[rows] @ weights.unembed.T  # (n, V)
        if weights.unembed_bias is not None:
            z = z + weights.unembed_bias
        for j, t in enumerate(targets):
            if exact:
                out[j].append(M.target_ranks(z, t[rows]))
                continue
            z_t = (h32[rows] * weights.unembed_f32[t[rows]]).sum(-1, keepdim=True)  # (n, 1)
            if weights.unembed_bias is not None:
                z_t = z_t + weights.unembed_bias.float()[t[rows], None]
            own = z.gather(1, t[rows, None]) > z_t  # the target's own bf16 entry is no rival
            out[j].append((z > z_t).sum(dim=1) - own[:, 0].long())
    return [torch.cat(r) for r in out]


def layer_metrics(
    hn: Tensor,
    inputs: Tensor,
    outputs: Tensor,
    randoms: Tensor,
    weights: LensWeights,
    topk: tuple[int, ...],
    chunk_rows: int,
) -> tuple[Tensor, Tensor]:
    """All metrics of one layer for flattened positions.

    hn (N, d) normed states; inputs/outputs/randoms (N,) token ids.
    Returns values (N, M) and a validity mask (N, M) (projection skips t_i == t_{i+1}).
    """
    rank_in, rank_out = decode_ranks(hn, weights, (inputs, outputs), chunk_rows)
    a = weights.embed_f32[inputs]  # (N, d)
    b = weights.unembed_f32[outputs]  # (N, d)
    r = weights.embed_f32[randoms]
    h = hn.float()
    cols = []
    for k in topk:
        cols += [M.topk_hits(rank_in, k), M.topk_hits(rank_out, k)]
    cols += [M.cosine(h, a), M.cosine(h, b), M.cosine(h, r), M.projection(h, a, b)]
    values = torch.stack(cols, dim=1)  # (N, M)
    valid = torch.ones_like(values, dtype=torch.bool)
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
    chunk_rows: int = 256,
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
    vocab = weights.unembed.shape[0]
    gen = torch.Generator().manual_seed(seed)
    randoms_all = torch.randint(0, vocab, (num_seqs, seq_len - 1 - s), generator=gen)
    indices = torch.arange(num_seqs) if seq_indices is None else seq_indices
    device = weights.unembed.device
    excluded = 0
    norm_device = next(lm.norm.parameters(), weights.unembed).device
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
            for layer, h in enumerate(states):
                hn = lm.norm(h[:, s : seq_len - 1].to(norm_device)).to(device)
                values, valid = layer_metrics(
                    hn.reshape(n_b * n_p, -1), *flat, weights, topk, chunk_rows
                )
                values = torch.where(valid, values, 0).reshape(n_b, n_p, -1)
                acc.sums[idx, layer] += values.sum(1).double().cpu()
                if layer == 0:
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
