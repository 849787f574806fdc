"""Training configuration (`TrainConfig`) and the named presets `tiny`, `cpu-small`, `gpt2-124m`.

Precedence, lowest first: preset -> `--config FILE` (JSON of TrainConfig fields) -> command
line. A run directory's `config.json` holds the resolved TrainConfig plus the model config
(`"model": GPTConfig.to_dict()`) and the environment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.config import option
from causalshift.errors import UserError
from causalshift.io import read_json_object

PRESET_NAMES = ("tiny", "cpu-small", "gpt2-124m")
DTYPES = ("auto", "float32", "bfloat16")


# TrainConfig fields that are GPTConfig fields of the same name (the model's shape).
MODEL_SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the model shape included)."""

    preset: str = option("cpu-small", "Preset the run started from.", cli=False)
    data: str = option(
        "books",
        "Prepared data dir (from `causalshift prepare`), or a data SPEC (books, wiki, a "
        ".txt/.jsonl/.parquet path, hf:NAME) that is prepared into the cache on first use.",
    )
    # --- model ---
    n_layer: int = option(6, "Transformer blocks.")
    n_head: int = option(4, "Attention heads per block.")
    n_embd: int = option(256, "Model width d.")
    block_size: int = option(256, "Context length T (tokens per training sequence).")
    vocab_size: int = option(50257, "Vocabulary size (GPT-2 BPE).", cli=False)
    dropout: float = option(0.0, "Dropout probability.")
    bias: bool = option(True, "Biases in Linear layers and LayerNorms.", cli=False)
    residual: str = option(
        "none", "Residual mode: none | fixed | gate | gate-hard | scalar (see docs/model.md)."
    )
    cut_layer: int | None = option(
        None, "1-based block whose residual is cut (mode fixed; implies --residual fixed)."
    )
    alpha: float = option(
        0.0, "A: residual coefficient at the cut (fixed) or the gate's floor 1 - p_l (1 - A)."
    )
    tau: float = option(1.0, "Gate softmax temperature.")
    # --- optimisation ---
    batch_size: int = option(16, "Micro-batch: sequences per process per forward pass.")
    grad_accum: int = option(1, "Micro-steps per optimizer step (per process).")
    batch_tokens: int | None = option(
        None,
        "Tokens per optimizer step over all processes; sets grad accumulation to "
        "batch_tokens / (batch_size * block_size * world_size). Unset: use --grad-accum.",
    )
    max_steps: int = option(250, "Optimizer steps to train for.")
    lr: float = option(1e-3, "Peak learning rate (AdamW).")
    min_lr_ratio: float = option(0.1, "Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = option(25, "Linear warmup steps.")
    weight_decay: float = option(0.1, "AdamW weight decay (2-D weights only).")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.95, "AdamW beta2.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0: no clipping).")
    gate_lr: float | None = option(
        None, "Peak learning rate of the gate/scalar parameters (unset: 10 x lr)."
    )
    # --- bookkeeping ---
    eval_interval: int = option(50, "Steps between validation-loss evaluations.")
    eval_iters: int = option(8, "Global batches per validation-loss evaluation.")
    log_interval: int = option(10, "Steps between metrics.jsonl records.")
    checkpoint_interval: int = option(50, "Steps between checkpoints (also saved at the end).")
    seed: int = option(1, "Random seed (initialisation and data order).")
    # --- speed ---
    compile: bool = option(True, "torch.compile the model.")
    dtype: str = option(
        "auto",
        "auto | float32 | bfloat16 (auto: bf16 autocast on CUDA with bf16 and on CPUs with "
        "AVX512-BF16/AMX, else float32).",
    )
    threads: int = option(0, "torch CPU threads per process (0: torch's default).")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK).")
    tensorboard: bool = option(False, "Also log to RUN_DIR/tensorboard (needs `tensorboard`).")

    def __post_init__(self) -> None:
        positive = (
            "n_layer n_head n_embd block_size batch_size grad_accum max_steps eval_interval "
            "eval_iters log_interval checkpoint_interval"
        ).split()
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise UserError(f"batch_tokens must be positive, got {self.batch_tokens}")
        if self.threads < 0:
            raise UserError(f"threads must be >= 0, got {self.threads}")
        if self.warmup_steps < 0:
            raise UserError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.lr > 0 or (self.gate_lr is not None and not self.gate_lr >= 0):
            raise UserError("learning rates must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.alpha >= 0:
            raise UserError(f"alpha must be >= 0, got {self.alpha}")
        if self.cut_layer is not None and not 1 <= self.cut_layer <= self.n_layer:
            raise UserError(
                f"cut layer {self.cut_layer} is out of range 1..{self.n_layer} "
                f"(the model has {self.n_layer} blocks)"
            )
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.preset not in PRESET_NAMES:
            raise UserError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(PRESET_NAMES)}"
            )
        self.model_config()  # validates the residual mode and the model shape

    @property
    def peak_gate_lr(self) -> float:
        return self.lr * 10 if self.gate_lr is None else self.gate_lr

    def model_config(self):  # -> GPTConfig (import kept lazy: no torch at import time)
        """The GPTConfig of this run."""
        from causalshift.gpt.config import GPTConfig, ResidualConfig

        residual = ResidualConfig(
            mode=self.residual, cut_layer=self.cut_layer, alpha=self.alpha, tau=self.tau
        )
        return GPTConfig(**{f: getattr(self, f) for f in MODEL_SHAPE_FIELDS}, residual=residual)

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-steps per optimizer step for `world_size` processes (checks divisibility)."""
        if self.batch_tokens is None:
            return self.grad_accum
        per_micro = self.batch_size * self.block_size * world_size
        if self.batch_tokens % per_micro:
            raise UserError(
                f"batch of {self.batch_tokens} tokens is not divisible by batch_size "
                f"{self.batch_size} x block_size {self.block_size} x world size {world_size} "
                f"= {per_micro}"
            )
        return self.batch_tokens // per_micro

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """`base` (default: the defaults) with the fields in `d`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training config keys: {', '.join(unknown)}")
        base = base or cls()
        try:
            return dataclasses.replace(base, **d)
        except TypeError as e:
            raise UserError(f"bad training config: {e}") from None


def preset(name: str) -> TrainConfig:
    """The TrainConfig of preset `name` (residual mode `none`)."""
    from causalshift.gpt.config import model_preset

    if name not in PRESET_NAMES:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    m = model_preset(name)
    shape = {f: getattr(m, f) for f in MODEL_SHAPE_FIELDS}
    if name == "tiny":  # tests: a few seconds on a CPU
        return TrainConfig(
            preset=name, **shape, batch_size=8, grad_accum=1, max_steps=20, lr=3e-3,
            warmup_steps=2, eval_interval=10, eval_iters=2, log_interval=1,
            checkpoint_interval=10, compile=False, dtype="float32",
        )  # fmt: skip
    if name == "cpu-small":  # the default: ~8-10 min on 2 CPU cores, compile included
        # 250 steps x 4,096 tokens = 1.0M tokens; val loss on 8 x 16 fixed windows.
        return TrainConfig(
            preset=name, **shape, batch_size=16, grad_accum=1, max_steps=250, lr=1e-3,
            warmup_steps=25, eval_interval=50, eval_iters=8, log_interval=10,
            checkpoint_interval=50,
        )  # fmt: skip
    # gpt2-124m: the paper (nanoGPT / llm.c GPT-2 small recipe): 10B FineWeb tokens,
    # 524,288-token batches (16 x 1024 per GPU, accumulation fills the rest) = 19,073 steps.
    return TrainConfig(
        preset=name, data="", **shape, batch_size=16, batch_tokens=524_288, max_steps=19_073,
        lr=6e-4, warmup_steps=715, min_lr_ratio=0.1, weight_decay=0.1, eval_interval=250,
        eval_iters=20, log_interval=10, checkpoint_interval=1000,
    )  # fmt: skip


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A `--config FILE`: a JSON object of TrainConfig fields."""
    return read_json_object(path, "config file")
