"""`CausalShiftGPTConfig`: the transformers config of an exported non-baseline causalshift GPT.

Kept apart from `hf_model.py` on purpose: it imports only `transformers.configuration_utils`
(no modeling code), so the post-import hook of `causalshift.hf_auto` can register it with
AutoConfig while transformers itself is still importing. It imports nothing of causalshift's
HF side: `causalshift.hf_auto` registers the model class through `on_new_config` (stage 2 of
its design), so this module never reaches the model code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from transformers.configuration_utils import PreTrainedConfig

MODEL_TYPE = "causalshift_gpt"

# Run after each new config until one returns True (see `on_new_config`).
_new_config_hooks: list[Callable[[], bool]] = []


def on_new_config(hook: Callable[[], bool]) -> None:
    """Call `hook()` after every new config instance until it returns True (then drop it)."""
    if hook not in _new_config_hooks:
        _new_config_hooks.append(hook)


def _run_new_config_hooks() -> None:
    _new_config_hooks[:] = [hook for hook in _new_config_hooks if not hook()]


class CausalShiftGPTConfig(PreTrainedConfig):
    """Fields mirror `causalshift.gpt.GPTConfig` (names and defaults; a test checks it);
    `residual` is its dict form."""

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
    }

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    dropout: float | int = 0.0
    bias: bool = True
    residual: dict | None = None
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.residual is None:
            from causalshift.gpt.config import ResidualConfig

            self.residual = dataclasses.asdict(ResidualConfig())
        super().__post_init__(**kwargs)
        _run_new_config_hooks()

    def to_gpt_config(self):  # -> causalshift.gpt.GPTConfig (torch-free import)
        from causalshift.gpt.config import GPTConfig

        fields = {}
        for f in dataclasses.fields(GPTConfig):
            value = getattr(self, f.name)
            if isinstance(f.default, (bool, float)):  # JSON may hold 0 for 0.0
                value = type(f.default)(value)
            fields[f.name] = dict(value) if f.name == "residual" else value
        return GPTConfig.from_dict(fields)

    @classmethod
    def from_gpt_config(cls, cfg: Any, **kwargs: Any) -> CausalShiftGPTConfig:
        d = cfg.to_dict()
        return cls(**d, **kwargs)
