"""Test-time residual attenuation: run a model with block l computing alpha * x + F_l(x).

F_l(x) = block_l(x) - x is everything block l adds to its input, so the attenuated block's
output is block_l(x) - (1 - alpha) * x: the same formula as `--residual fixed` in training,
applied to a model trained without it. A forward hook on the block makes the change and is
removed when the run ends, so one loaded model serves every (layer, alpha) pair.

The loss is the mean cross-entropy (nats) of the model's own next-token logits over the
positions the lens uses (i = s..T-2, s = 1 when every sequence starts with BOS), with top-1
accuracy; both with 95% intervals over sequences (docs/method.md). A loss change between
two runs on the same windows gets a paired interval (`paired_change`).

`scaled_residuals` applies a whole vector of coefficients, one per block, read at every
forward: `lens/learn_gate.py` trains the paper's gate through it on a frozen model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from causalshift.lens.metrics import first_position, mean_ci95
from causalshift.lens.models import LensModel


@dataclass(frozen=True)
class LossStats:
    """Next-token loss and top-1 accuracy of one run, each with its 95% interval."""

    loss: float
    loss_ci95: tuple[float, float]
    top1: float
    top1_ci95: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "loss_ci95": list(self.loss_ci95),
            "top1": self.top1,
            "top1_ci95": list(self.top1_ci95),
        }


def _attenuate_hook(alpha: float | Callable[[], Any]) -> Any:
    """A forward hook (with kwargs) that turns block(x) into block(x) - (1 - alpha) * x.

    alpha: a number, or a function returning it (a 0-d tensor may carry a gradient) that is
    called at every forward, so a learned coefficient is read afresh each step."""

    def hook(_module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        a = alpha() if callable(alpha) else alpha
        x = args[0] if args else kwargs["hidden_states"]
        if isinstance(a, Tensor) and a.device != x.device:
            a = a.to(x.device)  # a model spread over devices (device_map)
        if isinstance(output, (tuple, list)):
            h = output[0] - (1.0 - a) * x
            return type(output)((h, *output[1:]))
        return output - (1.0 - a) * x

    return hook


@contextlib.contextmanager
def _hooked(lm: LensModel, hooks: dict[int, Any]) -> Iterator[None]:
    """Register {block index 0..L-1: hook}; every hook is removed on exit, whatever happens.

    The hooks are registered before anything the caller adds inside (e.g. the lens' capture
    hooks), and forward hooks run in registration order, each seeing the output the previous
    one returned: a capture hook added inside sees the attenuated output."""
    handles = []
    try:
        for index, hook in hooks.items():
            handles.append(lm.blocks[index].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def attenuated(lm: LensModel, layer: int, alpha: float) -> Iterator[None]:
    """Within the block, block `layer` (1..L) computes alpha * x + F_layer(x); the hook is
    removed on exit, whatever happens inside."""
    if not 1 <= layer <= lm.num_layers:
        raise ValueError(f"layer {layer} is not in 1..{lm.num_layers}")
    with _hooked(lm, {layer - 1: _attenuate_hook(alpha)}):
        yield


@contextlib.contextmanager
def scaled_residuals(lm: LensModel, coefficients: Callable[[], Tensor]) -> Iterator[None]:
    """Within, every block l computes alpha_l * x + F_l(x) with alpha = coefficients(), an
    (L,) tensor read at each block of each forward (a gradient flows through it to whatever
    it is computed from). The hooks are removed on exit."""

    def block_alpha(index: int) -> Callable[[], Tensor]:
        return lambda: coefficients()[index]

    with _hooked(lm, {i: _attenuate_hook(block_alpha(i)) for i in range(lm.num_layers)}):
        yield


def _logits(out: Any) -> Tensor:
    """The (B, T, V) logits of a forward's output (transformers' output or our GPT's tuple)."""
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


def position_losses(lm: LensModel, batch: Tensor, s: int) -> tuple[Tensor, Tensor]:
    """(nll, hit), each (B, P): the cross-entropy (nats) of lm's own logits for t_{i+1} and
    whether its argmax is t_{i+1}, at positions i = s..T-2 (differentiable when grad is on)."""
    logits = _logits(lm.forward(batch))[:, s:-1].float()  # (B, P, V)
    target = batch[:, s + 1 :].to(logits.device)  # (B, P)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return nll, logits.argmax(-1) == target


@dataclass(frozen=True, eq=False)
class SequenceSums:
    """Per-sequence sums of one run: loss (nats) and top-1 hits over `counts` positions."""

    loss: Tensor  # (S,) float64
    hits: Tensor  # (S,)
    counts: Tensor  # (S,)

    def __eq__(self, other: object) -> bool:
        """Equal bit for bit (alpha = 1 must reproduce the baseline exactly)."""
        if not isinstance(other, SequenceSums):
            return NotImplemented
        pairs = ((self.loss, other.loss), (self.hits, other.hits), (self.counts, other.counts))
        return all(torch.equal(a, b) for a, b in pairs)

    __hash__ = None  # type: ignore[assignment]  # mutable tensors: not hashable

    def stats(self) -> LossStats:
        loss, lo, hi = mean_ci95(self.loss, self.counts)
        top1, tlo, thi = mean_ci95(self.hits, self.counts)
        return LossStats(loss, (lo, hi), top1, (tlo, thi))


@torch.inference_mode()
def sequence_sums(lm: LensModel, tokens: Tensor, batch_size: int) -> SequenceSums:
    """lm's next-token loss and top-1 hits on tokens (S, T), summed per sequence."""
    s = first_position(tokens, lm.bos_token_id)
    loss_sums, hit_sums = [], []
    for start in range(0, tokens.shape[0], batch_size):
        nll, hit = position_losses(lm, tokens[start : start + batch_size], s)
        loss_sums.append(nll.double().sum(1).cpu())
        hit_sums.append(hit.sum(1).cpu())
    counts = torch.full((tokens.shape[0],), tokens.shape[1] - 1 - s)
    return SequenceSums(torch.cat(loss_sums), torch.cat(hit_sums), counts)


def next_token_stats(lm: LensModel, tokens: Tensor, batch_size: int) -> LossStats:
    """Loss and top-1 accuracy of lm's own logits on tokens (S, T) at positions s..T-2."""
    return sequence_sums(lm, tokens, batch_size).stats()


def paired_change(after: SequenceSums, before: SequenceSums) -> dict[str, Any]:
    """after - before on the same windows: the change in loss and top-1, each with the 95%
    interval of the per-sequence differences (paired, so much tighter than the two runs'
    own intervals when the runs move together)."""
    loss, lo, hi = mean_ci95(after.loss - before.loss, after.counts)
    top1, tlo, thi = mean_ci95(after.hits.double() - before.hits.double(), after.counts)
    return {"loss": loss, "loss_ci95": [lo, hi], "top1": top1, "top1_ci95": [tlo, thi]}


@dataclass(frozen=True)
class Measured:
    """One run on the token windows: its per-sequence sums and, where the lens ran under the
    same intervention, the lens' shift layers (results.ShiftLayers as a dict)."""

    sums: SequenceSums
    shift_layer: dict[str, int | None] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The run's loss, top-1 and intervals, and its shift layers when measured."""
        d = self.sums.stats().as_dict()
        if self.shift_layer is not None:
            d["shift_layer"] = dict(self.shift_layer)
        return d


def intervene(
    lm: LensModel,
    tokens: Tensor,
    pairs: Sequence[tuple[int, float]],
    *,
    batch_size: int = 8,
    progress: bool = False,
    lens: Callable[[], dict[str, int | None]] | None = None,
    lens_runs: bool = False,
) -> tuple[Measured, list[Measured]]:
    """The baseline and, per (layer, alpha) pair in order, the run under that attenuation.

    lens: measures the shift layers of lm as it is when called; called once on the
    unchanged model and, with lens_runs, again inside each attenuation (the hook stays on
    while the lens captures the residual stream)."""
    from tqdm.auto import tqdm

    baseline = Measured(sequence_sums(lm, tokens, batch_size), lens() if lens else None)
    runs = []
    for layer, alpha in tqdm(pairs, desc="interventions", unit="run", disable=not progress):
        with attenuated(lm, layer, alpha):
            sums = sequence_sums(lm, tokens, batch_size)
            runs.append(Measured(sums, lens() if lens and lens_runs else None))
    return baseline, runs
