"""Test-time residual attenuation: run a model with block l computing alpha * x + F_l(x).

F_l(x) = block_l(x) - x is everything block l adds to its input, so the attenuated block's
output is block_l(x) - (1 - alpha) * x: the same formula as `--residual fixed` in training,
applied to a model trained without it. A forward hook on the block makes the change and is
removed when the run ends, so one loaded model serves every (layer, alpha) pair.

The loss is the mean cross-entropy (nats) of the model's own next-token logits over the
positions the lens uses (i = s..T-2, s = 1 when every sequence starts with BOS), with top-1
accuracy; both with 95% intervals over sequences (docs/method.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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


def _attenuate_hook(alpha: float) -> Any:
    """A forward hook (with kwargs) that turns block(x) into block(x) - (1 - alpha) * x."""

    def hook(_module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, (tuple, list)):
            h = output[0] - (1.0 - alpha) * x
            return type(output)((h, *output[1:]))
        return output - (1.0 - alpha) * x

    return hook


@contextlib.contextmanager
def attenuated(lm: LensModel, layer: int, alpha: float) -> Iterator[None]:
    """Within the block, block `layer` (1..L) computes alpha * x + F_layer(x); the hook is
    removed on exit, whatever happens inside."""
    if not 1 <= layer <= lm.num_layers:
        raise ValueError(f"layer {layer} is not in 1..{lm.num_layers}")
    handle = lm.blocks[layer - 1].register_forward_hook(_attenuate_hook(alpha), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _logits(out: Any) -> Tensor:
    """The (B, T, V) logits of a forward's output (transformers' output or our GPT's tuple)."""
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.inference_mode()
def next_token_stats(lm: LensModel, tokens: Tensor, batch_size: int) -> LossStats:
    """Loss and top-1 accuracy of lm's own logits on tokens (S, T) at positions s..T-2."""
    s = first_position(tokens, lm.bos_token_id)
    loss_sums, hit_sums = [], []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        logits = _logits(lm.forward(batch))[:, s:-1].float()  # (B, P, V)
        target = batch[:, s + 1 :].to(logits.device)  # (B, P)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, reduction="none"
        )  # (B, P)
        loss_sums.append(nll.sum(1).cpu())
        hit_sums.append((logits.argmax(-1) == target).sum(1).cpu())
    counts = torch.full((tokens.shape[0],), tokens.shape[1] - 1 - s)
    loss, lo, hi = mean_ci95(torch.cat(loss_sums), counts)
    top1, tlo, thi = mean_ci95(torch.cat(hit_sums), counts)
    return LossStats(loss, (lo, hi), top1, (tlo, thi))


def intervene(
    lm: LensModel,
    tokens: Tensor,
    pairs: Sequence[tuple[int, float]],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[LossStats, list[LossStats]]:
    """The baseline and, per (layer, alpha) pair in order, the stats under that attenuation."""
    from tqdm.auto import tqdm

    baseline = next_token_stats(lm, tokens, batch_size)
    runs = []
    for layer, alpha in tqdm(pairs, desc="interventions", unit="run", disable=not progress):
        with attenuated(lm, layer, alpha):
            runs.append(next_token_stats(lm, tokens, batch_size))
    return baseline, runs
