"""Sublayer resolution (`analyze --sublayers`): the residual stream after each block's
attention sublayer, before its MLP, and what each sublayer contributes.

Per family, one attribute of a block names the module whose *input* is that state: the
norm in front of the MLP, which every supported block calls exactly once, on the residual
right after the attention add (docs/method.md, "Sublayers"):

    GPT-2, causalshift GPT   ln_2(a),  a = alpha x + attn(ln_1(x))  (alpha = 1 but for
                             causalshift's residual modes)
    Llama, Mistral, Qwen2/3, Gemma   post_attention_layernorm(x + self_attn(input_layernorm(x)))
    Gemma 2, Gemma 3         pre_feedforward_layernorm(x + post_attention_layernorm(
                             self_attn(input_layernorm(x))))

A forward pre-hook on that module reads the state without changing the forward pass. With
sublayers a run has 2L+1 rows, in stream order 0, 1.attn, 1, 2.attn, ..., L (`row_specs`):
row 2l-1 is `l.attn`, row 2l is the stream after block l, so the block rows are the even
ones and stay what they are without sublayers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from causalshift.errors import UserError
from causalshift.lens import metrics as M
from causalshift.results import SublayerRow

if TYPE_CHECKING:
    from torch import Tensor, nn

    from causalshift.lens.models import LensModel

# model_type -> the block attribute whose forward input is the post-attention residual.
POST_ATTENTION_INPUT: dict[str, str] = {
    "gpt2": "ln_2",
    "causalshift_gpt": "ln_2",
    "llama": "post_attention_layernorm",
    "mistral": "post_attention_layernorm",
    "qwen2": "post_attention_layernorm",
    "qwen3": "post_attention_layernorm",
    "gemma": "post_attention_layernorm",
    # Gemma 2/3 norm the attention output (post_attention_layernorm) before the add: the
    # pre-MLP norm is pre_feedforward_layernorm.
    "gemma2": "pre_feedforward_layernorm",
    "gemma3_text": "pre_feedforward_layernorm",
}
ATTN_SUFFIX = ".attn"
# The metrics whose per-layer change is split between the two sublayers (`contributions`);
# "{k}" expands to every --topk.
CONTRIBUTION_METRICS = ("logprob_output", "top{k}_output", "projection")
# What a sublayer run measures besides the usual columns (metrics.metric_table's extras).
EXTRAS = ("logprob",)


def post_attention_modules(lm: LensModel) -> list[nn.Module]:
    """Each block's module whose input is the stream after its attention; a UserError
    naming the architecture when the family has no entry (or a block lacks the module)."""
    attr = POST_ATTENTION_INPUT.get(lm.architecture)
    if attr is None:
        raise UserError(
            f"{lm.name}: --sublayers does not support architecture {lm.architecture!r} "
            f"(supported: {', '.join(sorted(POST_ATTENTION_INPUT))})"
        )
    modules = [getattr(block, attr, None) for block in lm.blocks]
    if any(m is None for m in modules):
        raise UserError(
            f"{lm.name}: --sublayers expects every {lm.architecture} block to have {attr!r}"
        )
    return modules


def check_supported(lm: LensModel) -> None:
    """UserError unless `--sublayers` can read lm's post-attention states."""
    post_attention_modules(lm)


def hook_input(args: tuple, kwargs: dict) -> Tensor:
    """The tensor a module was called with (positionally, or as its one keyword)."""
    return args[0] if args else next(iter(kwargs.values()))


@dataclass(frozen=True)
class RowSpec:
    """One row of a run: the block l it belongs to, its label, whether it is `l.attn`."""

    layer: int
    label: str
    attn: bool

    def position(self) -> float:
        """Place on the layer axis: l, or l - 0.5 for `l.attn` (between streams l-1 and l)."""
        return self.layer - 0.5 if self.attn else float(self.layer)


def row_specs(num_layers: int, sublayers: bool) -> list[RowSpec]:
    """The rows in stream order: 0..L, or 0, 1.attn, 1, ..., L.attn, L with sublayers."""
    rows = [RowSpec(0, "0", False)]
    for layer in range(1, num_layers + 1):
        if sublayers:
            rows.append(RowSpec(layer, f"{layer}{ATTN_SUFFIX}", True))
        rows.append(RowSpec(layer, str(layer), False))
    return rows


def block_rows(sublayers: bool) -> slice:
    """The rows of the streams after each block (0..L) among a run's rows."""
    return slice(None, None, 2) if sublayers else slice(None)


def contribution_names(names: list[str], topk: tuple[int, ...]) -> list[str]:
    """The metrics `contributions` splits, among the run's columns `names`."""
    wanted = [n.format(k=k) for n in CONTRIBUTION_METRICS for k in (topk if "{k}" in n else (0,))]
    return [n for n in wanted if n in names]


def contributions(
    sums: Tensor, counts: Tensor, names: list[str], topk: tuple[int, ...]
) -> list[SublayerRow]:
    """Per block l = 1..L, the change of each contribution metric brought by its attention
    (row l.attn minus row l-1) and by its MLP (row l minus row l.attn).

    sums (S, 2L+1, M) and counts (S, M) are the per-sequence sums of a sublayer run. A
    change's mean is the difference of the two rows' means (both rows count the same
    positions); its 95% interval comes from the per-sequence differences of sums
    (`metrics.mean_ci95`), i.e. it is an interval over sequences of the change itself."""
    num_layers = (sums.shape[1] - 1) // 2
    out = []
    for layer in range(1, num_layers + 1):
        before, mid, after = 2 * layer - 2, 2 * layer - 1, 2 * layer
        parts: dict[str, dict] = {"attn": {}, "mlp": {}}
        ci: dict[str, dict] = {"attn": {}, "mlp": {}}
        for name in contribution_names(names, topk):
            m = names.index(name)
            for part, (a, b) in (("attn", (before, mid)), ("mlp", (mid, after))):
                mean, lo, hi = M.mean_ci95(sums[:, b, m] - sums[:, a, m], counts[:, m])
                parts[part][name] = mean
                ci[part][name] = [lo, hi]
        out.append(SublayerRow(layer=layer, attn=parts["attn"], mlp=parts["mlp"], ci95=ci))
    return out
