"""The trainable GPT-2 model with residual attenuation (x_next = alpha_l * x + F_l(x))."""

from causalshift.gpt.config import GPTConfig, ResidualConfig, model_preset
from causalshift.gpt.io import is_run_dir, load_model, save_model
from causalshift.gpt.model import GPT
from causalshift.gpt.residual import Residual, build_residual, residual_parameter_names

__all__ = [
    "GPT",
    "GPTConfig",
    "Residual",
    "ResidualConfig",
    "build_residual",
    "is_run_dir",
    "load_model",
    "model_preset",
    "residual_parameter_names",
    "save_model",
]
