"""`CausalShiftGPTConfig`: the transformers config of an exported non-baseline causalshift GPT.

Kept apart from `hf_model.py` on purpose: it imports only `transformers.configuration_utils`
(no modeling code), so the post-import hook of `causalshift.hf_auto` can register it with
AutoConfig while transformers itself is still importing. See `causalshift.hf_auto`.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from transformers.configuration_utils import PreTrainedConfig

MODEL_TYPE = "causalshift_gpt"


class CausalShiftGPTConfig(PreTrainedConfig):
    """Fields mirror `causalshift.gpt.GPTConfig`; `residual` is its dict form."""

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
            self.residual = {"mode": "none", "cut_layer": None, "alpha": 0.0, "tau": 1.0}
        super().__post_init__(**kwargs)
        _register_model_class()

    def to_gpt_config(self):  # -> causalshift.gpt.GPTConfig (torch-free import)
        from causalshift.gpt.config import GPTConfig

        return GPTConfig.from_dict(
            {
                "n_layer": self.n_layer,
                "n_head": self.n_head,
                "n_embd": self.n_embd,
                "block_size": self.block_size,
                "vocab_size": self.vocab_size,
                "dropout": float(self.dropout),
                "bias": bool(self.bias),
                "residual": dict(self.residual),
            }
        )

    @classmethod
    def from_gpt_config(cls, cfg: Any, **kwargs: Any) -> CausalShiftGPTConfig:
        d = cfg.to_dict()
        return cls(**d, **kwargs)


def register_config() -> None:
    """AutoConfig.register("causalshift_gpt", CausalShiftGPTConfig); idempotent."""
    from transformers.models.auto.configuration_auto import AutoConfig

    AutoConfig.register(MODEL_TYPE, CausalShiftGPTConfig, exist_ok=True)


_model_registered = False


def _register_model_class() -> None:
    """Stage 2 of `causalshift.hf_auto`: a config instance exists, so a model may follow."""
    global _model_registered
    if _model_registered:
        return
    utils = sys.modules.get("transformers.modeling_utils")
    if utils is not None and getattr(utils.__spec__, "_initializing", False):
        return  # inside transformers' own import: try again with the next config
    try:
        from causalshift.evaluate.hf_model import register_auto_classes

        register_auto_classes()
        _model_registered = True
    except Exception as e:
        warnings.warn(
            f"causalshift: could not register with AutoModelForCausalLM: {e}", stacklevel=2
        )
