"""A GPT-2 language model with residual attenuation, nanoGPT style, read top to bottom.

Parameter names follow Hugging Face's GPT2LMHeadModel (transformer.wte, transformer.h.0.attn.
c_attn, ..., lm_head), so a `none` model exports to GPT2LMHeadModel by a key copy (HF's
Conv1D stores the transpose of nn.Linear's weight: export transposes c_attn, c_proj, c_fc).

Pre-LN block l (1-based) with residual coefficient alpha_l:

    a      = alpha_l * x + Attn(LN1(x))
    x_next = a + MLP(LN2(a))             # = alpha_l * x + F_l(x)

The residual mode (gpt/residual.py) yields all L coefficients through the `Residual` module
below; the blocks just use them.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from causalshift.gpt.config import GPTConfig, ResidualConfig
from causalshift.gpt.residual import ResidualMode, get_mode

LN_EPS = 1e-5  # GPT-2's layer_norm_epsilon


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nn.LayerNorm's `bias=False` needs torch >= 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LN_EPS)


class Residual(nn.Module):
    """The (L,) residual coefficients: holds a mode's tensors, the mode does the arithmetic.

    The tensors the mode declares become attributes of the same names (`theta`, `alpha`:
    parameters; `coef`, `noise`: non-persistent buffers), so a GPT names them `residual.*`.
    """

    def __init__(self, mode: ResidualMode) -> None:
        super().__init__()
        self.mode = mode
        self.n_layer = mode.n_layer
        for name, value in mode.initial_parameters().items():
            self.register_parameter(name, nn.Parameter(value))
        for name, value in mode.initial_buffers().items():
            self.register_buffer(name, value, persistent=False)

    def coefficients(self) -> Tensor:
        """(L,) alpha used by the forward pass (may depend on `self.training`)."""
        return self.mode.coefficients(self)

    def expected_coefficients(self) -> Tensor:
        """(L,) alpha at evaluation time."""
        return self.mode.expected_coefficients(self)

    def gate_p(self) -> Tensor | None:
        """(L,) the gate distribution p over layers, or None for modes without a gate."""
        return self.mode.gate_p(self)

    def begin_step(self, step: int, seed: int = 0) -> None:
        """Called once per optimizer step by the trainer; only stochastic modes use it."""
        self.mode.begin_step(self, step, seed)

    def forward(self) -> Tensor:
        return self.coefficients()

    @torch.no_grad()
    def reset_parameters(self, init: Any = None) -> None:
        """Set the mode's tensors to their initial values again.

        `init`: a module with `copy_(tensor, value)`, e.g. `transformers.initialization`,
        whose copy skips tensors loaded from a checkpoint; default: a plain copy."""
        values = {**self.mode.initial_parameters(), **self.mode.initial_buffers()}
        for name, value in values.items():
            tensor = getattr(self, name)
            if tensor.shape != value.shape:  # a buffer the mode resized (gate-hard's noise)
                self.register_buffer(name, value.to(tensor.device), persistent=False)
            elif init is not None:
                init.copy_(tensor, value)
            else:
                tensor.copy_(value)


def build_residual(cfg: ResidualConfig, n_layer: int) -> Residual:
    """The residual module of mode `cfg.mode` in a model with `n_layer` blocks."""
    return Residual(get_mode(cfg.mode)(cfg, n_layer))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    """Pre-LN block; `alpha` (a 0-d tensor) scales the residual input x."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, alpha: Tensor) -> Tensor:
        a = alpha * x + self.attn(self.ln_1(x))  # (B, T, C)
        return a + self.mlp(self.ln_2(a))  # (B, T, C) = alpha * x + F(x)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.residual = build_residual(config.residual, config.n_layer)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---- forward -------------------------------------------------------------------------

    def embed(self, idx: Tensor) -> Tensor:
        """Token + position embeddings: the residual stream entering block 1, (B, T, C)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, return_logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits (B, T, V) for every position; mean cross-entropy (ignore_index -1) or None.

        Training passes return_logits=False: a compiled graph that does not have to hand the
        (B, T, V) logits back runs faster (bench.train.logits_output_cost measures it).
        """
        x = self.embed(idx)  # (B, T, C)
        alphas = self.residual.coefficients()  # (L,)
        for block, alpha in zip(self.transformer.h, alphas.unbind(0), strict=True):
            x = block(x, alpha)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        return (logits if return_logits or targets is None else None), loss

    def hidden_states(self, idx: Tensor) -> list[Tensor]:
        """Residual stream at layers 0..L (embedding output, after each block), pre-ln_f."""
        x = self.embed(idx)
        states = [x]
        alphas = self.residual.coefficients()
        for block, alpha in zip(self.transformer.h, alphas.unbind(0), strict=True):
            x = block(x, alpha)
            states.append(x)
        return states

    # ---- bookkeeping ---------------------------------------------------------------------

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied lm_head counted once); minus position embeddings by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token, 6N + 12 L d T (PaLM appendix B, as nanoGPT's MFU)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    def param_groups(
        self, weight_decay: float, lr: float, gate_lr: float
    ) -> list[dict[str, object]]:
        """AdamW groups "decay" (2-D weights), "no_decay" (biases, LayerNorms) and "residual"
        (the residual mode's parameters: no decay, own lr). Empty groups are left out. Each group
        carries its `name` and `base_lr` so a schedule can set lr = base_lr * factor."""
        decay, no_decay, residual = [], [], []
        for name, p in self.named_parameters():  # tied lm_head.weight appears once, as wte
            if not p.requires_grad:
                continue
            if name.startswith("residual."):
                residual.append(p)
            elif p.dim() >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [
            dict(name="decay", params=decay, weight_decay=weight_decay, lr=lr, base_lr=lr),
            dict(name="no_decay", params=no_decay, weight_decay=0.0, lr=lr, base_lr=lr),
            dict(name="residual", params=residual, weight_decay=0.0, lr=gate_lr, base_lr=gate_lr),
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizer(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float],
        gate_lr: float,
        device_type: str,
    ) -> torch.optim.AdamW:
        """AdamW over `param_groups`; fused on CUDA when this torch offers it."""
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = dict(fused=True) if fused else {}
        return torch.optim.AdamW(
            self.param_groups(weight_decay, lr, gate_lr), lr=lr, betas=betas, **extra
        )
