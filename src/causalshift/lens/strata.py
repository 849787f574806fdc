"""Stratified curves: the lens metrics averaged over subsets (strata) of the positions.

Three families of strata, each a partition of the positions i = s..T-2 (docs/method.md):

- frequency: how often the output token t_{i+1} occurs in the analysed text (every token of
  every window from position s on, BOS left out), three bins of (as nearly as ties allow)
  equal position counts;
- position: where i sits in the window, four bins of equal width;
- copy: whether t_{i+1} already occurred earlier in the same window (t_j == t_{i+1} for some
  j <= i: "copyable") or not ("new").

Membership is computed once per run from the token windows (`stratify`); the engine adds a
batch's per-position values into per-sequence, per-stratum sums with one einsum
(`StrataAccumulator.add`), so the strata cost no Python loop per position. Each stratum then
gets its own per-layer means, 95% intervals over sequences and shift layers (`summaries`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from causalshift.lens import metrics as M
from causalshift.results import LayerRow, ShiftLayers, StratumResult

if TYPE_CHECKING:
    from torch import Tensor

FREQUENCY_BINS = 3
POSITION_BINS = 4
FAMILIES = ("frequency", "position", "copy")


@dataclass(frozen=True)
class Stratum:
    """One stratum: its family, its name (unique over all families) and what it holds."""

    family: str
    name: str
    definition: str


@dataclass
class Strata:
    """The strata of a run and which positions belong to each: member (S, P, G) float32,
    1.0 where position s + p of sequence s is in stratum g (each family a partition)."""

    strata: list[Stratum]
    member: Tensor


def stratify(tokens: Tensor, s: int) -> Strata:
    """The strata of the positions s..T-2 of `tokens` (S, T) (s: the first position)."""
    import torch

    outputs = tokens[:, s + 1 :]  # (S, P) t_{i+1}
    n_seqs, n_pos = outputs.shape
    groups, strata = [], []
    freq_bin, freq_defs = _frequency_bins(tokens[:, s:], outputs)
    groups.append(freq_bin)
    strata += [Stratum("frequency", name, d) for name, d in freq_defs]
    pos = torch.arange(n_pos)
    pos_bin = (pos * POSITION_BINS // n_pos).expand(n_seqs, n_pos)
    groups.append(pos_bin)
    for b in range(POSITION_BINS):
        at = (pos_bin[0] == b).nonzero().flatten()
        lo, hi = (int(at[0]) + s, int(at[-1]) + s) if len(at) else (None, None)
        strata.append(Stratum("position", f"pos_q{b + 1}", f"positions i = {lo}..{hi}"))
    copyable = earlier_occurrence(tokens)[:, s + 1 :]  # t_{i+1} seen at some j <= i
    groups.append(copyable.long())
    strata.append(Stratum("copy", "new", "t_(i+1) does not occur earlier in the window"))
    strata.append(Stratum("copy", "copyable", "t_(i+1) occurs earlier in the window"))
    sizes = [FREQUENCY_BINS, POSITION_BINS, 2]
    member = torch.cat(
        [torch.nn.functional.one_hot(g, n) for g, n in zip(groups, sizes, strict=True)], dim=-1
    )
    return Strata(strata, member.float())


def earlier_occurrence(tokens: Tensor) -> Tensor:
    """(S, T) bool: True where token t_j already occurred at some position < j of its row.

    A stable sort puts equal tokens next to each other in position order: every one but the
    first of a run is a repeat."""
    import torch

    values, order = torch.sort(tokens, dim=1, stable=True)
    repeat = torch.zeros_like(tokens, dtype=torch.bool)
    repeat[:, 1:] = values[:, 1:] == values[:, :-1]
    out = torch.empty_like(repeat)
    out.scatter_(1, order, repeat)
    return out


def _frequency_bins(text: Tensor, outputs: Tensor) -> tuple[Tensor, list[tuple[str, str]]]:
    """Bin (S, P) of each output token by its count in `text`, and each bin's definition.

    Positions whose tokens have the same count stay in one bin: each edge is the count
    value whose cumulative share of positions (count <= edge) is closest to 1/3 (resp. 2/3),
    and a position goes to the first bin whose edge its count does not exceed. The bins are
    then as equal as ties allow (a frequent token fills many positions of one bin)."""
    import torch

    counts = torch.bincount(text.reshape(-1), minlength=int(outputs.max()) + 1)
    freq = counts[outputs]  # (S, P)
    values, per_value = torch.unique(freq, return_counts=True)  # ascending
    cum = torch.cumsum(per_value, 0).double()
    targets = [freq.numel() * (b + 1) / FREQUENCY_BINS for b in range(FREQUENCY_BINS - 1)]
    edges = torch.stack([values[torch.argmin((cum - t).abs())] for t in targets])
    bins = torch.bucketize(freq, edges, right=False)  # count <= edges[0] -> 0, ...
    lows = [int(values[0]), *(int(e) + 1 for e in edges)]
    highs = [*(int(e) for e in edges), int(values[-1])]
    names = ("freq_low", "freq_mid", "freq_high")
    defs = [
        (names[b], f"t_(i+1) occurs {lows[b]}..{highs[b]} times in the text")
        for b in range(FREQUENCY_BINS)
    ]
    return bins, defs


@dataclass
class StrataAccumulator:
    """Per-sequence sums (S, L+1, G, M) and counts (S, G, M) of every stratum and metric."""

    strata: Strata
    num_layers: int
    names: list[str]
    sums: Tensor = field(init=False)
    counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        import torch

        n_seqs, _, n_groups = self.strata.member.shape
        m = len(self.names)
        self.sums = torch.zeros(n_seqs, self.num_layers + 1, n_groups, m, dtype=torch.float64)
        self.counts = torch.zeros(n_seqs, n_groups, m, dtype=torch.float64)

    def add(self, idx: Tensor, values: Tensor, valid: Tensor) -> None:
        """Add a batch: values (L+1, B, P, M) already zero where invalid, valid (B, P, M)."""
        import torch

        n_layers, n_b, n_p, m = values.shape
        member = self.strata.member[idx].to(values.device)  # (B, P, G)
        # one small matmul per sequence, (G, P) @ (P, (L+1) M): a few ms per batch
        v = values.float().permute(1, 2, 0, 3).reshape(n_b, n_p, n_layers * m)
        member_t = member.transpose(1, 2)  # (B, G, P)
        sums = torch.bmm(member_t, v).reshape(n_b, -1, n_layers, m).transpose(1, 2)
        counts = torch.bmm(member_t, valid.float())  # (B, G, M)
        self.sums[idx] += sums.double().cpu()  # (B, L+1, G, M)
        self.counts[idx] += counts.double().cpu()  # (B, G, M)

    def summaries(self, shift_k: int) -> list[StratumResult]:
        """Each stratum's layers (mean, 95% interval over sequences) and shift layers (from
        top{shift_k}_input/output, as for the whole run)."""
        out = []
        means, los, his = _mean_ci95(self.sums, self.counts)  # (L+1, G, M) each
        for g, stratum in enumerate(self.strata.strata):
            rows = []
            for layer in range(self.num_layers + 1):
                values, ci = {}, {}
                for m, name in enumerate(self.names):
                    stats = (float(x[layer, g, m]) for x in (means, los, his))
                    mean, lo, hi = (None if math.isnan(x) else x for x in stats)
                    values[name], ci[name] = mean, [lo, hi]
                rows.append(LayerRow(layer=layer, values=values, ci95=ci))
            # an empty stratum has no means (null in JSON): then no shift layer holds
            shift = M.shift_layers(
                [_or_nan(r.values[f"top{shift_k}_input"]) for r in rows],
                [_or_nan(r.values[f"top{shift_k}_output"]) for r in rows],
            )
            counts = self.counts[:, g, self.names.index(f"top{shift_k}_output")]
            out.append(
                StratumResult(
                    family=stratum.family,
                    name=stratum.name,
                    definition=stratum.definition,
                    num_positions=int(counts.sum()),
                    num_sequences=int((counts > 0).sum()),
                    layers=rows,
                    shift_layer=ShiftLayers.from_dict(shift),
                )
            )
        return out


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def model_strata(strata: StrataAccumulator | None, shift_k: int) -> list[StratumResult]:
    """The strata records of a (rank-summed) run's `LensRun.strata`; [] without strata."""
    return [] if strata is None else strata.summaries(shift_k)


def _mean_ci95(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`metrics.mean_ci95` for every layer, stratum and metric at once: sums (S, L+1, G, M),
    counts (S, G, M) -> mean, low, high (L+1, G, M); NaN where a stratum has no position,
    a zero-width interval where fewer than two sequences have one."""
    import torch

    total = counts.sum(0)  # (G, M)
    mean = sums.sum(0) / total  # NaN where total == 0
    used = counts > 0  # (S, G, M)
    n = used.sum(0).double()  # (G, M)
    per_seq = torch.where(used[:, None], sums / counts[:, None].clamp_min(1), 0.0)
    seq_mean = per_seq.sum(0) / n.clamp_min(1)
    dev = torch.where(used[:, None], per_seq - seq_mean, 0.0)
    var = (dev * dev).sum(0) / (n - 1).clamp_min(1)
    half = torch.where(n >= 2, 1.96 * var.sqrt() / n.sqrt(), 0.0)
    return mean, mean - half, mean + half
