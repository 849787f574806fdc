"""Per-position records of a lens run: `positions.parquet` (`analyze --save-positions`).

One row per model x sequence x position x layer: the token ids and strings of t_i, t_{i+1}
and t_{i+2}, the exact ranks of the three targets under the lens logits, the cosines and the
projection. The engine collects the tensors batch by batch (`PositionRecorder`, only when
asked: the default run keeps nothing per position); `position_table` turns one model's
records into an Arrow table (`model_positions`), which the model's
`ModelResult.positions` holds until `AnalyzeResult.write` writes positions.parquet.

The ranks are exact (not capped at max(topk)): with positions on, `run_lens` decodes with
max_rank = the vocabulary size, so that no row retires before its rank is known. That is
slower (every position and layer scans the vocabulary until no later entry can beat its
targets); docs/method.md says by how much and how large the file gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from torch import Tensor

    from causalshift.lens.models import LensModel

# Per-position values copied from the metric columns (null where the metric's positions
# leave the position out: the projection where t_i == t_{i+1}).
VALUE_COLUMNS = ("cos_input", "cos_output", "cos_random", "projection")
RANK_COLUMNS = ("rank_input", "rank_output", "rank_next2")


@dataclass
class PositionRecorder:
    """The per-position tensors of a run, batch by batch (CPU): sequences (B,), ranks and
    values (L+1, B, P) each; rank_next2 is -1 where t_{i+2} is past the end."""

    batches: list[dict[str, Tensor]] = field(default_factory=list)

    def add(
        self,
        idx: Tensor,
        ranks: dict[str, Tensor],
        values: Tensor,
        valid: Tensor,
        names: Sequence[str],
    ) -> None:
        """One batch: idx (B,) sequences, ranks (L+1, B, P) per RANK_COLUMNS name,
        values (L+1, B, P, M) in metric-column order `names`, valid (B, P, M)."""
        import torch

        batch: dict[str, Tensor] = {"sequence": idx.cpu()}
        batch.update({k: v.to(torch.int32).cpu() for k, v in ranks.items()})
        for name in VALUE_COLUMNS:
            j = names.index(name)
            v = torch.where(valid[None, ..., j], values[..., j], torch.nan)
            batch[name] = v.float().cpu()
        self.batches.append(batch)

    def records(self) -> PositionRecords | None:
        """Everything recorded, sequences in ascending order; None when nothing was."""
        import torch

        if not self.batches:
            return None
        seqs = torch.cat([b["sequence"] for b in self.batches])
        order = torch.argsort(seqs)
        cols = {
            k: torch.cat([b[k] for b in self.batches], dim=1)[:, order]
            for k in self.batches[0]
            if k != "sequence"
        }
        return PositionRecords(sequences=seqs[order], columns=cols)


@dataclass
class PositionRecords:
    """One model's per-position tensors: sequences (S',) and columns (L+1, S', P)."""

    sequences: Tensor
    columns: dict[str, Tensor]

    @staticmethod
    def merge(parts: Sequence[PositionRecords | None]) -> PositionRecords | None:
        """The records of several torchrun ranks as one, sequences in ascending order."""
        import torch

        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        seqs = torch.cat([p.sequences for p in parts])
        order = torch.argsort(seqs)
        cols = {
            k: torch.cat([p.columns[k] for p in parts], dim=1)[:, order] for k in parts[0].columns
        }
        return PositionRecords(seqs[order], cols)


def position_table(
    records: PositionRecords,
    tokens: Tensor,
    first: int,
    model: str,
    decode: Callable[[int], str] | None = None,
) -> pa.Table:
    """One model's rows, ordered by sequence, position, layer. tokens (S, T) are the run's
    windows, first its first position s; decode(id) gives a token's string
    (tokenizer.decode([id]); None: the strings are null)."""
    import numpy as np
    import pyarrow as pa
    import torch

    n_layers, n_seqs, n_pos = records.columns["rank_input"].shape
    windows = tokens[records.sequences]  # (S', T)
    ids = [windows[:, first + j : first + j + n_pos] for j in range(2)]
    next2 = torch.full_like(ids[0], -1)
    next2[:, : n_pos - 1] = windows[:, first + 2 :]
    ids.append(next2)

    def per_row(x: Tensor) -> np.ndarray:  # (S', P) -> one value per row (layers fastest)
        return np.repeat(x.reshape(-1).numpy(), n_layers)

    def layered(x: Tensor) -> np.ndarray:  # (L+1, S', P) -> rows
        return x.permute(1, 2, 0).reshape(-1).numpy()

    n_rows = n_seqs * n_pos * n_layers
    data: dict[str, Any] = {
        "model": pa.DictionaryArray.from_arrays(np.zeros(n_rows, np.int32), [model]),
        "sequence": per_row(records.sequences[:, None].expand(n_seqs, n_pos).contiguous()),
        "position": per_row((torch.arange(n_pos) + first).expand(n_seqs, n_pos).contiguous()),
        "layer": np.tile(np.arange(n_layers, dtype=np.int32), n_seqs * n_pos),
    }
    for name, t in zip(("input", "output", "next2"), ids, strict=True):
        data[f"{name}_id"] = _nullable(per_row(t), per_row(t) < 0)
    for name, t in zip(("input", "output", "next2"), ids, strict=True):
        data[f"{name}_token"] = _token_strings(per_row(t), decode)
    for name in RANK_COLUMNS:
        r = layered(records.columns[name])
        data[name] = _nullable(r, r < 0)
    for name in VALUE_COLUMNS:
        v = layered(records.columns[name])
        data[name] = _nullable(v, np.isnan(v))
    return pa.table(data)


def _nullable(values: Any, null: Any) -> pa.Array:
    import pyarrow as pa

    return pa.array(values, mask=null)


def _token_strings(ids: Any, decode: Callable[[int], str] | None) -> pa.Array:
    """Token strings as a dictionary column (each distinct token decoded once); null where
    the id is -1 (past the end) or there is no tokenizer."""
    import numpy as np
    import pyarrow as pa

    uniq, inverse = np.unique(ids, return_inverse=True)
    strings = [None if (t < 0 or decode is None) else decode(int(t)) for t in uniq]
    # ids that decode alike share one dictionary entry (the dictionary must be unique)
    return pa.array(strings, pa.string()).take(pa.array(inverse)).dictionary_encode()


def model_positions(
    records: PositionRecords | None, first: int, lm: LensModel, tokens: Tensor
) -> pa.Table | None:
    """The positions table of a (rank-gathered) run of `lm` on `tokens` from its
    `LensRun.positions` and `first_position`; None without records. Token strings are
    tokenizer.decode([id]) (null without a tokenizer)."""
    if records is None:
        return None
    tok = lm.tokenizer
    decode = None if tok is None else (lambda i: tok.decode([i]))
    return position_table(records, tokens, first, lm.name, decode)
