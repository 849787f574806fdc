"""`causalshift view`: the per-token logit-lens picture of one prompt.

For every layer 0..L and every position of the prompt (as the tokenizer encodes it in normal
use, BOS included where it adds one), the lens logits U . N(h) (soft-capped like the model,
`LensModel.decode`) give the top-1 token, the top-k with their probabilities (softmax of those
logits), the probability of the next token t_{i+1} and the ranks of t_i and t_{i+1} (entries
with a strictly larger logit). At layer L this is the model's own output: the top-1 tokens
are its greedy predictions. Written as view.png (`figures.view`) and view.html
(`figures.view_html`).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift import runtime
from causalshift.config import add_config_arguments, config_overrides, option
from causalshift.errors import UserError
from causalshift.figures.view import TokenGrid

if TYPE_CHECKING:
    import torch

    from causalshift.lens.models import LensModel


@dataclass(frozen=True)
class ViewConfig:
    """Options of `causalshift view`."""

    model: str = option(
        "gemma-3-270m",
        "Model SPEC: an embedded name (gemma-3-270m, smollm2-135m), a hub id or local HF "
        "folder, a .gguf file, or a causalshift run directory / export.",
    )
    prompt: str | None = option(None, "The prompt (or --prompt-file).")
    prompt_file: str | None = option(
        None, "A UTF-8 text file holding the prompt (one final newline is dropped)."
    )
    topk: int = option(5, "Tokens (with probabilities) shown when hovering a cell in view.html.")
    dtype: str = option("float32", "Weights' dtype.", choices=["float32", "bfloat16"])
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    device_map: str | None = option(
        None, "Pass 'auto' to spread a model too large for one GPU over all GPUs (accelerate)."
    )
    out: str | None = option(None, "Output folder (default runs/view-<timestamp>).")

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_file is None):
            raise UserError("give exactly one of --prompt and --prompt-file")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise UserError(f"--topk must be an integer >= 1, got {self.topk!r}")

    def prompt_text(self) -> str:
        """The prompt, read from --prompt-file where given."""
        if self.prompt is not None:
            return self.prompt
        path = Path(self.prompt_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"--prompt-file {path} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --prompt-file {path}: {e}") from None
        return text[:-1] if text.endswith("\n") else text


@dataclass
class TokenView:
    """The lens picture of one prompt (`causalshift.view`): tensors over (L+1, T).

    top_ids: the top-1 token id per layer and position; top_tokens: the same as strings
    (tokenizer.decode([id])); target_probs: the lens probability of t_{i+1} (NaN in the
    last column); grid: all of it as plain lists (`figures.view.TokenGrid`)."""

    grid: TokenGrid
    input_ids: torch.Tensor  # (T,)
    top_ids: torch.Tensor  # (L+1, T)
    target_probs: torch.Tensor  # (L+1, T) float32, NaN in the last column

    @property
    def top_tokens(self) -> list[list[str]]:
        return self.grid.top_tokens

    @property
    def tokens(self) -> list[str]:
        """The prompt's tokens as the tokenizer encodes it (decoded one by one)."""
        return self.grid.tokens

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write view.png and view.html in `out` (created if needed); returns their paths."""
        from causalshift.figures.view import FILE_NAME, plot_view
        from causalshift.figures.view_html import FILE_NAME as HTML_NAME
        from causalshift.figures.view_html import write_view_html

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out} exists and is not a folder")
        return [plot_view(self.grid, out / FILE_NAME), write_view_html(self.grid, out / HTML_NAME)]

    def _repr_html_(self) -> str:  # a notebook shows the HTML table
        from causalshift.figures.view_html import view_html

        return view_html(self.grid)


def encode_prompt(tokenizer: Any, prompt: str) -> torch.Tensor:
    """The prompt's ids (T,) as the tokenizer encodes it in normal use (special tokens, such
    as a BOS, included where it adds them)."""
    import torch

    if not isinstance(prompt, str) or not prompt:
        raise UserError("the prompt is empty")
    ids = tokenizer(prompt).input_ids
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    return torch.tensor(ids, dtype=torch.long)


def token_view(lm: LensModel, prompt: str, topk: int = 5) -> TokenView:
    """The lens picture of `prompt` for a loaded model (see the module docstring)."""
    import torch

    from causalshift.lens.engine import residual_stream

    vocab = int(lm.unembed.shape[0])
    if not 1 <= topk <= vocab:
        raise UserError(
            f"--topk must be between 1 and {lm.name}'s vocabulary of {vocab}, got {topk}"
        )
    ids = encode_prompt(lm.tokenizer, prompt)
    if lm.max_positions and len(ids) > lm.max_positions:
        raise UserError(
            f"the prompt has {len(ids)} tokens, over {lm.name}'s context of {lm.max_positions}"
        )
    states = residual_stream(lm, ids[None])
    norm_device = next(lm.norm.parameters(), lm.unembed).device
    per_layer = [_decode_layer(lm, h[0].to(norm_device), ids, topk) for h in states]
    cols = {k: torch.stack([layer[k] for layer in per_layer]) for k in per_layer[0]}
    decode = lm.tokenizer.decode
    vocab: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in vocab:
            vocab[i] = decode([i])
        return vocab[i]

    def strings(t: torch.Tensor) -> list:
        return [strings(x) for x in t] if t.dim() else text(int(t))

    probs = cols["target_prob"].tolist()
    ranks = cols["rank_output"].tolist()
    last = len(ids) - 1
    grid = TokenGrid(
        model=lm.name,
        token_ids=ids.tolist(),
        tokens=strings(ids),
        top_ids=cols["top_ids"].tolist(),
        top_tokens=strings(cols["top_ids"]),
        target_prob=[[None if i == last else p for i, p in enumerate(r)] for r in probs],
        topk_tokens=strings(cols["topk_ids"]),
        topk_probs=cols["topk_probs"].tolist(),
        rank_input=cols["rank_input"].tolist(),
        rank_output=[[None if i == last else r for i, r in enumerate(row)] for row in ranks],
    )
    return TokenView(grid, ids, cols["top_ids"], cols["target_prob"])


def _decode_layer(lm: LensModel, h: torch.Tensor, ids: torch.Tensor, topk: int) -> dict:
    """One layer's lens at every position of states h (T, d): CPU tensors over T."""
    import torch

    z = lm.decode(h)  # (T, V) float32, soft-capped
    ids = ids.to(z.device)
    probs = torch.softmax(z, dim=-1)
    pos = torch.arange(len(ids), device=z.device)
    next_ids = torch.cat([ids[1:], ids[:1]])  # the last column's target is a placeholder
    z_in, z_out = z[pos, ids], z[pos, next_ids]
    top_probs, top_ids = probs.topk(min(topk, z.shape[-1]), dim=-1)
    target = probs[pos, next_ids]
    target[-1] = float("nan")
    out = {
        "top_ids": z.argmax(dim=-1),
        "topk_ids": top_ids,
        "topk_probs": top_probs,
        "target_prob": target,
        "rank_input": (z > z_in[:, None]).sum(-1),
        "rank_output": (z > z_out[:, None]).sum(-1),
    }
    return {k: v.cpu() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ViewConfig)


def run(args: argparse.Namespace) -> int:
    cfg = ViewConfig(**config_overrides(ViewConfig, args))
    paths = view(cfg)
    print(f"view written to {paths[0].parent}")
    return 0


def view(cfg: ViewConfig) -> list[Path]:
    """Load the model, draw the prompt's picture, write view.png and view.html."""
    import torch

    from causalshift.lens.models import load

    prompt = cfg.prompt_text()
    out = Path(cfg.out or os.path.join("runs", f"view-{time.strftime('%Y%m%d-%H%M%S')}"))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    device = runtime.resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    lm = load(cfg.model, dtype=dtype, device=device, device_map=cfg.device_map)
    return token_view(lm, prompt, cfg.topk).save(out)
