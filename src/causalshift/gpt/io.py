"""Save and load GPT weights: `model.safetensors` in a run directory or an HF export folder.

A run directory holds `config.json` with a top-level "model" key (`GPTConfig.to_dict()`)
and `model.safetensors`. An export folder (`causalshift export`) holds an HF `config.json`
(model_type `gpt2` or `causalshift_gpt`) and `model.safetensors` in HF layout. Both load
with `load_model`. A missing, truncated or corrupt file is a `UserError`, never a silent
fresh initialisation: the weights' sha256, recorded in `checksums.json` beside them when they
were written (runs and exports of earlier versions have none), is checked on every load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from causalshift.errors import UserError
from causalshift.gpt.config import GPTConfig, ResidualConfig
from causalshift.gpt.model import GPT
from causalshift.io import atomic_write, read_json_object, verify_checksum

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TIED_KEY = "lm_head.weight"  # stored once, as transformer.wte.weight
CONV1D_SUFFIXES = (  # HF Conv1D stores these transposed
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def _weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / WEIGHTS_NAME


def model_state_dict(model: GPT) -> dict[str, Tensor]:
    """Contiguous CPU tensors, tied lm_head left out."""
    return {
        k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k != TIED_KEY
    }


def save_model(model: GPT, path: str | os.PathLike) -> Path:
    """Write `path/model.safetensors` (or `path` itself if it ends in .safetensors) atomically.

    The model config rides along in the safetensors metadata ("causalshift_model"); the
    file's sha256 goes to `checksums.json` beside it."""
    from safetensors.torch import save_file

    target = _weights_path(path)
    tensors = model_state_dict(model)
    meta = {"format": "pt", "causalshift_model": json.dumps(model.config.to_dict())}
    return atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata=meta), checksum=True)


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a safetensors file; clear UserError when missing, unreadable or not
    matching its recorded checksum."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found")
    verify_checksum(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types (and OSError)
        raise UserError(f"{path} is truncated or corrupt: {e}") from None


def load_weights(model: GPT, path: str | os.PathLike) -> GPT:
    """Load `path` (a run dir or a .safetensors file in our layout) into `model` in place."""
    state = read_weights(_weights_path(path))
    _load_state(model, state, _weights_path(path))
    return model


def _load_state(model: GPT, state: dict[str, Tensor], source: Path) -> None:
    state = {k: v for k, v in state.items() if k != TIED_KEY}
    expected = {k for k in model.state_dict() if k != TIED_KEY}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(
            f"{source} does not match the model config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    own = model.state_dict()
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise UserError(
                f"{source}: {k} has shape {tuple(v.shape)}, the config says {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=False)  # lm_head.weight is tied to wte


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path)


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a causalshift run directory (config.json with a "model" key)."""
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        return "model" in json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def is_export_dir(path: str | os.PathLike) -> bool:
    """True for a `causalshift export` folder (HF config.json with a GPT-2-like model_type)."""
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") in (
            "gpt2",
            "causalshift_gpt",
        )
    except (OSError, ValueError, AttributeError):
        return False


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """GPTConfig from an HF config.json dict (model_type gpt2 or causalshift_gpt)."""
    kind = hf.get("model_type")
    if kind == "causalshift_gpt":  # causalshift.evaluate.hf_config.CausalShiftGPTConfig
        names = [f.name for f in dataclasses.fields(GPTConfig)]  # the residual dict included
        missing = [k for k in names if k not in hf]
        if missing:
            raise UserError(f"causalshift_gpt config lacks {', '.join(missing)}")
        return GPTConfig.from_dict({k: hf[k] for k in names})
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        eps = hf.get("layer_norm_epsilon", 1e-5)
        if act not in ("gelu_new", "gelu_pytorch_tanh") or abs(eps - 1e-5) > 1e-12:
            raise UserError(f"unsupported GPT-2 variant (activation {act}, layer norm eps {eps})")
        return GPTConfig(
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            block_size=hf["n_positions"],
            vocab_size=hf["vocab_size"],
            dropout=0.0,
            bias=True,
            residual=ResidualConfig(),
        )
    raise UserError(f"model_type {kind!r} is not a causalshift GPT")


def state_from_hf_gpt2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF GPT2LMHeadModel state dict -> ours (Conv1D weights transposed, buffers dropped)."""
    out = {}
    for k, v in state.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old transformers' causal-mask buffers
        out[k] = v.t().contiguous() if k.endswith(CONV1D_SUFFIXES) else v
    return out


def state_to_hf_gpt2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> HF GPT2LMHeadModel layout (Conv1D weights transposed); tied head left out."""
    return {
        k: (v.t().contiguous() if k.endswith(CONV1D_SUFFIXES) else v)
        for k, v in state.items()
        if k != TIED_KEY
    }


def from_hf_gpt2(hf_model: Any) -> GPT:
    """Our GPT with the weights of a transformers GPT2LMHeadModel (logits match)."""
    cfg = config_from_hf(hf_model.config.to_dict())
    model = GPT(cfg)
    state = state_from_hf_gpt2({k: v.detach().cpu() for k, v in hf_model.state_dict().items()})
    _load_state(model, state, Path("<GPT2LMHeadModel>"))
    return model.eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """A GPT from a run directory or an HF export folder, in eval mode."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found")
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (expected a run directory or HF export)")
    cfg_json = _read_json(path / CONFIG_NAME)
    weights = path / WEIGHTS_NAME
    if "model" in cfg_json:  # run directory
        cfg = GPTConfig.from_dict(cfg_json["model"])
        state = read_weights(weights)
    else:
        cfg = config_from_hf(cfg_json)
        state = read_weights(weights)
        if cfg_json.get("model_type") == "gpt2":
            state = state_from_hf_gpt2(state)
    model = GPT(cfg)
    _load_state(model, state, weights)
    return model.to(device).eval()
