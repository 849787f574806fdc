"""Training configuration (`TrainConfig`, which holds the model's `GPTConfig`) and the presets.

Precedence, lowest first: preset -> `--config FILE` (JSON of TrainConfig keys) -> command
line. The presets are one table, `PRESETS`: each row is a whole TrainConfig, its model
included.

Flat keys. The command line, `--config FILE`, `config.json` and the checkpoint name the
model's fields flat, next to the training fields (`--n-layer`, `"residual": "gate"`,
`"cut_layer": 4`), as they always have. `MODEL_KEYS` is the one mapping between those flat
keys and the fields of `GPTConfig` (and of its `ResidualConfig`); `TrainConfig.to_dict` and
`from_dict` translate through it, and `cli_options()` builds the command-line options from
it. A run directory's `config.json` holds the flat dict plus `"model": GPTConfig.to_dict()`,
the batch geometry and the environment (see `train/loop.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.config import check_fields, option, str_list
from causalshift.errors import UserError
from causalshift.gpt.config import GPTConfig, ResidualConfig
from causalshift.gpt.residual import mode_choices
from causalshift.io import read_json_object
from causalshift.train.trackers import EXTRA, TRACKER_NAMES, TrackerOptions, tracker_names

PRESET_NAMES = ("tiny", "cpu-small", "gpt2-124m")  # the keys of PRESETS
DTYPES = ("auto", "float32", "bfloat16")
RESIDUAL_PREFIX = "residual."  # MODEL_KEYS prefix of a ResidualConfig field

# Flat key -> (field of GPTConfig, or "residual." + field of its ResidualConfig; the help of
# its command-line option, None: no option). The order is config.json's. The help differs
# from GPTConfig's where training says more (T is the training sequence, --cut-layer
# implies fixed); the defaults shown are DEFAULT_MODEL's.
MODEL_KEYS: dict[str, tuple[str, str | None]] = {
    "n_layer": ("n_layer", "Transformer blocks."),
    "n_head": ("n_head", "Attention heads per block."),
    "n_embd": ("n_embd", "Model width d."),
    "block_size": ("block_size", "Context length T (tokens per training sequence)."),
    "vocab_size": ("vocab_size", None),
    "dropout": ("dropout", "Dropout probability."),
    "bias": ("bias", None),
    "residual": (
        RESIDUAL_PREFIX + "mode",
        f"Residual mode: {mode_choices()} (see docs/model.md).",
    ),
    "cut_layer": (
        RESIDUAL_PREFIX + "cut_layer",
        "1-based block whose residual is cut (mode fixed; implies --residual fixed).",
    ),
    "alpha": (
        RESIDUAL_PREFIX + "alpha",
        "A: residual coefficient at the cut (fixed) or the gate's floor 1 - p_l (1 - A).",
    ),
    "tau": (RESIDUAL_PREFIX + "tau", "Gate softmax temperature."),
}
# Model keys that shape no weight: a resumed run may change them.
RESUMABLE_MODEL_KEYS = ("dropout",)

# The default model (cpu-small's; GPTConfig's own defaults are GPT-2 small's).
DEFAULT_MODEL = GPTConfig(n_layer=6, n_head=4, n_embd=256, block_size=256)


def flat_model(model: GPTConfig) -> dict[str, Any]:
    """The model's fields under their flat keys, in MODEL_KEYS order."""
    d = model.to_dict()
    res = d.pop("residual")
    return {
        key: res[path.removeprefix(RESIDUAL_PREFIX)]
        if path.startswith(RESIDUAL_PREFIX)
        else d[path]
        for key, (path, _) in MODEL_KEYS.items()
    }


def model_from_flat(flat: dict[str, Any], base: GPTConfig) -> GPTConfig:
    """`base` with the flat model keys in `flat` changed (validated by GPTConfig)."""
    d = base.to_dict()
    for key, value in flat.items():
        path = MODEL_KEYS[key][0]
        if path.startswith(RESIDUAL_PREFIX):
            d["residual"][path.removeprefix(RESIDUAL_PREFIX)] = value
        else:
            d[path] = value
    n, k = d["n_layer"], d["residual"]["cut_layer"]
    valid_depth = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    if valid_depth and isinstance(k, int) and not 1 <= k <= n:  # says the depth, unlike GPTConfig
        raise UserError(f"cut layer {k} is out of range 1..{n} (the model has {n} blocks)")
    return GPTConfig.from_dict(d)


def model_changes(saved: dict[str, Any], model: GPTConfig) -> list[str]:
    """The flat model keys whose value in `saved` (a checkpoint's flat config) differs from
    `model`'s, leaving out those that shape no weight (RESUMABLE_MODEL_KEYS)."""
    return [
        k
        for k, v in flat_model(model).items()
        if k not in RESUMABLE_MODEL_KEYS and saved.get(k) != v
    ]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run: the model (`model`) and how to train it."""

    preset: str = option("cpu-small", "Preset the run started from.", cli=False)
    data: str = option(
        "books",
        "Prepared data dir (from `causalshift prepare`), or a data SPEC (books, wiki, a "
        ".txt/.jsonl/.parquet path, hf:NAME) that is prepared into the cache on first use.",
    )
    model: GPTConfig = option(
        DEFAULT_MODEL, "The model: shape and residual variant (flat keys: MODEL_KEYS).", cli=False
    )
    # --- optimisation ---
    batch_size: int = option(16, "Micro-batch: sequences per process per forward pass.", ge=1)
    grad_accum: int = option(1, "Micro-steps per optimizer step (per process).", ge=1)
    batch_tokens: int | None = option(
        None,
        "Tokens per optimizer step over all processes; sets grad accumulation to "
        "batch_tokens / (batch_size * block_size * world_size). Unset: use --grad-accum.",
        ge=1,
    )
    max_steps: int = option(250, "Optimizer steps to train for.", ge=1)
    lr: float = option(1e-3, "Peak learning rate (AdamW).", gt=0)
    min_lr_ratio: float = option(0.1, "Cosine decay ends at lr * min_lr_ratio.", ge=0, le=1)
    warmup_steps: int = option(25, "Linear warmup steps.", ge=0)
    weight_decay: float = option(0.1, "AdamW weight decay (2-D weights only).", ge=0)
    beta1: float = option(0.9, "AdamW beta1.", ge=0, lt=1)
    beta2: float = option(0.95, "AdamW beta2.", ge=0, lt=1)
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0: no clipping).", ge=0)
    gate_lr: float | None = option(
        None, "Peak learning rate of the gate/scalar parameters (unset: 10 x lr).", ge=0
    )
    # --- bookkeeping ---
    eval_interval: int = option(50, "Steps between validation-loss evaluations.", ge=1)
    eval_iters: int = option(8, "Global batches per validation-loss evaluation.", ge=1)
    log_interval: int = option(10, "Steps between metrics.jsonl records.", ge=1)
    checkpoint_interval: int = option(
        50, "Steps between checkpoints (also saved at the end).", ge=1
    )
    # numpy's legacy seeding (np.random.seed) takes 0 .. 2**32 - 1
    seed: int = option(1, "Random seed (initialisation and data order).", ge=0, le=2**32 - 1)
    # --- speed ---
    compile: bool = option(True, "torch.compile the model.")
    dtype: str = option(
        "auto",
        "auto | float32 | bfloat16 (auto: bf16 autocast on CUDA with bf16 and on CPUs with "
        "AVX512-BF16/AMX, else float32).",
    )
    threads: int = option(0, "torch CPU threads per process (0: torch's default).", ge=0)
    device: str = option("auto", "auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK).")
    # --- tracking (train/trackers.py) ---
    tensorboard: bool = option(
        False, "Also log to RUN_DIR/tensorboard: the same as --tracker tensorboard."
    )
    tracker: tuple[str, ...] = option(
        (),
        f"Experiment tracker: {' | '.join(TRACKER_NAMES)}; repeat the option (or give a comma "
        "list) for several. tensorboard: RUN_DIR/tensorboard; wandb: a W&B run, offline "
        f"unless WANDB_MODE is set. Needs {EXTRA}.",
        action="append",
    )
    wandb_project: str = option("causalshift", "W&B project.")
    wandb_name: str | None = option(None, "W&B run name (default: the run folder's name).")
    wandb_group: str | None = option(None, "W&B group (a sweep's runs: the sweep folder's name).")
    wandb_tags: tuple[str, ...] = option((), "W&B tags, comma-separated.", parse=str_list)

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPTConfig):
            raise UserError(f"model must be a GPTConfig, got {type(self.model).__name__}")
        check_fields(self)  # every number: its type, finite, within the field's bounds
        # A --config file or config.json gives lists, the command line repeated options.
        trackers = tracker_names(self.tracker)  # checked; "none" gives ()
        if self.tensorboard and self.tracker and not trackers:
            raise UserError("--tracker none cannot be combined with --tensorboard")
        object.__setattr__(self, "tracker", trackers)
        object.__setattr__(self, "wandb_tags", _tags(self.wandb_tags))
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.preset not in PRESET_NAMES:
            raise UserError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(PRESET_NAMES)}"
            )

    @property
    def trackers(self) -> tuple[str, ...]:
        """The trackers the run logs to: --tracker's, and tensorboard with --tensorboard."""
        if self.tensorboard and "tensorboard" not in self.tracker:
            return (*self.tracker, "tensorboard")
        return self.tracker

    def tracking(self) -> TrackerOptions:
        """The W&B options of the run's trackers (RunLog adds the run folder and step)."""
        return TrackerOptions(
            project=self.wandb_project,
            name=self.wandb_name,
            group=self.wandb_group,
            tags=self.wandb_tags,
        )

    @property
    def peak_gate_lr(self) -> float:
        return self.lr * 10 if self.gate_lr is None else self.gate_lr

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-steps per optimizer step for `world_size` processes (checks divisibility)."""
        if self.batch_tokens is None:
            return self.grad_accum
        block_size = self.model.block_size
        per_micro = self.batch_size * block_size * world_size
        if self.batch_tokens % per_micro:
            raise UserError(
                f"batch of {self.batch_tokens} tokens is not divisible by batch_size "
                f"{self.batch_size} x block_size {block_size} x world size {world_size} "
                f"= {per_micro}"
            )
        return self.batch_tokens // per_micro

    def to_dict(self) -> dict[str, Any]:
        """The flat dict: the training fields with the model's flat keys in `model`'s place."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "model":
                out.update(flat_model(self.model))
            else:
                out[f.name] = getattr(self, f.name)
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat keys changed (as `from_dict`), or the whole `model=GPTConfig`."""
        model = changes.pop("model", None)
        base = self if model is None else dataclasses.replace(self, model=model)
        return TrainConfig.from_dict(changes, base)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """`base` (default: the defaults) with the flat keys in `d`; unknown keys are an error."""
        unknown = sorted(set(d) - set(flat_keys()))
        if unknown:
            raise UserError(f"unknown training config keys: {', '.join(unknown)}")
        base = base or cls()
        model_part = {k: v for k, v in d.items() if k in MODEL_KEYS}
        rest = {k: v for k, v in d.items() if k not in MODEL_KEYS}
        try:
            model = model_from_flat(model_part, base.model) if model_part else base.model
            return dataclasses.replace(base, model=model, **rest)
        except TypeError as e:
            raise UserError(f"bad training config: {e}") from None


def _tags(value: Any) -> tuple[str, ...]:
    """W&B tags from a comma list or a list of strings."""
    items = str_list(value) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise UserError(f"wandb_tags must be a list of strings, got {value!r}")
    return tuple(items)


def flat_keys() -> tuple[str, ...]:
    """Every flat key of a TrainConfig, in config.json order."""
    names: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        names += list(MODEL_KEYS) if f.name == "model" else [f.name]
    return tuple(names)


@functools.cache
def cli_options() -> type:
    """The command line's view of TrainConfig: a dataclass of its flat keys, for
    `config.add_config_arguments` / `config_overrides` (options in config.json order)."""
    hints = typing.get_type_hints(TrainConfig)
    model_hints = {
        **{RESIDUAL_PREFIX + k: v for k, v in typing.get_type_hints(ResidualConfig).items()},
        **typing.get_type_hints(GPTConfig),
    }
    defaults = flat_model(DEFAULT_MODEL)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            same = dataclasses.field(default=f.default, metadata=f.metadata)
            fields.append((f.name, hints[f.name], same))
            continue
        for key, (path, help_text) in MODEL_KEYS.items():
            field = option(defaults[key], help_text or "", cli=help_text is not None)
            fields.append((key, model_hints[path], field))
    return dataclasses.make_dataclass("TrainOptions", fields, frozen=True)


PRESETS: dict[str, TrainConfig] = {
    # Tests: a few seconds on a CPU.
    "tiny": TrainConfig(
        preset="tiny",
        model=GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64),
        batch_size=8,
        grad_accum=1,
        max_steps=20,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=10,
        eval_iters=2,
        log_interval=1,
        checkpoint_interval=10,
        compile=False,
        dtype="float32",
    ),
    # The default (TrainConfig's defaults): a visible loss curve in about 10 minutes on 2 CPU
    # cores, compile included. 250 steps x 4,096 tokens = 1.0M tokens; val loss on 8 x 16
    # fixed windows.
    "cpu-small": TrainConfig(preset="cpu-small", model=DEFAULT_MODEL),
    # The paper (nanoGPT / llm.c GPT-2 small recipe, 124M parameters): 10B FineWeb tokens,
    # 524,288-token batches (16 x 1024 per GPU, accumulation fills the rest) = 19,073 steps.
    "gpt2-124m": TrainConfig(
        preset="gpt2-124m",
        data="",
        model=GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
        batch_size=16,
        batch_tokens=524_288,
        max_steps=19_073,
        lr=6e-4,
        warmup_steps=715,
        min_lr_ratio=0.1,
        weight_decay=0.1,
        eval_interval=250,
        eval_iters=20,
        log_interval=10,
        checkpoint_interval=1000,
    ),
}


def preset(name: str) -> TrainConfig:
    """The TrainConfig of preset `name` (residual mode `none`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}"
        ) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A `--config FILE`: a JSON object of flat TrainConfig keys."""
    return read_json_object(path, "config file")
