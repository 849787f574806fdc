"""The trainable GPT-2 model with residual attenuation (x_next = alpha_l * x + F_l(x)).

The names below load on first use, so that importing `causalshift.gpt.config` or
`causalshift.gpt.residual` (torch-free: the report and config validation read them) does not
import torch through this package; `model` and `io` import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from causalshift.gpt.config import GPTConfig, ResidualConfig
    from causalshift.gpt.io import is_run_dir, load_model, save_model
    from causalshift.gpt.model import GPT, Residual, build_residual
    from causalshift.gpt.residual import MODES, ResidualMode, register, residual_parameter_names

_HOME = {
    "GPTConfig": "config",
    "ResidualConfig": "config",
    "is_run_dir": "io",
    "load_model": "io",
    "save_model": "io",
    "GPT": "model",
    "Residual": "model",
    "build_residual": "model",
    "MODES": "residual",
    "ResidualMode": "residual",
    "register": "residual",
    "residual_parameter_names": "residual",
}
_SUBMODULES = ("config", "io", "model", "residual")

__all__ = [
    "GPT",
    "MODES",
    "GPTConfig",
    "Residual",
    "ResidualConfig",
    "ResidualMode",
    "build_residual",
    "is_run_dir",
    "load_model",
    "register",
    "residual_parameter_names",
    "save_model",
]  # = the keys of _HOME (a test checks it)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
