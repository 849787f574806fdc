"""A minimal plain-PyTorch GPT-2 training step (nanoGPT style): the training benchmark's
reference. Same shape, initialisation scheme, tied head, AdamW groups, bf16 autocast and
torch.compile setting as `causalshift train`, and nothing else (no residual coefficients,
no data sampler, no all-reduce of statistics)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(p)

    return_logits = False  # True: also return the logits, as causalshift's GPT.forward does

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return (logits, loss) if self.return_logits else loss


class PlainTrainer:
    """model + AdamW (2-D weights decayed) + autocast + optional compile; `step(x, y)`."""

    def __init__(
        self,
        n_layer,
        n_head,
        n_embd,
        block_size,
        vocab=50257,
        *,
        amp=None,
        compile=True,
        lr=1e-3,
        weight_decay=0.1,
        device="cpu",
        seed=1,
        return_logits=False,
    ) -> None:
        torch.manual_seed(seed)
        self.model = PlainGPT(n_layer, n_head, n_embd, block_size, vocab).to(device)
        self.model.return_logits = return_logits
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = {"fused": True} if str(device).startswith("cuda") else {}
        self.opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), **fused)
        self.fwd = torch.compile(self.model) if compile else self.model
        self.amp, self.device = amp, torch.device(device)

    def step(self, x: Tensor, y: Tensor) -> float:
        ctx = torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)
        with ctx:
            loss = self.fwd(x, y)
            if self.model.return_logits:
                _, loss = loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()
