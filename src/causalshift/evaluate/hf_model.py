"""transformers classes for exported non-baseline models (residual modes other than `none`).

`CausalShiftGPTForCausalLM` holds exactly the modules of `causalshift.gpt.GPT` under the same
names (`transformer.*`, `lm_head`, `residual.*`), so its state dict is the run's state dict
and its logits are the run's logits. It loads with `AutoModelForCausalLM.from_pretrained`
after `import causalshift` (see `causalshift.hf_auto`), no remote code involved.

Limits: no KV cache (generation recomputes the whole prefix, fine for evaluation and short
samples) and no left padding (right padding is harmless under causal attention).
`output_hidden_states` returns the L+1 residual streams before the final LayerNorm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from causalshift.evaluate.hf_config import CausalShiftGPTConfig
from causalshift.gpt.model import GPT, MLP, CausalSelfAttention, LayerNorm, Residual

__all__ = ["CausalShiftGPTConfig", "CausalShiftGPTForCausalLM"]


class CausalShiftGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = CausalShiftGPTConfig
    base_model_prefix = "causalshift"  # no such submodule: this class is the whole model
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _no_split_modules = ["Block"]

    def __init__(self, config: CausalShiftGPTConfig) -> None:
        super().__init__(config)
        gpt = GPT(config.to_gpt_config())  # borrow its modules: same names, same forward
        self.transformer = gpt.transformer
        self.lm_head = gpt.lm_head
        self.residual = gpt.residual
        self.gpt_config = gpt.config
        self.post_init()

    # -- weights --------------------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init (as `GPT`), through transformers' guarded init (loaded weights stay)."""
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Residual):
            module.reset_parameters(init)  # the mode's initial values
        if isinstance(module, (CausalSelfAttention, MLP)):
            std = 0.02 / math.sqrt(2 * self.gpt_config.n_layer)
            init.normal_(module.c_proj.weight, mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # -- forward --------------------------------------------------------------------------

    # GPT's own code, verbatim: it uses only self.transformer, self.residual and
    # self.config.block_size, which this class has under the same names.
    embed = GPT.embed
    hidden_states = GPT.hidden_states

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """HF conventions: `labels` are shifted inside (ignore index -100)."""
        if input_ids is None:
            raise ValueError("CausalShiftGPTForCausalLM needs input_ids (no inputs_embeds)")
        _check_mask(attention_mask)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        states = self.hidden_states(input_ids)  # L+1 x (B, T, C)
        logits = self.lm_head(self.transformer.ln_f(states[-1]))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        hidden = tuple(states) if output_hidden_states else None
        if return_dict is False:
            return tuple(x for x in (loss, logits, hidden) if x is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden)

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """No KV cache: feed the whole (context-clipped) prefix every step."""
        T = self.gpt_config.block_size
        inputs: dict[str, Any] = {"input_ids": input_ids[:, -T:]}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask[:, -T:]
        return inputs


def _check_mask(attention_mask: Tensor | None) -> None:
    """Allow no mask or right padding; left padding would need a non-causal mask."""
    if attention_mask is None:
        return
    m = attention_mask.to(torch.int64)
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError(
            "CausalShiftGPTForCausalLM supports right padding only (padding_side='right')"
        )
