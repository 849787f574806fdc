"""The paper's gate learned on a frozen pretrained model (`causalshift intervene --learn-gate`).

Every weight of the model stays fixed; only theta (L,) is learned. The gate is the one of
`--residual gate` in training (`gpt.residual.Gate`, whose formula is reused, not copied):
p = softmax(theta / tau), alpha_l = 1 - p_l (1 - A), theta = 0 at the start (p uniform).
Block l computes alpha_l * x + F_l(x) through the hooks of `lens.intervene.scaled_residuals`
(block_l(x) - (1 - alpha_l) * x, as `intervene` does for one block), with alpha_l a tensor
that carries the gradient from the model's next-token loss back to theta.

The question it answers: where does a trained network tolerate, or profit from, residual
attenuation? The loss is measured before (p uniform) and after fitting on held-out windows
that the fit never saw (docs/method.md, "The gate learned on a frozen model").
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from causalshift.gpt.config import ResidualConfig
from causalshift.gpt.residual import Gate
from causalshift.lens.intervene import (
    SequenceSums,
    attenuated,
    paired_change,
    position_losses,
    scaled_residuals,
    sequence_sums,
)
from causalshift.lens.metrics import first_position
from causalshift.lens.models import LensModel

ShiftLens = Callable[[], dict[str, int | None]]


@dataclass(frozen=True)
class GateSettings:
    """What the fit needs: the gate's floor A and temperature tau, and the optimizer's run."""

    alpha: float = 0.5
    tau: float = 1.0
    steps: int = 24
    lr: float = 0.2
    batch_size: int = 2
    seed: int = 0


class FrozenGate:
    """theta (L,), a leaf tensor, and the coefficients `--residual gate` makes of it."""

    def __init__(self, num_layers: int, settings: GateSettings, device: Any = "cpu") -> None:
        cfg = ResidualConfig(mode="gate", alpha=settings.alpha, tau=settings.tau)
        self.mode = Gate(cfg, num_layers)
        # The mode reads its tensors from a holder by name: this object is the holder.
        self.theta = self.mode.initial_parameters()["theta"].to(device).requires_grad_(True)

    def p(self) -> Tensor:
        """(L,) the gate's distribution over blocks."""
        return self.mode.gate_p(self)

    def coefficients(self) -> Tensor:
        """(L,) alpha_l = 1 - p_l (1 - A)."""
        return self.mode.expected_coefficients(self)


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode with requires_grad False on every parameter; both restored
    on exit (a model the user passed in is handed back as it came)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def batch_indices(num_seqs: int, batch_size: int, steps: int, seed: int) -> list[Tensor]:
    """Per step, the fit windows it reads: epochs of a seeded permutation, cut into batches
    of min(batch_size, num_seqs) (a partial batch at an epoch's end is skipped)."""
    gen = torch.Generator().manual_seed(seed)
    size = min(batch_size, num_seqs)
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(num_seqs, generator=gen)
        out += [perm[i : i + size] for i in range(0, num_seqs - size + 1, size)]
    return out[:steps]


@dataclass
class GateFit:
    """A fitted gate: its theta, p and coefficients, the p of every step, the time taken."""

    theta: Tensor
    p: Tensor
    coefficients: Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (all threads): a rate under load


def fit_gate(
    lm: LensModel, tokens: Tensor, settings: GateSettings, *, progress: bool = False
) -> GateFit:
    """Learn theta on tokens (S, T) by the mean next-token cross-entropy of lm's own output
    (positions s..T-2), Adam on theta only, the model frozen. history: per step the train
    batch's loss (under the p before the update) and p after the update."""
    from tqdm.auto import tqdm

    gate = FrozenGate(lm.num_layers, settings, lm.device)
    opt = torch.optim.Adam([gate.theta], lr=settings.lr)
    s = first_position(tokens, lm.bos_token_id)
    batches = batch_indices(tokens.shape[0], settings.batch_size, settings.steps, settings.seed)
    history: list[dict[str, Any]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(batches, desc=f"gate {lm.name}", unit="step", disable=not progress)
    with frozen(lm.model), scaled_residuals(lm, gate.coefficients), torch.enable_grad():
        for step, idx in enumerate(bar, start=1):
            nll, _ = position_losses(lm, tokens[idx], s)
            loss = nll.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            p, value = gate.p().detach(), float(loss.detach())
            history.append({"step": step, "train_loss": value, "p": p.tolist()})
            bar.set_postfix(loss=f"{value:.3f}", top=int(p.argmax()) + 1)
    theta = gate.theta.detach().clone()
    with torch.no_grad():
        p, coef = gate.p(), gate.coefficients()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return GateFit(theta, p, coef, history, seconds, cpu)


def under_coefficients(
    lm: LensModel, coefficients: Tensor, tokens: Tensor, batch_size: int
) -> SequenceSums:
    """lm's per-sequence loss sums on tokens with block l scaled by coefficients[l]."""
    with scaled_residuals(lm, lambda: coefficients):
        return sequence_sums(lm, tokens, batch_size)


def _with_shift(sums: SequenceSums, shift: dict[str, int | None] | None) -> dict[str, Any]:
    d = sums.stats().as_dict()
    if shift is not None:
        d["shift_layer"] = dict(shift)
    return d


def learn_gate(
    lm: LensModel,
    fit_tokens: Tensor,
    heldout: Tensor,
    settings: GateSettings,
    *,
    lens: ShiftLens | None = None,
    lens_after: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit the gate on fit_tokens and measure on the held-out windows: the unchanged model,
    the gate at its start (p uniform), the fitted gate, and the one-block cut at the fitted
    gate's argmax (A there, 1 elsewhere). lens: shift layers of lm as it is when called (on
    the held-out windows), run on the unchanged model and, with lens_after, under the
    fitted gate. Returns learn_gate.json's gate, heldout, history and fit sections."""
    bs = settings.batch_size
    unchanged = sequence_sums(lm, heldout, bs)
    shift = lens() if lens else None
    start = FrozenGate(lm.num_layers, settings, lm.device)
    with torch.no_grad():
        p0, coef0 = start.p(), start.coefficients()
    before = under_coefficients(lm, coef0, heldout, bs)
    fit = fit_gate(lm, fit_tokens, settings, progress=progress)
    after = under_coefficients(lm, fit.coefficients, heldout, bs)
    shift_after = None
    if lens and lens_after:
        with scaled_residuals(lm, lambda: fit.coefficients):
            shift_after = lens()
    top = int(fit.p.argmax()) + 1
    with attenuated(lm, top, settings.alpha):
        cut = sequence_sums(lm, heldout, bs)
    steps = max(len(fit.history), 1)
    return {
        "gate": {
            "alpha": settings.alpha,
            "tau": settings.tau,
            "p": fit.p.tolist(),
            "theta": fit.theta.tolist(),
            "coefficients": fit.coefficients.tolist(),
            "argmax_layer": top,
            "p_init": p0.tolist(),
        },
        "heldout": {
            "unchanged": _with_shift(unchanged, shift),
            "before": before.stats().as_dict(),
            "after": _with_shift(after, shift_after),
            "argmax_cut": {"layer": top, **cut.stats().as_dict()},
            "after_minus_before": paired_change(after, before),
            "after_minus_unchanged": paired_change(after, unchanged),
            "argmax_cut_minus_unchanged": paired_change(cut, unchanged),
        },
        "history": fit.history,
        "fit": {
            "num_sequences": int(fit_tokens.shape[0]),
            "steps": settings.steps,
            "lr": settings.lr,
            "batch_size": min(bs, int(fit_tokens.shape[0])),
            "seed": settings.seed,
            "optimizer": "Adam on theta only; every model weight frozen",
            "seconds": fit.seconds,
            "seconds_per_step": fit.seconds / steps,
            "cpu_seconds_per_step": fit.cpu_seconds / steps,
        },
    }
