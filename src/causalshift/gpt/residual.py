"""Residual modes: a registry with one class per mode, each giving alpha_l for block l = 1..L.

Block l computes x_next = alpha_l * x + F_l(x). The modes:

- `none`:      alpha_l = 1                                   (plain GPT-2)
- `fixed`:     alpha_K = A, alpha_l = 1 for l != K           (a buffer, not learned)
- `gate`:      p = softmax(theta / tau), alpha_l = 1 - p_l (1 - A), theta in R^L init 0
- `gate-hard`: training: a one-hot cut c ~ p by straight-through Gumbel-softmax,
               alpha_l = 1 - c_l (1 - A); evaluation: the expected alpha (the gate formula)
- `scalar`:    alpha_l a free parameter, init 1

Design. `causalshift report`, the command-line help and config validation need each mode's
name, label, report order and run-name slug, and must not import torch; the model needs the
mode's tensors. So a mode is a plain class (`ResidualMode`): its metadata are class
attributes and classmethods, and its tensor methods import torch when they are called. The
`nn.Module` holding a mode's tensors is the generic `causalshift.gpt.model.Residual`: it
registers the tensors the mode declares (`initial_parameters`, `initial_buffers`) under their
names, so inside a GPT they are `residual.theta`, `residual.alpha` (the optimizer gives them
their own group) and the non-persistent buffers `residual.coef`, `residual.noise`; its
`coefficients()`, `gate_p()` and `begin_step()` call the mode with itself as argument.
The declared values are the initialisation: the GPT starts from them, and re-initialisation
(`Residual.reset_parameters`, called by transformers' `_init_weights`) copies them again.

A new mode is one class here, decorated with `@register`, plus its test:

    @register
    class Half(ResidualMode):
        name, order, help = "half", 5, "alpha_l = 1/2 for every block"

        def initial_buffers(self) -> dict[str, Tensor]:
            import torch

            return {"coef": torch.full((self.n_layer,), 0.5, device="cpu")}

        def expected_coefficients(self, r) -> Tensor:
            return r.coef

Everything else (config validation, the GPT, HF export, `--residual` help, report labels and
order, run names) reads the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from causalshift.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

# The module holding a mode's tensors: causalshift.gpt.model.Residual (an nn.Module; not
# imported here, it needs torch). Mode methods read their tensors from it by name.
Holder = Any


class ResidualFields(Protocol):
    """The fields of `causalshift.gpt.config.ResidualConfig` a mode reads."""

    mode: str
    cut_layer: int | None
    alpha: float
    tau: float


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def alpha_suffix(alpha: object) -> str:
    """' (alpha=0.5)' for a non-zero number, else '' (labels omit the default A = 0)."""
    return f" (alpha={alpha:g})" if _number(alpha) and alpha != 0 else ""


OTHER_ORDER = 9  # report position of labels no mode made ('other', 'unknown')


class ResidualMode:
    """One residual mode: metadata (torch-free) and its coefficients (torch inside methods).

    An instance belongs to one model (`n_layer` blocks, config `cfg`); `r` in the tensor
    methods is the `Residual` module holding the tensors declared by `initial_parameters`
    and `initial_buffers` (as attributes of the same names) and its `training` flag."""

    name: ClassVar[str] = ""  # the value of --residual and of "mode" in config.json
    title: ClassVar[str | None] = None  # first word of its report label (default: name)
    order: ClassVar[int] = OTHER_ORDER  # position in report tables (none 0, fixed 1, ...)
    learned: ClassVar[bool] = False  # has learned tensors (reports list its runs apart)
    takes_cut_layer: ClassVar[bool] = False  # --cut-layer K is meaningful (and then needed)
    help: ClassVar[str] = ""  # one line: the coefficients

    def __init__(self, cfg: ResidualFields, n_layer: int) -> None:
        self.n_layer = n_layer
        self.cut_layer = cfg.cut_layer
        self.alpha = float(cfg.alpha)
        self.tau = float(cfg.tau)

    # ---- metadata (no torch) -------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: ResidualFields) -> None:
        """Raise UserError when `cfg` sets a field this mode cannot use."""
        if cfg.cut_layer is not None and not cls.takes_cut_layer:
            # Harmless but surely a mistake on the command line: say so.
            takers = " | ".join(repr(m.name) for m in MODES.values() if m.takes_cut_layer)
            raise UserError(f"--cut-layer applies to residual mode {takers}, not {cfg.mode!r}")

    @classmethod
    def heading(cls) -> str:
        """The first word of every label of this mode ('baseline' for `none`)."""
        return cls.title or cls.name

    @classmethod
    def label(cls, cut_layer: int | None, alpha: object) -> str:
        """Name in report tables and legends ('baseline', 'fixed K=4 (alpha=0.5)', ...)."""
        return cls.heading()

    @classmethod
    def slug(cls, cut_layer: int | None, alpha: float) -> str:
        """Run-name part ('none', 'fixed-L4-a0', 'gate', ...)."""
        return cls.name

    # ---- tensors (torch imported by the implementations) ---------------------------------

    def initial_parameters(self) -> dict[str, Tensor]:
        """Learned tensors (name -> initial value); they join the optimizer's residual group."""
        return {}

    def initial_buffers(self) -> dict[str, Tensor]:
        """Non-persistent tensors (name -> initial value): derived from the config, not saved."""
        return {}

    def expected_coefficients(self, r: Holder) -> Tensor:
        """(L,) alpha at evaluation time."""
        raise NotImplementedError

    def coefficients(self, r: Holder) -> Tensor:
        """(L,) alpha used by the forward pass (may depend on `r.training`)."""
        return self.expected_coefficients(r)

    def gate_p(self, r: Holder) -> Tensor | None:
        """(L,) the gate distribution p over layers, or None for modes without a gate."""
        return None

    def begin_step(self, r: Holder, step: int, seed: int) -> None:
        """Called once per optimizer step by the trainer; only stochastic modes use it."""


MODES: dict[str, type[ResidualMode]] = {}


def register(cls: type[ResidualMode]) -> type[ResidualMode]:
    """Class decorator: add a mode to `MODES` under its `name` (a name is taken once)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if MODES.get(cls.name, cls) is not cls:
        raise ValueError(f"residual mode {cls.name!r} is already registered")
    MODES[cls.name] = cls
    return cls


def get_mode(name: str) -> type[ResidualMode]:
    """The mode class called `name`; UserError naming the choices otherwise."""
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise UserError(
            f"unknown residual mode {name!r}; choose one of {', '.join(MODES)}"
        ) from None


def mode_choices() -> str:
    """'none | fixed | gate | gate-hard | scalar': the modes, for help texts."""
    return " | ".join(MODES)


def learned_modes() -> tuple[str, ...]:
    """Names of the modes with learned tensors ('gate', 'gate-hard', 'scalar')."""
    return tuple(name for name, m in MODES.items() if m.learned)


def label_order(label: str) -> int:
    """Report order of a label made by some mode's `label` (OTHER_ORDER for other text)."""
    head = label.split(" ")[0]
    return next((m.order for m in MODES.values() if m.heading() == head), OTHER_ORDER)


def residual_parameter_names(model: Any) -> set[str]:
    """Names of the residual mode's parameters in `model` (e.g. {'residual.theta'})."""
    return {name for name, _ in model.named_parameters() if name.startswith("residual.")}


# ---- the modes -------------------------------------------------------------------------------


class Constant(ResidualMode):
    """Coefficients that never change: ones, A at the cut layer if there is one (a buffer)."""

    def initial_buffers(self) -> dict[str, Tensor]:
        import torch

        # On CPU even under a meta-device context (transformers' lazy init): it is data.
        coef = torch.ones(self.n_layer, device="cpu")
        if self.cut_layer is not None:
            coef[self.cut_layer - 1] = self.alpha
        return {"coef": coef}

    def expected_coefficients(self, r: Holder) -> Tensor:
        return r.coef


@register
class Baseline(Constant):
    """`none`: alpha_l = 1."""

    name, title, order = "none", "baseline", 0
    help = "alpha_l = 1 (plain GPT-2)"


@register
class Fixed(Constant):
    """`fixed`: alpha_K = A at the cut layer K, 1 elsewhere (a buffer, not learned)."""

    name, order, takes_cut_layer = "fixed", 1, True
    help = "alpha_K = A, alpha_l = 1 for l != K (A = 0: full cut)"

    @classmethod
    def validate(cls, cfg: ResidualFields) -> None:
        if cfg.cut_layer is None:
            raise UserError("residual mode 'fixed' needs a cut layer (--cut-layer K)")

    @classmethod
    def label(cls, cut_layer: int | None, alpha: object) -> str:
        return f"{cls.heading()} K={cut_layer}" + alpha_suffix(alpha)

    @classmethod
    def slug(cls, cut_layer: int | None, alpha: float) -> str:
        return f"{cls.name}-L{cut_layer}-a{alpha:g}"


@register
class Gate(ResidualMode):
    """`gate`: a learned distribution p over layers says where to attenuate the residual."""

    name, order, learned = "gate", 2, True
    help = "p = softmax(theta / tau), alpha_l = 1 - p_l (1 - A); theta learned, init 0"

    @classmethod
    def label(cls, cut_layer: int | None, alpha: object) -> str:
        return cls.heading() + alpha_suffix(alpha)

    def initial_parameters(self) -> dict[str, Tensor]:
        import torch

        return {"theta": torch.zeros(self.n_layer)}

    def gate_p(self, r: Holder) -> Tensor:
        return (r.theta / self.tau).softmax(dim=-1)  # = F.softmax, without importing torch

    def mix(self, p: Tensor) -> Tensor:
        """1 - p (1 - A), written so that p = 1 gives exactly A and p = 0 exactly 1."""
        return (1.0 - p) + p * self.alpha

    def expected_coefficients(self, r: Holder) -> Tensor:
        return self.mix(self.gate_p(r))


@register
class GateHard(Gate):
    """`gate-hard`: the gate's p, but training cuts exactly one sampled layer per step.

    Straight-through Gumbel-softmax: with Gumbel noise g, the forward pass uses the one-hot
    c = onehot(argmax(theta / tau + g)) (a sample from p), the backward pass the gradient
    of the soft relaxation softmax(theta / tau + g). The noise is drawn once per optimizer
    step from a generator seeded by (seed, step) when the trainer calls `begin_step`, so
    all micro-batches and all DDP ranks cut the same layer and a resumed run draws the same
    cuts; without `begin_step`, each training forward draws fresh noise from torch's RNG.
    """

    name, order = "gate-hard", 3
    help = "training: one layer cut per step, sampled from the gate's p; eval: as gate"

    def initial_buffers(self) -> dict[str, Tensor]:
        import torch

        return {"noise": torch.empty(0)}  # this step's Gumbel noise, once drawn

    def begin_step(self, r: Holder, step: int, seed: int) -> None:
        import torch

        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) + 0x6A7E) % 2**62)
        u = torch.rand(self.n_layer, generator=gen, dtype=torch.float64)
        g = -torch.log(-torch.log(u.clamp_min(1e-20)))  # Gumbel(0, 1)
        g = g.to(device=r.theta.device, dtype=r.theta.dtype)
        if r.noise.shape == g.shape:
            r.noise.copy_(g)  # in place: a compiled model sees the same buffer
        else:
            r.noise = g

    def sample_cut(self, r: Holder) -> Tensor:
        """(L,) one-hot in the forward pass, soft gradient to theta in the backward pass."""
        import torch
        import torch.nn.functional as F

        logits = r.theta / self.tau
        if r.noise.numel() == self.n_layer:
            g = r.noise
        else:
            g = -torch.empty_like(logits).exponential_().log()  # Gumbel(0, 1)
        soft = F.softmax(logits + g, dim=-1)
        hard = F.one_hot(soft.argmax(), self.n_layer).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly one-hot forward

    def coefficients(self, r: Holder) -> Tensor:
        if r.training:
            return self.mix(self.sample_cut(r))
        return self.expected_coefficients(r)


@register
class Scalar(ResidualMode):
    """`scalar`: one free learnable alpha_l per layer, init 1 (identical to `none` at init)."""

    name, order, learned = "scalar", 4, True
    help = "alpha_l learned, init 1"

    def initial_parameters(self) -> dict[str, Tensor]:
        import torch

        return {"alpha": torch.ones(self.n_layer)}

    def expected_coefficients(self, r: Holder) -> Tensor:
        return r.alpha
