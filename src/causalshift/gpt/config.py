"""Model configs: the GPT-2 shape and the residual mode, plus named presets.

`GPTConfig.to_dict()` is what a run directory stores under the top-level "model" key of
`config.json`; `GPTConfig.from_dict` reads it back. Torch-free: the modes come from the
registry in `causalshift.gpt.residual`, which validates each mode's own fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from causalshift.config import check_fields, option
from causalshift.errors import UserError
from causalshift.gpt.residual import get_mode, mode_choices


@dataclass(frozen=True)
class ResidualConfig:
    """How block l scales its residual input: x_next = alpha_l * x + F_l(x)."""

    mode: str = option("none", f"Residual mode: {mode_choices()}.")
    cut_layer: int | None = option(None, "1-based block whose residual is cut (mode fixed).")
    alpha: float = option(
        0.0,
        "A: residual coefficient at the cut (fixed), or floor of the gate: 1 - p_l (1 - A).",
        ge=0,
    )
    tau: float = option(1.0, "Gate softmax temperature: p = softmax(theta / tau).", gt=0)

    def __post_init__(self) -> None:
        mode = get_mode(self.mode)
        check_fields(self)  # finite alpha >= 0, tau > 0, an integer cut layer
        mode.validate(self)


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2 shape (nanoGPT field names) and the residual variant."""

    n_layer: int = option(12, "Transformer blocks.", ge=1)
    n_head: int = option(12, "Attention heads per block.", ge=1)
    n_embd: int = option(768, "Model width d.", ge=1)
    block_size: int = option(1024, "Context length (positions).", ge=1)
    vocab_size: int = option(50257, "Vocabulary size (GPT-2 BPE: 50257).", ge=1)
    dropout: float = option(
        0.0, "Dropout on embeddings, attention and residual branches.", ge=0, lt=1
    )
    bias: bool = option(True, "Biases in Linear layers and LayerNorms (GPT-2: true).")
    residual: ResidualConfig = option(ResidualConfig(), "Residual variant.", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)  # positive integer sizes, dropout in [0, 1)
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not isinstance(self.residual, ResidualConfig):
            raise UserError(f"residual must be a ResidualConfig, got {type(self.residual)}")
        k = self.residual.cut_layer
        if k is not None and not 1 <= k <= self.n_layer:
            raise UserError(f"cut layer {k} is out of range 1..{self.n_layer}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `residual` is a nested dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Inverse of `to_dict`; unknown keys are an error (a newer or foreign config)."""
        if not isinstance(d, dict):
            raise UserError(f"model config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        res = d.pop("residual", {}) or {}
        if isinstance(res, ResidualConfig):
            res = dataclasses.asdict(res)
        _check_keys(ResidualConfig, res, "residual config")
        _check_keys(cls, d, "model config")
        return cls(**d, residual=ResidualConfig(**res))


def _check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown keys in {what}: {', '.join(unknown)}")
