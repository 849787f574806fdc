"""Residual strategies: each yields one coefficient alpha_l per block (l = 1..L).

Block l computes x_next = alpha_l * x + F_l(x). The strategies:

- `none`:      alpha_l = 1                                   (plain GPT-2)
- `fixed`:     alpha_K = A, alpha_l = 1 for l != K           (a buffer, not learned)
- `gate`:      p = softmax(theta / tau), alpha_l = 1 - p_l (1 - A), theta in R^L init 0
- `gate-hard`: training: a one-hot cut c ~ p by straight-through Gumbel-softmax,
               alpha_l = 1 - c_l (1 - A); evaluation: the expected alpha (the gate formula)
- `scalar`:    alpha_l a free parameter, init 1

Learnable tensors are `theta` (gate, gate-hard) and `alpha` (scalar); inside a GPT they are
named `residual.theta` / `residual.alpha`, so the optimizer can give them their own group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from causalshift.gpt.config import ResidualConfig


class Residual(nn.Module):
    """Base class: the (L,) residual coefficients of a model with L blocks."""

    def __init__(self, n_layer: int) -> None:
        super().__init__()
        self.n_layer = n_layer

    def coefficients(self) -> Tensor:
        """(L,) alpha used by the forward pass (may depend on `self.training`)."""
        return self.expected_coefficients()

    def expected_coefficients(self) -> Tensor:
        """(L,) alpha at evaluation time."""
        raise NotImplementedError

    def gate_p(self) -> Tensor | None:
        """(L,) the gate distribution p over layers, or None for modes without a gate."""
        return None

    def begin_step(self, step: int, seed: int = 0) -> None:
        """Called once per optimizer step by the trainer; only stochastic modes use it."""

    def forward(self) -> Tensor:
        return self.coefficients()


class Constant(Residual):
    """`none` and `fixed`: coefficients that never change (a non-persistent buffer)."""

    def __init__(self, n_layer: int, cut_layer: int | None = None, alpha: float = 1.0) -> None:
        super().__init__(n_layer)
        self.cut_layer = cut_layer
        self.cut_alpha = float(alpha)
        self.register_buffer("coef", self.default_coefficients(), persistent=False)

    def default_coefficients(self) -> Tensor:
        """(L,) ones, with A at the cut layer (on CPU)."""
        coef = torch.ones(self.n_layer, device="cpu")
        if self.cut_layer is not None:
            coef[self.cut_layer - 1] = self.cut_alpha
        return coef

    def expected_coefficients(self) -> Tensor:
        return self.coef


class Gate(Residual):
    """`gate`: a learned distribution p over layers says where to attenuate the residual."""

    def __init__(self, n_layer: int, alpha: float = 0.0, tau: float = 1.0) -> None:
        super().__init__(n_layer)
        self.floor = float(alpha)
        self.tau = float(tau)
        self.theta = nn.Parameter(torch.zeros(n_layer))

    def gate_p(self) -> Tensor:
        return F.softmax(self.theta / self.tau, dim=-1)

    def _alpha(self, p: Tensor) -> Tensor:
        # 1 - p (1 - A), written so that p = 1 gives exactly A and p = 0 exactly 1.
        return (1.0 - p) + p * self.floor

    def expected_coefficients(self) -> Tensor:
        return self._alpha(self.gate_p())


class GateHard(Gate):
    """`gate-hard`: the gate's p, but training cuts exactly one sampled layer per step.

    Straight-through Gumbel-softmax: with Gumbel noise g, the forward pass uses the one-hot
    c = onehot(argmax(theta / tau + g)) (a sample from p), the backward pass the gradient
    of the soft relaxation softmax(theta / tau + g). The noise is drawn once per optimizer
    step from a generator seeded by (seed, step) when the trainer calls `begin_step`, so
    all micro-batches and all DDP ranks cut the same layer and a resumed run draws the same
    cuts; without `begin_step`, each training forward draws fresh noise from torch's RNG.
    """

    def __init__(self, n_layer: int, alpha: float = 0.0, tau: float = 1.0) -> None:
        super().__init__(n_layer, alpha, tau)
        self.register_buffer("noise", torch.empty(0), persistent=False)

    def begin_step(self, step: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) + 0x6A7E) % 2**62)
        u = torch.rand(self.n_layer, generator=gen, dtype=torch.float64)
        g = -torch.log(-torch.log(u.clamp_min(1e-20)))  # Gumbel(0, 1)
        g = g.to(device=self.theta.device, dtype=self.theta.dtype)
        if self.noise.shape == g.shape:
            self.noise.copy_(g)  # in place: a compiled model sees the same buffer
        else:
            self.noise = g

    def sample_cut(self) -> Tensor:
        """(L,) one-hot in the forward pass, soft gradient to theta in the backward pass."""
        logits = self.theta / self.tau
        if self.noise.numel() == self.n_layer:
            g = self.noise
        else:
            g = -torch.empty_like(logits).exponential_().log()  # Gumbel(0, 1)
        soft = F.softmax(logits + g, dim=-1)
        hard = F.one_hot(soft.argmax(), self.n_layer).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly one-hot forward

    def coefficients(self) -> Tensor:
        if self.training:
            return self._alpha(self.sample_cut())
        return self.expected_coefficients()


class Scalar(Residual):
    """`scalar`: one free learnable alpha_l per layer, init 1 (identical to `none` at init)."""

    def __init__(self, n_layer: int) -> None:
        super().__init__(n_layer)
        self.alpha = nn.Parameter(torch.ones(n_layer))

    def expected_coefficients(self) -> Tensor:
        return self.alpha


def build_residual(cfg: ResidualConfig, n_layer: int) -> Residual:
    """The strategy module for `cfg` in a model with `n_layer` blocks."""
    if cfg.mode == "none":
        return Constant(n_layer)
    if cfg.mode == "fixed":
        return Constant(n_layer, cfg.cut_layer, cfg.alpha)
    if cfg.mode == "gate":
        return Gate(n_layer, cfg.alpha, cfg.tau)
    if cfg.mode == "gate-hard":
        return GateHard(n_layer, cfg.alpha, cfg.tau)
    if cfg.mode == "scalar":
        return Scalar(n_layer)
    raise ValueError(f"unknown residual mode {cfg.mode!r}")  # ResidualConfig validates first


def residual_parameter_names(model: nn.Module) -> set[str]:
    """Names of the residual strategy's parameters in `model` (e.g. {'residual.theta'})."""
    return {name for name, _ in model.named_parameters() if name.startswith("residual.")}
