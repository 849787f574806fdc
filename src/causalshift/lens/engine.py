"""Streaming logit-lens accumulation over batches of sequences.

For each batch: one forward pass records the residual stream entering block 1 (layer 0) and
after every block (layers 1..L) through hooks, stopping before the final norm and lm_head.
Every layer is normed, all layers' positions are projected onto the vocabulary together in
column chunks (so no [layers x positions x V] tensor ever exists, and positions retire as
soon as their top-k is decided), and reduced at once to per-sequence sums.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from causalshift import runtime
from causalshift.lens import metrics as M
from causalshift.lens.kernels import band_entries, compiled_already, kernels_for
from causalshift.lens.models import LensModel
from causalshift.lens.positions import PositionRecorder, PositionRecords
from causalshift.lens.probe import ScreenChoice, choose, forced_screens
from causalshift.lens.screen import (
    INT8_KERNELS,
    Int8Screen,
    Screen,
    ScreenChunk,
    ScreenRows,
    make_screen,
)
from causalshift.lens.strata import StrataAccumulator, stratify
from causalshift.lens.sublayers import (
    EXTRAS,
    block_rows,
    hook_input,
    post_attention_modules,
    row_specs,
)

# With the int8 screen, the first columns (the text's own tokens, where most rows are decided
# and many targets sit near the threshold) go through the bf16 screen, whose band is several
# times narrower: fewer entries to re-score. The rest of the vocabulary, scanned mostly by rows
# whose target really is in the top-k, goes through int8.
INT8_AFTER = 16384

# Vocabulary columns per chunk on CPU: small enough that a chunk's logits (positions x chunk)
# stay in cache, large enough to keep the matmuls efficient. GPUs use 16384.
VOCAB_CHUNK = 4096

# The counting kernels are compiled (torch.compile) only for runs of at least this many
# rows x vocabulary columns (rows = positions x (layers + 1)): compiling costs seconds per
# process (importing inductor, tracing), eager counting about 20x the compiled cost per
# entry; about 6 sequences of 128 tokens of Gemma 3 270M (docs/benchmarks.md, "fixed cost").
# Once compiled in a process (a notebook, the benchmarks), every later run uses them.
COMPILE_AFTER = 4e9


@dataclass
class LensAccumulator:
    """Per-sequence sums and counts: (S, R, M) sums, (S, M) position counts; R = L+1 rows,
    or 2L+1 with sublayers (0, 1.attn, 1, ..., L: `sublayers.row_specs`)."""

    num_layers: int
    topk: tuple[int, ...]
    num_seqs: int
    targets: tuple[str, ...] = M.DEFAULT_TARGETS
    sublayers: bool = False  # rows after each attention too, and the logprob_output column
    sums: Tensor = field(init=False)
    counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.rows = row_specs(self.num_layers, self.sublayers)
        self.extras = EXTRAS if self.sublayers else ()
        self.names = M.metric_names(self.topk, self.targets, self.extras)
        shape = (self.num_seqs, len(self.rows), len(self.names))
        self.sums = torch.zeros(shape, dtype=torch.float64)
        self.counts = torch.zeros(self.num_seqs, len(self.names), dtype=torch.float64)

    def columns(self) -> list[M.Column]:
        """The metric columns, in `names` order."""
        return M.metric_table(self.topk, self.targets, self.extras)

    def layer_summary(self) -> list[dict]:
        """One dict per row: each metric's mean and its 95% interval (an `l.attn` row also
        its label and relative depth)."""
        rows = []
        for r, spec in enumerate(self.rows):
            row: dict = {"layer": spec.layer}
            if spec.attn:
                row.update(label=spec.label, depth=spec.position() / self.num_layers)
            ci = {}
            for m, name in enumerate(self.names):
                mean, lo, hi = M.mean_ci95(self.sums[:, r, m], self.counts[:, m])
                row[name] = mean
                ci[name] = [lo, hi]
            row["ci95"] = ci
            rows.append(row)
        return rows


class _StopForward(Exception):
    """Raised by the last block's hook: the lens needs nothing after it."""


@contextmanager
def capture_residual_stream(lm: LensModel, sublayers: bool = False) -> Iterator[list[Tensor]]:
    """Hooks that collect [layer 0, ..., layer L] residual states (B, T, d) during a forward;
    with sublayers [0, 1.attn, 1, ..., L.attn, L]: a pre-hook on each block's pre-MLP norm
    (`sublayers.POST_ATTENTION_INPUT`) reads the stream after its attention, and the hooks
    fire in stream order."""
    states: list[Tensor] = []
    last = len(lm.blocks) - 1

    def before_first(_module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        states.append(h.detach())

    def after_attention(_module, args, kwargs):
        states.append(hook_input(args, kwargs).detach())

    def after(index: int):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            states.append(h.detach())
            if index == last:
                raise _StopForward

        return hook

    handles = [lm.blocks[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    if sublayers:
        handles += [
            m.register_forward_pre_hook(after_attention, with_kwargs=True)
            for m in post_attention_modules(lm)
        ]
    handles += [b.register_forward_hook(after(i)) for i, b in enumerate(lm.blocks)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def residual_stream(lm: LensModel, input_ids: Tensor, sublayers: bool = False) -> list[Tensor]:
    """The L+1 residual states of a batch (B, T) -> list of (B, T, d); with sublayers the
    2L+1 states 0, 1.attn, 1, ..., L.attn, L."""
    with capture_residual_stream(lm, sublayers) as states:
        try:
            lm.forward(input_ids)
        except _StopForward:
            pass
    expected = len(row_specs(lm.num_layers, sublayers))
    if len(states) != expected:
        raise RuntimeError(f"captured {len(states)} residual states, expected {expected}")
    return states


@dataclass
class LensWeights:
    """The matrices of one model prepared once for the lens (one device).

    The vocabulary is reordered (see `prepare`): frequent tokens of the text first, then by
    decreasing |U_v|, so that large logits come early and the largest |U_v| of the columns
    left bounds every logit from there on (see `decode_ranks`). The ordered vocabulary is cut
    into chunks prepared for their screen's matmul (bf16, float32, or int8 after the first
    INT8_AFTER columns).
    """

    screens: list[Screen | Int8Screen]  # one, or bf16/float32 then int8 (see INT8_AFTER)
    chunks: list[ScreenChunk]  # the sorted vocabulary in column ranges, small ones first
    chunk_screen: list[int]  # index in screens of each chunk's screen
    order: Tensor  # (V,) sorted column -> token id
    position: Tensor  # (V,) token id -> column in the sorted order
    norm_from: Tensor  # (V+1,) float32: max |U_v| over ordered columns c.. (0 at the end)
    bias: Tensor | None  # (V,) float32 bias in token order
    bias_sorted: Tensor | None  # (V,) float32 bias in sorted order
    bias_from: Tensor | None  # (V+1,) float32: max bias over sorted columns c..
    embed_f32: Tensor  # (V, d) float32 W_E for input-side cosines (token order)
    unembed_f32: Tensor  # (V, d) float32 U for target logits and output cosines (token order)
    compiled: bool = False  # compiled counting kernels (see COMPILE_AFTER)

    @classmethod
    def prepare(
        cls,
        lm: LensModel,
        compute_dtype: torch.dtype | str | tuple[str, ...],
        vocab_chunk: int = VOCAB_CHUNK,
        first: Tensor | None = None,
        int8_after: int | None = None,
    ) -> LensWeights:
        """Order the vocabulary and prepare the screen's copy of U a chunk at a time.

        Order: the token ids `first` (in the given order), then the rest by decreasing |U_v|.
        `run_lens` passes the analyzed text's tokens, most frequent first: they are likely to
        have high logits, so rows whose target is not in the top-k meet max_rank entries
        above it sooner. Any order gives the same ranks. With an int8 screen, chunks before
        column int8_after (default INT8_AFTER) use the bf16 (or float32) screen.
        compute_dtype: a torch.dtype, a screen name or `--dtype` value, or the screens of a
        `probe.ScreenChoice` (see `_screens`).
        """
        screens = _screens(lm, compute_dtype)
        int8_after = INT8_AFTER if int8_after is None else int8_after
        u32 = lm.unembed.detach().float()
        e32 = u32 if lm.tied_embeddings else lm.embed.detach().float().to(u32.device)
        norms = u32.norm(dim=1)
        order = _vocabulary_order(norms, first)
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order), device=order.device)
        rev = torch.cummax(norms[order].flip(0), dim=0).values.flip(0)
        norm_from = torch.cat([rev, norms.new_zeros(1)])
        bias = bias_sorted = bias_from = None
        if lm.unembed_bias is not None:
            bias = lm.unembed_bias.detach().float()
            bias_sorted = bias[order]
            rev_max = torch.cummax(bias_sorted.flip(0), dim=0).values.flip(0)
            bias_from = torch.cat([rev_max, rev_max.new_full((1,), -torch.inf)])
        u, chunks, chunk_screen, buf = lm.unembed.detach(), [], [], None
        for c0, c1 in chunk_bounds(len(order), vocab_chunk):
            k = 1 if len(screens) > 1 and c0 >= int8_after else 0
            # Gathered and rounded a chunk at a time (no second full-size copy); index_select
            # into a reused buffer copies whole rows, without advanced indexing's allocation.
            # A screen in U's own dtype keeps the gathered rows (one copy, not two).
            own = isinstance(screens[k], Screen) and screens[k].dtype == u.dtype
            if buf is not None and buf.shape[0] != c1 - c0:
                buf = None
            rows = torch.index_select(u, 0, order[c0:c1], out=None if own else buf)
            buf = buf if own else rows
            chunks.append(screens[k].prepare_chunk(rows, norms[order[c0:c1]], c0, c1, own))
            chunk_screen.append(k)
        return cls(
            screens,
            chunks,
            chunk_screen,
            order,
            position,
            norm_from,
            bias,
            bias_sorted,
            bias_from,
            e32,
            u32,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.order)


def _screens(
    lm: LensModel, compute_dtype: torch.dtype | str | tuple[str, ...]
) -> list[Screen | Int8Screen]:
    """The screens of compute_dtype: the names given (a probe's choice: a float screen, then
    an int8 one), or what a `--dtype` value or torch.dtype forces (`probe.forced_screens`:
    for int8, the CPU's float screen first, for the first columns, see INT8_AFTER); no int8
    screen at all for a biased unembedding."""
    device, hidden = lm.unembed.device, lm.unembed.shape[1]
    names = compute_dtype if isinstance(compute_dtype, tuple) else forced_screens(compute_dtype)
    if lm.unembed_bias is not None and len(names) > 1:  # the int8 screen has no bias
        names = tuple(n for n in names if n not in INT8_KERNELS)
    return [make_screen(name, device, hidden) for name in names]


def _vocabulary_order(norms: Tensor, first: Tensor | None) -> Tensor:
    """Sorted column -> token id: the ids `first` in their order, then the rest by
    decreasing |U_v| (norms)."""
    order = torch.argsort(norms, descending=True)
    if first is not None and len(first):
        first = first.to(order.device)
        rest = torch.ones(len(order), dtype=torch.bool, device=order.device)
        rest[first] = False
        order = torch.cat([first, order[rest[order]]])
    return order


def by_frequency(tokens: Tensor) -> Tensor:
    """The distinct token ids of `tokens`, most frequent first (the order `run_lens` scans
    the vocabulary in before the rest)."""
    ids, counts = torch.unique(tokens, return_counts=True)
    return ids[torch.argsort(counts, descending=True, stable=True)]


def chunk_bounds(vocab_size: int, vocab_chunk: int) -> list[tuple[int, int]]:
    """Column ranges: small first (most rows are decided there), growing to vocab_chunk."""
    bounds, c0, size = [], 0, max(1, vocab_chunk // 16)
    while c0 < vocab_size:
        bounds.append((c0, min(c0 + size, vocab_size)))
        c0, size = c0 + size, min(2 * size, vocab_chunk)
    return bounds


# Float32 logits can exceed |h| |U_v| by the rounding of a d-term dot product (d 2^-24
# relative): the bound that retires a row is widened by this factor.
RETIRE_MARGIN = 1.001
# Exact re-scoring of candidate entries is done this many (row, entry) pairs at a time.
RESCORE_BLOCK = 32768


def decode_ranks(
    hn: Tensor,
    weights: LensWeights,
    targets: tuple[Tensor, ...],
    max_rank: int,
) -> list[Tensor]:
    """Ranks of each target set under the float32 lens logits of normed states hn (N, d),
    capped at max_rank: r < max_rank is the exact rank, max_rank means "max_rank or more".

    rank = number of vocabulary entries whose logit is strictly larger than the target's,
    the target's own column not counted; logits are float32 dot products h . U_v (+ bias).

    Chunk by chunk, the screen computes approximate logits and a bound B on their error
    (`causalshift.lens.screen`): entries above tau + B count, entries in (tau - B, tau + B]
    are candidates, re-scored exactly in float32 right away (only for rows whose rank is
    still below max_rank) so that the count is exact before the next chunk. A row is retired
    once every target is decided: max_rank entries beat it, or no later entry can
    (h . U_v <= |h| |U_v| <= |h| norm_from[c]: the largest |U_v| of the columns left). Most
    rows retire within the first chunks. The result is the float32 rank whatever the
    screen's precision.
    """
    h32 = hn.float()
    n_rows = h32.shape[0]
    biased = weights.bias is not None
    t = torch.stack(targets, dim=1)  # (N, J)
    z_t = (h32[:, None, :] * weights.unembed_f32[t]).sum(-1)  # (N, J) float32
    if biased:
        z_t = z_t + weights.bias[t]
    own = weights.position[t]  # (N, J) target columns in sorted order
    h_norm = h32.norm(dim=1) * RETIRE_MARGIN  # (N,)
    rows = [screen.rows(h32) for screen in weights.screens]
    kernels = {
        s.output_dtype: kernels_for(h32.device, s.output_dtype, weights.compiled)
        for s in weights.screens
    }
    ranks = torch.zeros_like(t)
    active = torch.arange(n_rows, device=h32.device)
    for chunk, k in zip(weights.chunks, weights.chunk_screen, strict=True):
        c0, c1 = chunk.start, chunk.stop
        screen = weights.screens[k]
        count, blocks = kernels[screen.output_dtype]
        r = rows[k].take(active)
        z = screen.matmul(r, chunk)  # (n, Vc)
        if biased:
            z = z.float() + weights.bias_sorted[c0:c1]
        tau = z_t[active]  # (n, J)
        own_c = own[active] - c0  # (n, J)
        hi, lo, sure, maybe = _band_counts(screen, z, tau, r, chunk, biased, count, own_c)
        ranks[active] += sure
        need = (maybe > sure) & (ranks[active] < max_rank)  # candidates that may matter
        candidates = []  # (row, sorted column, target j)
        for j in need.any(dim=0).nonzero().flatten().tolist():
            sel = need[:, j].nonzero().flatten()
            rr, cc = band_entries(z, sel, lo[sel, j], hi[sel, j], own_c[sel, j], blocks)
            candidates.append((active[sel][rr], cc + c0, torch.full_like(rr, j)))
        if candidates:
            _rescore(h32, z_t, weights, ranks, candidates, max_rank)
        bound = h_norm[active] * weights.norm_from[c1]  # (n,) no later logit exceeds this
        if biased:
            bound = bound + weights.bias_from[c1]
        undecided = (ranks[active] < max_rank) & (bound[:, None] > tau)  # (n, J)
        active = active[undecided.any(dim=1)]
        if active.numel() == 0:
            break
    ranks.clamp_(max=max_rank)
    return list(ranks.unbind(1))


def _band_counts(
    screen: Screen | Int8Screen,
    z: Tensor,
    tau: Tensor,
    rows: ScreenRows,
    chunk: ScreenChunk,
    biased: bool,
    count: Callable[..., Tensor],
    own_c: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The band around each target logit tau (n, J) over one chunk's screen logits z (n, Vc):
    (hi, lo) thresholds and how many entries are above each, (sure, maybe), the target's
    own column (own_c, relative to the chunk) not counted."""
    n_targets = tau.shape[1]
    band = screen.thresholds(tau, rows, chunk, biased)  # hi, then lo
    counts = count(z, band)  # (n, 2J)
    # The target's own column does not count (its screen logit is within the band).
    width = z.shape[1]
    inside = (own_c >= 0) & (own_c < width)
    z_own = z.gather(1, own_c.clamp(0, width - 1)).float()  # (n, J)
    hi, lo = band[:, :n_targets], band[:, n_targets:]
    counts -= torch.cat([inside & (z_own > hi), inside & (z_own > lo)], dim=1).int()
    return hi, lo, counts[:, :n_targets], counts[:, n_targets:]


def _rescore(
    h32: Tensor,
    z_t: Tensor,
    weights: LensWeights,
    ranks: Tensor,
    candidates: list[tuple[Tensor, Tensor, Tensor]],
    max_rank: int,
) -> None:
    """Add to ranks (N, J) the candidates whose float32 logit beats the target's."""
    row, col, j = (torch.cat(x) for x in zip(*candidates, strict=True))
    keep = ranks[row, j] < max_rank
    row, col, j = row[keep], col[keep], j[keep]
    token = weights.order[col]
    for b0 in range(0, len(row), RESCORE_BLOCK):
        sl = slice(b0, b0 + RESCORE_BLOCK)
        z = (h32[row[sl]] * weights.unembed_f32[token[sl]]).sum(-1)
        if weights.bias is not None:
            z = z + weights.bias[token[sl]]
        above = (z > z_t[row[sl], j[sl]]).long()
        ranks.index_put_((row[sl], j[sl]), above, accumulate=True)


@dataclass
class TokenRankCache:
    """Layer-0 ranks of the input token, reused wherever the same state comes back.

    Without position embeddings the stream entering block 1 depends on the token alone, so
    a token's rank of itself at layer 0 is the same at every occurrence, in every batch (and
    there the input token is usually top-1: a full scan of the vocabulary each time). A rank
    is reused only when the normed state is bit-identical to the cached one; models that add
    positions (GPT-2) never match and are decoded as usual.
    """

    max_bytes: int = 64 * 2**20  # memory for cached states (d float32 each)
    entries: dict[int, tuple[Tensor, int]] = field(default_factory=dict)  # token: state, rank
    hits: int = 0

    def plan(self, h0: Tensor, inputs: Tensor) -> _Layer0Plan | None:
        """Which layer-0 rows (N,) must decode their input token; None when the states do
        not depend on the token alone (then every row decodes it)."""
        uniq, inv = torch.unique(inputs, return_inverse=True)
        pos = torch.arange(len(inputs), device=inputs.device)
        first = torch.full_like(uniq, len(inputs)).scatter_reduce_(0, inv, pos, "amin")
        rep = h0[first]  # (U, d) one state per distinct token
        if not torch.equal(h0, rep[inv]):
            return None
        known = torch.full_like(uniq, -1)
        for k, token in enumerate(uniq.tolist()):
            cached = self.entries.get(token)
            if cached is not None and torch.equal(cached[0], rep[k]):
                known[k] = cached[1]
        decode = torch.zeros(len(inputs), dtype=torch.bool, device=inputs.device)
        decode[first[known < 0]] = True
        return _Layer0Plan(uniq, inv, first, rep, known, decode)

    def resolve(self, plan: _Layer0Plan, decoded: Tensor) -> Tensor:
        """Layer-0 input ranks (N,) from the rows decoded (decoded[i] valid where
        plan.decode[i]) and the cache; remembers the new ones."""
        ranks = plan.known.clone()
        new = (plan.known < 0).nonzero().flatten()
        ranks[new] = decoded[plan.first[new]]
        for k, r in zip(new.tolist(), ranks[new].tolist(), strict=True):
            if (len(self.entries) + 1) * plan.rep.shape[1] * 4 <= self.max_bytes:
                self.entries[int(plan.uniq[k])] = (plan.rep[k].clone(), r)
        self.hits += len(plan.inv) - len(new)
        return ranks[plan.inv]


@dataclass
class _Layer0Plan:
    uniq: Tensor  # (U,) distinct input tokens
    inv: Tensor  # (N,) row -> index in uniq
    first: Tensor  # (U,) first row of each token
    rep: Tensor  # (U, d) its state
    known: Tensor  # (U,) cached rank, -1 where unknown
    decode: Tensor  # (N,) rows whose input rank is decoded


def batch_metrics(
    hn: Tensor,
    inputs: Tensor,
    outputs: Tensor,
    randoms: Tensor,
    weights: LensWeights,
    topk: tuple[int, ...],
    cache: TokenRankCache | None = None,
    *,
    next2: Tensor | None = None,
    targets: tuple[str, ...] = M.DEFAULT_TARGETS,
    max_rank: int | None = None,
) -> tuple[Tensor, Tensor]:
    """All metrics of every layer for flattened positions, decoded in one pass.

    hn (Lp, N, d) normed states of Lp layers, layer 0 first; inputs/outputs/randoms (N,)
    token ids; next2 (N,) t_{i+2}, -1 where past the end (needed for the next2 target).
    Returns values (Lp, N, M) in `metrics.metric_table(topk, targets)` order and a validity
    mask (N, M) (see `lens_inputs` for the ranks, `metric_values` for the mask).
    """
    seen = lens_inputs(hn, inputs, outputs, randoms, weights, max_rank or max(topk), cache, next2)
    return metric_values(seen, inputs, outputs, next2, M.metric_table(topk, targets))


def lens_inputs(
    hn: Tensor,
    inputs: Tensor,
    outputs: Tensor,
    randoms: Tensor,
    weights: LensWeights,
    max_rank: int,
    cache: TokenRankCache | None = None,
    next2: Tensor | None = None,
    *,
    logprob: bool = False,
    softcap: float | None = None,
) -> M.LensInputs:
    """The ranks (capped at max_rank) and vectors the metrics read, for hn (Lp, N, d).

    All layers go through one `decode_ranks` call: its chunk matmuls get Lp x more rows.
    With `cache`, a layer-0 row whose input rank is known (or decoded on another row of the
    batch) asks for its output token twice instead, which costs nothing extra. With next2
    (N,), a third target; rows without one (-1) decode t_{i+1} again, masked later.
    logprob: also the output target's lens log-probability (a full-vocabulary pass per row,
    `metrics.target_logprob`; softcap: the model's final logit soft-capping).
    """
    n_layers, n, d = hn.shape
    plan = None if cache is None else cache.plan(hn[0], inputs)
    first_in = inputs if plan is None else torch.where(plan.decode, inputs, outputs)
    targets = [torch.cat([first_in, inputs.repeat(n_layers - 1)]), outputs.repeat(n_layers)]
    if next2 is not None:
        targets.append(torch.where(next2 >= 0, next2, outputs).repeat(n_layers))
    ranks = decode_ranks(hn.reshape(n_layers * n, d), weights, tuple(targets), max_rank)
    rank_in, rank_out, *rank_next2 = (r.reshape(n_layers, n) for r in ranks)
    if plan is not None:
        assert cache is not None
        rank_in[0] = cache.resolve(plan, rank_in[0])
    logp = None
    if logprob:
        flat = hn.reshape(n_layers * n, d)
        u, bias = weights.unembed_f32, weights.bias
        logp = M.target_logprob(flat, u, outputs.repeat(n_layers), bias, softcap)
    return M.LensInputs(
        states=hn.float(),
        input_rank=rank_in,
        output_rank=rank_out,
        input_embed=weights.embed_f32[inputs],  # (N, d), broadcast over layers
        output_unembed=weights.unembed_f32[outputs],
        random_embed=weights.embed_f32[randoms],
        next2_rank=rank_next2[0] if rank_next2 else None,
        output_logprob=None if logp is None else logp.reshape(n_layers, n),
    )


def metric_values(
    seen: M.LensInputs,
    inputs: Tensor,
    outputs: Tensor,
    next2: Tensor | None,
    columns: list[M.Column],
) -> tuple[Tensor, Tensor]:
    """values (Lp, N, M) of the columns and their validity mask (N, M): "shift" metrics
    skip t_i == t_{i+1}, "next2" metrics the positions without a t_{i+2}."""
    values = torch.stack([c.values(seen) for c in columns], dim=-1)  # (Lp, N, M)
    valid = torch.ones(values.shape[1:], dtype=torch.bool, device=values.device)
    for j, column in enumerate(columns):
        if column.positions == "shift":
            valid[:, j] = inputs != outputs
        elif column.positions == "next2":
            valid[:, j] = next2 >= 0 if next2 is not None else False
    return values, valid


@dataclass
class LensRun:
    """What `run_lens` returns for one model."""

    accumulator: LensAccumulator
    num_positions: int
    excluded_projection_positions: int
    seconds: float
    tokens: int
    reused_layer0_ranks: int = 0  # positions whose layer-0 input rank came from the cache
    screens: tuple[str, ...] = ()  # the screens' names, in vocabulary order
    screen_choice: ScreenChoice | None = None  # how they were chosen (lens/probe.py)
    compiled: bool = False  # whether the counting kernels were compiled (COMPILE_AFTER)
    strata: StrataAccumulator | None = None  # per-stratum sums (lens/strata.py)
    positions: PositionRecords | None = None  # per-position records (save_positions)
    first_position: int = 0  # s: positions are s..T-2
    save_positions: bool = False


def run_lens(
    lm: LensModel,
    tokens: Tensor,
    *,
    topk: tuple[int, ...] = (1, 5),
    batch_size: int = 8,
    compute_dtype: torch.dtype | str | None = None,
    vocab_chunk: int = VOCAB_CHUNK,
    seed: int = 0,
    progress: bool = True,
    seq_indices: Tensor | None = None,
    reuse_layer0: bool = True,
    targets: tuple[str, ...] = M.DEFAULT_TARGETS,
    save_positions: bool = False,
    strata: bool = True,
    sublayers: bool = False,
    translate: Callable[[int, Tensor], Tensor] | None = None,
) -> LensRun:
    """Accumulate every metric at every layer over `tokens` (S, T).

    compute_dtype: the screen: a torch.dtype, a `--dtype` value or screen name, or None /
    "auto" (CPU: the fastest here for this run's size, measured by `probe.choose`; GPU: bf16).
    seq_indices selects the sequences this process handles (torchrun ranks split them);
    rows of the accumulator for other sequences stay zero, so ranks' accumulators add up.
    reuse_layer0: reuse layer-0 input ranks across repeated tokens (`TokenRankCache`).
    targets: `metrics.TARGETS` to measure (next2 adds the top{k}_next2 columns).
    save_positions: keep every position's exact ranks (all three targets), cosines and
    projection (`LensRun.positions`); ranks are then decoded uncapped (slower).
    strata: per-stratum sums (`LensRun.strata`, lens/strata.py).
    sublayers: rows after each attention too, and logprob_output (lens/sublayers.py).
    translate: the tuned lens (`lens.tuned.TunedLens.frozen()`): translate(r, h) replaces
    row r's states before the final norm (None: the logit lens).
    """
    targets = M.check_targets(targets)
    num_seqs, seq_len = tokens.shape
    s = M.first_position(tokens, lm.bos_token_id)
    if seq_len - 1 - s < 1:
        raise ValueError("sequences too short for the lens: need at least two positions")
    indices = torch.arange(num_seqs) if seq_indices is None else seq_indices
    vocab, hidden = lm.unembed.shape
    work = len(indices) * (seq_len - 1 - s) * len(row_specs(lm.num_layers, sublayers))  # rows
    choice = choose(
        compute_dtype, lm.unembed.device, hidden, rows=work, vocab=vocab, vocab_chunk=vocab_chunk
    )
    first = by_frequency(tokens[indices])
    weights = LensWeights.prepare(lm, choice.screens, vocab_chunk, first=first)
    weights.compiled = work * vocab >= COMPILE_AFTER or compiled_already()
    acc = LensAccumulator(lm.num_layers, topk, num_seqs, targets, sublayers)
    sink = _BatchSink.create(lm, weights, tokens, s, acc, reuse_layer0, strata, save_positions)
    sink.translate = translate
    gen = torch.Generator().manual_seed(seed)
    randoms = torch.randint(0, weights.vocab_size, (num_seqs, seq_len - 1 - s), generator=gen)
    t0 = time.perf_counter()
    excluded = _feed(sink, tokens, randoms, indices, batch_size, progress)
    seconds = time.perf_counter() - t0
    return LensRun(
        accumulator=acc,
        num_positions=len(indices) * (seq_len - 1 - s),
        excluded_projection_positions=excluded,
        seconds=seconds,
        tokens=len(indices) * seq_len,
        reused_layer0_ranks=0 if sink.cache is None else sink.cache.hits,
        screens=tuple(sc.name for sc in weights.screens),
        screen_choice=choice,
        compiled=weights.compiled,
        strata=sink.strata,
        positions=None if sink.recorder is None else sink.recorder.records(),
        first_position=s,
        save_positions=save_positions,
    )


def _feed(
    sink: _BatchSink,
    tokens: Tensor,
    randoms: Tensor,
    indices: Tensor,
    batch_size: int,
    progress: bool,
) -> int:
    """Add the sequences `indices` of tokens (S, T) to the sink, batch_size at a time, under
    a progress bar; returns the positions with t_i == t_{i+1}."""
    seq_len, excluded = tokens.shape[1], 0
    bar = tqdm(
        total=len(indices) * seq_len,
        desc=f"lens {sink.lm.name}",
        unit="tok",
        disable=not progress,
        dynamic_ncols=True,
    )
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            excluded += sink.add(tokens[idx], randoms[idx], idx)
            bar.update(len(idx) * seq_len)
    bar.close()
    return excluded


@dataclass
class _BatchSink:
    """Where one run's batches go: the accumulator, the strata, the position recorder."""

    lm: LensModel
    weights: LensWeights
    first: int  # s: positions s..T-2
    acc: LensAccumulator
    cache: TokenRankCache | None
    strata: StrataAccumulator | None
    recorder: PositionRecorder | None
    next2: bool  # decode t_{i+2} too
    max_rank: int
    translate: Callable[[int, Tensor], Tensor] | None = None  # tuned lens, before the norm

    @classmethod
    def create(
        cls,
        lm: LensModel,
        weights: LensWeights,
        tokens: Tensor,
        first: int,
        acc: LensAccumulator,
        reuse_layer0: bool,
        strata: bool,
        save_positions: bool,
    ) -> _BatchSink:
        """The sink of a `run_lens` call (its arguments of the same names)."""
        return cls(
            lm=lm,
            weights=weights,
            first=first,
            acc=acc,
            cache=TokenRankCache() if reuse_layer0 else None,
            strata=StrataAccumulator(stratify(tokens, first), lm.num_layers, acc.names)
            if strata
            else None,
            recorder=PositionRecorder() if save_positions else None,
            next2="next2" in acc.targets or save_positions,
            # exact ranks for the positions file; else only whether rank < max(topk) matters
            max_rank=weights.vocab_size if save_positions else max(acc.topk),
        )

    def add(self, batch: Tensor, randoms: Tensor, idx: Tensor) -> int:
        """Add one batch's metrics (batch (B, T), the sequences idx of the accumulator) at
        positions s..T-2; returns how many positions have t_i == t_{i+1} (left out of the
        "shift" metrics)."""
        lm, weights, s = self.lm, self.weights, self.first
        seq_len = batch.shape[1]
        device = weights.unembed_f32.device
        norm_device = next(lm.norm.parameters(), weights.unembed_f32).device
        states = residual_stream(lm, batch, self.acc.sublayers)
        inputs = batch[:, s : seq_len - 1].to(device)  # (B, P): t_i
        outputs = batch[:, s + 1 :].to(device)  # (B, P): t_{i+1}
        n_b, n_p = inputs.shape
        flat = (inputs.reshape(-1), outputs.reshape(-1), randoms.to(device).reshape(-1))
        next2 = None
        if self.next2:  # (B, P): t_{i+2}, -1 at the last position
            next2 = torch.cat([batch[:, s + 2 :].to(device), inputs.new_full((n_b, 1), -1)], 1)
            next2 = next2.reshape(-1)
        tr = self.translate or (lambda _r, h: h)  # row r's tuned-lens translator, if any
        hn = torch.stack(
            [
                lm.norm(tr(r, h[:, s : seq_len - 1]).to(norm_device)).to(device)
                for r, h in enumerate(states)
            ]
        )  # (L+1, B, P, d)
        hn = hn.reshape(len(states), n_b * n_p, -1)
        logprob = {"logprob": self.acc.sublayers, "softcap": lm.softcap}  # sublayers only
        seen = lens_inputs(hn, *flat, weights, self.max_rank, self.cache, next2, **logprob)
        columns = self.acc.columns()
        values, valid = metric_values(seen, flat[0], flat[1], next2, columns)
        values = torch.where(valid, values, 0).reshape(len(states), n_b, n_p, -1)
        valid = valid.reshape(n_b, n_p, -1)
        self.acc.sums[idx] += values.sum(2).transpose(0, 1).double().cpu()  # (B, L+1, M)
        self.acc.counts[idx] += valid.sum(1).double().cpu()
        if self.strata is not None:  # the block rows only (with sublayers, every other row)
            self.strata.add(idx, values[block_rows(self.acc.sublayers)], valid)
        if self.recorder is not None:
            self._record(idx, seen, values, valid, next2)
        return int((flat[0] == flat[1]).sum())

    def _record(
        self, idx: Tensor, seen: M.LensInputs, values: Tensor, valid: Tensor, next2: Tensor
    ) -> None:
        """Keep the batch's per-position ranks (exact: max_rank is the vocabulary size)."""
        assert self.recorder is not None and seen.next2_rank is not None
        n_layers, (n_b, n_p) = values.shape[0], valid.shape[:2]
        rank_next2 = torch.where(next2 >= 0, seen.next2_rank, -1)
        ranks = {
            "rank_input": seen.input_rank,
            "rank_output": seen.output_rank,
            "rank_next2": rank_next2,
        }
        rows = block_rows(self.acc.sublayers)  # positions.parquet: layers 0..L only
        ranks = {k: v.reshape(n_layers, n_b, n_p)[rows] for k, v in ranks.items()}
        self.recorder.add(idx, ranks, values[rows], valid, self.acc.names)


def reduce_run(run: LensRun) -> tuple[int, int, float]:
    """Sum the accumulator (and the strata) over torchrun ranks in place (ranks' sequences do
    not overlap, so the sum is exact) and gather the position records; returns (positions,
    excluded positions, the slowest rank's seconds)."""
    acc = run.accumulator
    stats = torch.tensor(
        [run.num_positions, run.excluded_projection_positions, run.seconds], dtype=torch.float64
    )
    if runtime.is_distributed():
        device = runtime.collective_device()
        parts = [acc.sums, acc.counts]
        if run.strata is not None:
            parts += [run.strata.sums, run.strata.counts]
        for t in parts:
            t.copy_(runtime.all_reduce_sum(t.to(device)).cpu())
        if run.save_positions:
            run.positions = PositionRecords.merge(runtime.gather_objects(run.positions))
        head = runtime.all_reduce_sum(stats[:2].to(device))
        slowest = runtime.all_reduce_max(stats[2:].to(device))
        stats = torch.cat([head.cpu(), slowest.cpu()])
    return int(stats[0]), int(stats[1]), float(stats[2])
