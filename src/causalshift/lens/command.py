"""`causalshift analyze`: where across depth do hidden states switch from t_i to t_{i+1}?"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift import runtime
from causalshift.config import add_config_arguments, config_overrides, int_list, option
from causalshift.errors import UserError
from causalshift.results import AnalyzeData, AnalyzeResult, LayerRow, ModelResult, ShiftLayers

if TYPE_CHECKING:
    import torch

    from causalshift.lens.engine import LensRun
    from causalshift.lens.models import LensModel

DEFAULT_MODEL = "gemma-3-270m"
CPU_DEFAULT_SEQS = 32
GPU_DEFAULT_SEQS = 1000  # the paper's setup
# The fields of results.json's "environment", in order.
ENVIRONMENT_FIELDS = ("causalshift", "torch", "transformers", "python", "device")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of `causalshift analyze`."""

    model: tuple[str, ...] = option(
        (DEFAULT_MODEL,),
        "Model SPEC, repeatable: an embedded name (gemma-3-270m, smollm2-135m), a hub id or "
        "local HF folder, a .gguf file, or a causalshift run directory / export.",
        action="append",
    )
    data: str = option(
        "wiki",
        "Data SPEC: wiki (embedded Wikipedia), wikitext, a .txt/.jsonl/.parquet path, "
        "or hf:NAME[:CONFIG[:SPLIT]].",
    )
    num_seqs: int | None = option(
        None,
        f"Sequences to analyse (default {GPU_DEFAULT_SEQS} on GPU, {CPU_DEFAULT_SEQS} on CPU).",
    )
    seq_len: int = option(128, "Tokens per sequence, BOS included when the tokenizer adds one.")
    batch_size: int | None = option(
        None, "Sequences per forward pass (default 8 on CPU, 16 on GPU)."
    )
    topk: tuple[int, ...] = option(
        (1, 5), "Comma-separated k values for top-k match.", parse=int_list
    )
    dtype: str = option(
        "auto",
        "Precision of the lens' screening matmul: auto (CPU: int8 where the CPU has int8 dot "
        "products (VNNI/AMX), else bf16 where it has bf16 matmul, else float32; GPU: bf16), "
        "float32, bfloat16, int8 (CPU). The ranks are the float32 ranks either way; only "
        "speed differs (on CUDA bfloat16/auto also load the weights in bf16).",
        choices=["auto", "float32", "bfloat16", "int8"],
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    device_map: str | None = option(
        None, "Pass 'auto' to spread a model too large for one GPU over all GPUs (accelerate)."
    )
    out: str | None = option(None, "Output folder (default runs/analyze-<timestamp>).")
    plots: bool = option(True, "Write topk_match.png and similarity.png.")
    seed: int = option(0, "Seed of the random-token baseline (cos_random).")
    vocab_chunk: int | None = option(
        None,
        "Vocabulary columns decoded at once, the working set is positions x this "
        "(default 4096 on CPU, where the chunk's logits then stay in cache, 16384 on GPU).",
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise UserError("give at least one --model")
        if len(set(self.model)) != len(self.model):
            raise UserError("each --model may be given once")
        if not self.topk or any(k < 1 for k in self.topk):
            raise UserError(f"--topk values must be >= 1, got {','.join(map(str, self.topk))}")
        if self.num_seqs is not None and self.num_seqs < 1:
            raise UserError("--num-seqs must be >= 1")
        if self.seq_len < 3:
            raise UserError("--seq-len must be >= 3")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError("--batch-size must be >= 1")
        if self.vocab_chunk is not None and self.vocab_chunk < 1:
            raise UserError("--vocab-chunk must be >= 1")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def resolved(self) -> AnalyzeConfig:
        """Fill the hardware-dependent defaults (device, num_seqs, batch_size, vocab_chunk,
        out); `auto` becomes cuda or cpu, an unusable device a UserError."""
        kind = runtime.resolve_device(self.device).type
        device = kind if self.device == "auto" else self.device
        gpu = kind == "cuda"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return dataclasses.replace(
            self,
            device=device,
            num_seqs=self.num_seqs or (GPU_DEFAULT_SEQS if gpu else CPU_DEFAULT_SEQS),
            batch_size=self.batch_size or (16 if gpu else 8),
            vocab_chunk=self.vocab_chunk or (16384 if gpu else 4096),
            out=self.out or os.path.join("runs", f"analyze-{stamp}"),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, AnalyzeConfig)


def run(args: argparse.Namespace) -> int:
    overrides = config_overrides(AnalyzeConfig, args)
    if "model" in overrides:
        overrides["model"] = tuple(overrides["model"])
    cfg = AnalyzeConfig(**overrides).resolved()
    out = analyze(cfg)
    if out is not None:
        print(f"results written to {out}")
    return 0


def analyze(cfg: AnalyzeConfig) -> Path | None:
    """Run the lens for every model of `cfg`; write results on rank 0 and return the folder."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    weight_dtype, lens_dtype = runtime.lens_dtypes(cfg.dtype, cfg.device)
    info = runtime.setup(cfg.device)
    try:
        models = [analyze_model(cfg, spec, info, weight_dtype, lens_dtype) for spec in cfg.model]
        if not info.is_main:
            return None
        result = AnalyzeResult(
            data=AnalyzeData(spec=cfg.data, num_sequences=cfg.num_seqs, seq_len=cfg.seq_len),
            models=models,
            config={
                **dataclasses.asdict(cfg),
                "lens_dtype": str(lens_dtype).replace("torch.", ""),
                "world_size": info.world_size,
                "ci95_method": "normal approximation over per-sequence means",
            },
            environment=environment(info.device),
        )
        result.write(out)
        if cfg.plots:
            from causalshift.figures import analyze_figures
            from causalshift.lens.metrics import label

            analyze_figures(result, out, metric_label=label)
        return out
    finally:
        runtime.teardown()


def analyze_model(
    cfg: AnalyzeConfig,
    spec: str,
    info: runtime.DistInfo,
    weight_dtype: torch.dtype,
    lens_dtype: torch.dtype,
) -> ModelResult:
    """Load one model SPEC and run the lens on this rank's share of the sequences; the
    result is summed over ranks (every rank returns the same)."""
    import torch

    from causalshift.corpus import token_sequences
    from causalshift.lens.engine import reduce_run, run_lens
    from causalshift.lens.models import load

    lm = load(spec, dtype=weight_dtype, device=info.device, device_map=cfg.device_map)
    if lm.max_positions and cfg.seq_len > lm.max_positions:
        raise UserError(
            f"--seq-len {cfg.seq_len} exceeds {lm.name}'s context of {lm.max_positions} tokens"
        )
    tokens = token_sequences(lm.tokenizer, cfg.data, cfg.num_seqs, cfg.seq_len, name=lm.name)
    run = run_lens(
        lm,
        tokens,
        topk=cfg.topk,
        batch_size=cfg.batch_size,
        compute_dtype=lens_dtype,
        vocab_chunk=cfg.vocab_chunk,
        seed=cfg.seed,
        progress=info.is_main,
        seq_indices=torch.arange(info.rank, cfg.num_seqs, info.world_size),
    )
    return model_result(cfg, lm, tokens, run, *reduce_run(run))


def model_result(
    cfg: AnalyzeConfig,
    lm: LensModel,
    tokens: torch.Tensor,
    run: LensRun,
    positions: int,
    excluded: int,
    seconds: float,
) -> ModelResult:
    """One model's entry of results.json from its (rank-summed) lens run."""
    from causalshift.lens.metrics import shift_layers

    layers = run.accumulator.layer_summary()
    k = max(cfg.topk)
    shift = shift_layers(
        [r[f"top{k}_input"] for r in layers], [r[f"top{k}_output"] for r in layers]
    )
    bos = lm.bos_token_id
    return ModelResult(
        name=lm.name,
        source=lm.source,
        architecture=lm.architecture,
        num_layers=lm.num_layers,
        tied_embeddings=lm.tied_embeddings,
        vocab_size=int(lm.unembed.shape[0]),
        bos_position_skipped=bool(bos is not None and (tokens[:, 0] == bos).all()),
        num_positions=positions,
        projection_excluded_positions=excluded,
        layers=[LayerRow.from_dict(r) for r in layers],
        shift_layer=ShiftLayers.from_dict(shift),
        lens_screens=list(run.screens),
        seconds=seconds,
        tokens_per_second=cfg.num_seqs * cfg.seq_len / seconds if seconds > 0 else None,
    )


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    return runtime.environment(ENVIRONMENT_FIELDS, device=runtime.hardware_name(device))
