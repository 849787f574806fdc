"""The lens metrics: one table (`METRICS`) and the pure tensor functions behind it.

Definitions follow docs/method.md. For position i with input token t_i and output token
t_{i+1}, h is the residual stream at some layer and N the model's final norm; every function
below takes already-normed states N(h).

`METRICS` drives everything downstream: the engine's columns and their order (`metric_table`),
which positions each metric averages over, the result keys and the legend labels. A new
metric is one `Metric` entry whose `value` reads a `LensInputs`; nothing else changes.

torch is imported inside the functions so that the table (names, labels, positions) can be
read without it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


# The targets a position can be decoded against: t_i, t_{i+1}, and t_{i+2} (the token after
# next, as in Future Lens). Input and output are always measured; next2 only when asked for.
TARGETS = ("input", "output", "next2")
DEFAULT_TARGETS = ("input", "output")
OPTIONAL_TARGETS = ("next2",)
# Optional quantities that are not targets: "logprob" (the output target's lens
# log-probability) needs a full-vocabulary pass per row, so it is only computed on request
# (`analyze --sublayers` asks for it; `metric_table(..., extras=("logprob",))`).
OPTIONAL_VALUES = ("logprob",)
# Which positions a metric averages over (see `Metric.positions`).
POSITION_SETS = ("all", "shift", "next2")


@dataclass(frozen=True)
class LensInputs:
    """What a metric sees for one batch: Lp layers x N positions."""

    states: Tensor  # (Lp, N, d) float32 normed states N(h)
    input_rank: Tensor  # (Lp, N) rank of t_i under the lens logits (capped at max top-k)
    output_rank: Tensor  # (Lp, N) rank of t_{i+1}
    input_embed: Tensor  # (N, d) float32 W_E[t_i]
    output_unembed: Tensor  # (N, d) float32 U[t_{i+1}]
    random_embed: Tensor  # (N, d) float32 W_E[r], r a uniformly random token (chance level)
    next2_rank: Tensor | None = None  # (Lp, N) rank of t_{i+2} (only with the next2 target)
    output_logprob: Tensor | None = None  # (Lp, N) log p_lens(t_{i+1}) (only with "logprob")


@dataclass(frozen=True)
class Metric:
    """One row of the metric table.

    name: the result key; a name with "{k}" is one column per `--topk` value.
    label: the legend text of its curve in the figures.
    value: (inputs, k) -> (Lp, N) values (k is None for metrics without "{k}").
    positions: "all", "shift" for positions with t_i != t_{i+1} only, or "next2" for
        positions that have a t_{i+2} (all but the last).
    needs: the optional targets (`OPTIONAL_TARGETS`) or values (`OPTIONAL_VALUES`) the
        metric reads: it is a column only when every one of them is asked for (`--targets`,
        or the extras of `metric_table`).
    """

    name: str
    label: str
    value: Callable[[LensInputs, int | None], Tensor]
    positions: str = "all"
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.positions not in POSITION_SETS:
            raise ValueError(f"metric {self.name}: positions must be one of {POSITION_SETS}")
        if not set(self.needs) <= set(OPTIONAL_TARGETS + OPTIONAL_VALUES):
            raise ValueError(
                f"metric {self.name}: needs must be among {OPTIONAL_TARGETS + OPTIONAL_VALUES}"
            )

    @property
    def per_k(self) -> bool:
        return "{k}" in self.name


@dataclass(frozen=True)
class Column:
    """A metric at one k: one column of the engine's (Lp, N, M) values."""

    name: str
    metric: Metric
    k: int | None

    def values(self, inputs: LensInputs) -> Tensor:
        return self.metric.value(inputs, self.k)

    @property
    def shift_only(self) -> bool:
        return self.metric.positions == "shift"

    @property
    def positions(self) -> str:
        return self.metric.positions


METRICS: tuple[Metric, ...] = (
    Metric("top{k}_input", "input t_i", lambda x, k: topk_hits(x.input_rank, k)),
    Metric("top{k}_output", "output t_(i+1)", lambda x, k: topk_hits(x.output_rank, k)),
    Metric(
        "top{k}_next2",
        "next-but-one t_(i+2)",
        lambda x, k: topk_hits(x.next2_rank, k),
        positions="next2",  # the last position has no t_{i+2}
        needs=("next2",),
    ),
    Metric("cos_input", "input", lambda x, k: cosine(x.states, x.input_embed)),
    Metric("cos_output", "output", lambda x, k: cosine(x.states, x.output_unembed)),
    Metric("cos_random", "random token", lambda x, k: cosine(x.states, x.random_embed)),
    Metric(
        "projection",
        "input->output projection",
        lambda x, k: projection(x.states, x.input_embed, x.output_unembed),
        positions="shift",  # meaningless where t_i == t_{i+1} (see `projection`)
    ),
    Metric(
        "logprob_output",
        "output t_(i+1) log-prob",
        lambda x, k: x.output_logprob,
        needs=("logprob",),  # a full-vocabulary pass per row (`target_logprob`)
    ),
)


def metric_table(
    topk: Sequence[int], targets: Sequence[str] = DEFAULT_TARGETS, extras: Sequence[str] = ()
) -> list[Column]:
    """The columns in result order: the "{k}" metrics for each k in turn, then the others,
    each group in table order; metrics that need a target not in `targets` (or an optional
    value not in `extras`) are left out."""
    table = [m for m in METRICS if set(m.needs) <= set(targets) | set(extras)]
    cols = [Column(m.name.format(k=k), m, k) for k in topk for m in table if m.per_k]
    return cols + [Column(m.name, m, None) for m in table if not m.per_k]


def metric_names(
    topk: Sequence[int], targets: Sequence[str] = DEFAULT_TARGETS, extras: Sequence[str] = ()
) -> list[str]:
    """The result keys in column order (e.g. top1_input, top1_output, ..., projection)."""
    return [c.name for c in metric_table(topk, targets, extras)]


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """`targets` in canonical order (`TARGETS`); ValueError unless it holds input and output
    and nothing unknown."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target {unknown[0]!r} (choose from {', '.join(TARGETS)})")
    if not set(DEFAULT_TARGETS) <= set(targets):
        raise ValueError("the targets must include input and output")
    return tuple(t for t in TARGETS if t in targets)


def label(name: str) -> str:
    """The legend label of a result key (e.g. "top5_output" -> "output t_(i+1)")."""
    for m in METRICS:
        if re.fullmatch(re.escape(m.name).replace(r"\{k\}", r"\d+"), name):
            return m.label
    raise KeyError(f"no metric {name!r}")


def target_ranks(logits: Tensor, targets: Tensor) -> Tensor:
    """Rank of each target among its row's logits: the number of strictly larger logits.

    logits (N, V), targets (N,) -> (N,) int64. Ties count in the target's favour, so a target
    that shares the maximum has rank 0. A target is in the top-K when its rank < K.
    """
    target_logit = logits.gather(1, targets[:, None])  # (N, 1)
    return (logits > target_logit).sum(dim=1)


def topk_hits(ranks: Tensor, k: int) -> Tensor:
    """1.0 where the target is among the k largest logits (rank < k), else 0.0. (N,) float."""
    return (ranks < k).float()


def cosine(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise cosine similarity of x (N, d) and y (N, d) -> (N,)."""
    x = x.float()
    y = y.float()
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(eps)


def projection(h: Tensor, a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Normalized projection of h on the a->b axis, all three made unit length first.

    p = <h^ - a^, b^ - a^> / |b^ - a^|^2 : 0 at the input embedding a, 1 at the output
    embedding b, 0.5 where cos(h, a) == cos(h, b). Rows (N, d) -> (N,). Rows with
    a^ == b^ give a meaningless value: callers leave out positions with t_i == t_{i+1}.
    """
    import torch

    h, a, b = (torch.nn.functional.normalize(v.float(), dim=-1, eps=eps) for v in (h, a, b))
    axis = b - a  # (N, d)
    return ((h - a) * axis).sum(-1) / (axis * axis).sum(-1).clamp_min(eps)


def target_logprob(
    h: Tensor,
    unembed: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    softcap: float | None = None,
    vocab_chunk: int = 4096,
    row_block: int = 4096,
) -> Tensor:
    """log softmax of the lens logits at each row's target: z_t - logsumexp_v z_v, float32.

    h (N, d) normed states, unembed (V, d), targets (N,), bias (V,) or None; z = softcap *
    tanh(z / softcap) when the model soft-caps its logits (Gemma 2), as its probabilities do.
    The logsumexp runs over the vocabulary in chunks of vocab_chunk columns, row_block rows
    at a time, so no (N, V) tensor is built: at most row_block x vocab_chunk logits exist."""
    import torch

    def cap(z: Tensor) -> Tensor:
        return torch.tanh(z / softcap) * softcap if softcap else z

    u = unembed.float()
    out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    for r0 in range(0, h.shape[0], row_block):
        x = h[r0 : r0 + row_block].float()
        t = targets[r0 : r0 + row_block]
        z_t = (x * u[t]).sum(-1) + (bias[t].float() if bias is not None else 0.0)
        lse = torch.full_like(z_t, -torch.inf)
        for c0 in range(0, u.shape[0], vocab_chunk):
            z = x @ u[c0 : c0 + vocab_chunk].T
            if bias is not None:
                z = z + bias[c0 : c0 + vocab_chunk].float()
            lse = torch.logaddexp(lse, torch.logsumexp(cap(z), dim=1))
        out[r0 : r0 + row_block] = cap(z_t) - lse
    return out


def first_position(tokens: Tensor, bos_token_id: int | None) -> int:
    """s = 1 when every sequence starts with the BOS token, else 0 (positions i = s..T-2)."""
    if bos_token_id is not None and bool((tokens[:, 0] == bos_token_id).all()):
        return 1
    return 0


def shift_layers(
    topk_input: Sequence[float], topk_output: Sequence[float]
) -> dict[str, int | None]:
    """The three shift layers from per-layer top-K match rates (index = layer, 0..L).

    input_until: last layer with topK_input >= 0.5.
    output_from: first layer from which topK_output >= 0.5 * topK_output[L] for every later layer.
    crossover:   first layer from which topK_output > topK_input for every later layer.
    Each is None when the condition never holds.
    """
    n = len(topk_input)
    if n != len(topk_output) or n == 0:
        raise ValueError("topk_input and topk_output must be non-empty and of equal length")
    input_until = max((i for i in range(n) if topk_input[i] >= 0.5), default=None)
    half_final = 0.5 * topk_output[-1]
    output_from = _first_suffix(
        [topk_output[i] >= half_final and topk_output[-1] > 0 for i in range(n)]
    )
    crossover = _first_suffix([topk_output[i] > topk_input[i] for i in range(n)])
    return {"input_until": input_until, "output_from": output_from, "crossover": crossover}


def _first_suffix(flags: Sequence[bool]) -> int | None:
    """The first index from which every flag is True; None when the last flag is False."""
    first = None
    for i in range(len(flags) - 1, -1, -1):
        if not flags[i]:
            break
        first = i
    return first


def mean_ci95(sums: Tensor, counts: Tensor) -> tuple[float, float, float]:
    """Mean over positions and a 95% interval over sequences (normal approximation).

    sums (S,) and counts (S,) are per-sequence totals. The point estimate is the pooled
    mean sum(sums)/sum(counts); the interval is mean +- 1.96 * sd(m_s) / sqrt(S) with m_s the
    per-sequence means of the sequences that have at least one position. With one sequence
    the interval is the point itself.
    """
    sums = sums.double()
    counts = counts.double()
    total = float(counts.sum())
    if total == 0:
        return math.nan, math.nan, math.nan
    mean = float(sums.sum()) / total
    used = counts > 0
    per_seq = sums[used] / counts[used]
    if per_seq.numel() < 2:
        return mean, mean, mean
    half = 1.96 * float(per_seq.std(unbiased=True)) / math.sqrt(per_seq.numel())
    return mean, mean - half, mean + half
