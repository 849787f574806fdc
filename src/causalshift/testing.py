"""Tiny random models built from configs, for tests and benchmarks (no download, no weights).

One builder per kind of model the toolkit reads:

- `tiny_hf_model(family)`: a transformers causal LM of every supported architecture family
  (3 blocks, width 32, vocabulary 97), final norms perturbed so that a wrong norm would show.
- `tiny_gpt_config(mode, **residual)` / `tiny_gpt(mode, ...)`: causalshift's own GPT.
- `tiny_gpt2_folder(folder)`: a random HF GPT-2 saved with the real GPT-2 tokenizer.
- `random_lens_model(...)`: a `LensModel` of a chosen width, depth and vocabulary (bench).

Importing this module imports nothing heavy; each builder imports torch/transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_VOCAB = 97

_SMALL = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

# model_type -> config kwargs of a 3-block model of width 32: one per supported family.
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": dict(vocab_size=TINY_VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64),
    "llama": dict(_SMALL, tie_word_embeddings=True),
    "mistral": dict(_SMALL, tie_word_embeddings=False),
    "qwen2": dict(_SMALL, tie_word_embeddings=False),
    "qwen3": dict(_SMALL, head_dim=8),
    "gemma2": dict(_SMALL, head_dim=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
    "gemma3_text": dict(_SMALL, head_dim=8, query_pre_attn_scalar=8, sliding_window=4),
}


def tiny_hf_model(family: str, seed: int = 0, **overrides: Any):
    """A random transformers causal LM of `family` (a key of FAMILY_CONFIGS), in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **{**FAMILY_CONFIGS[family], **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # make the final norms non-trivial so a wrong norm would show
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def tiny_gpt_config(mode: str = "none", *, vocab_size: int = 50257, **fields: Any):
    """A 3-block, width-32 `GPTConfig` (context 16) with residual `mode`.

    Keyword arguments that are `ResidualConfig` fields (cut_layer, alpha, tau) go to the
    residual config, the others to the GPTConfig."""
    from causalshift.gpt.config import GPTConfig, ResidualConfig

    residual_keys = {"cut_layer", "alpha", "tau"}
    residual = {k: fields.pop(k) for k in list(fields) if k in residual_keys}
    shape = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=vocab_size)
    return GPTConfig(**{**shape, **fields}, residual=ResidualConfig(mode=mode, **residual))


def tiny_gpt(mode: str = "none", seed: int = 0, perturb: bool = True, **fields: Any):
    """A random causalshift GPT from `tiny_gpt_config`, in eval mode.

    perturb: add noise to 1-D parameters (biases, norms, gate/scalar parameters), so that
    a test comparing two implementations cannot pass on their default values."""
    import torch

    from causalshift.gpt.model import GPT

    torch.manual_seed(seed)
    model = GPT(tiny_gpt_config(mode, **fields))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny_gpt2_folder(folder: str | Path, seed: int = 0, n_positions: int = 64) -> Path:
    """A random HF GPT-2 (width 32, 2 blocks) saved in `folder` with the GPT-2 tokenizer."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from causalshift.corpus import gpt2_tokenizer_dir

    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50257, n_embd=32, n_layer=2, n_head=2, n_positions=n_positions)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    for f in gpt2_tokenizer_dir().iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def random_lens_model(
    family: str = "llama",
    *,
    hidden: int = 640,
    layers: int = 6,
    vocab: int = 32768,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    **extra: Any,
):
    """A `LensModel` with random weights built from a config (no tokenizer, no download).

    family "llama": a Llama of width `hidden` (heads of 64, MLP 4x, tied embeddings);
    family "gemma2": pass Gemma-2-2B's shape in `extra`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from causalshift.lens.models import lens_model

    if family == "llama":
        heads = max(1, hidden // 64)
        kw: dict[str, Any] = dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            vocab_size=vocab,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
    else:
        kw = {}
    kw.update(extra)
    config = AutoConfig.for_model(family, **kw)
    config.tie_last_hidden_states = False
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    return lens_model(model, None, f"random-{family}-L{config.num_hidden_layers}", "random")
