"""`causalshift analyze`: where across depth do hidden states switch from t_i to t_{i+1}?"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalshift.config import add_config_arguments, config_overrides, int_list, option
from causalshift.errors import UserError
from causalshift.io import write_json, write_text

CPU_DEFAULT_SEQS = 32
GPU_DEFAULT_SEQS = 1000  # the paper's setup


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of `causalshift analyze`."""

    model: tuple[str, ...] = option(
        ("gemma-3-270m",),
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
        out)."""
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was given but no CUDA GPU is available")
        gpu = device.startswith("cuda")
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
    import torch

    from causalshift.corpus import token_sequences
    from causalshift.lens import distributed as dist
    from causalshift.lens.engine import run_lens
    from causalshift.lens.metrics import shift_layers
    from causalshift.lens.models import load, parse_dtype

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    weight_dtype, lens_dtype = parse_dtype(cfg.dtype, cfg.device)
    rank, world = dist.init()
    device = dist.local_device(cfg.device)
    results_models = []
    for spec in cfg.model:
        lm = load(spec, dtype=weight_dtype, device=device, device_map=cfg.device_map)
        if lm.max_positions and cfg.seq_len > lm.max_positions:
            raise UserError(
                f"--seq-len {cfg.seq_len} exceeds {lm.name}'s context of {lm.max_positions} tokens"
            )
        tokens = token_sequences(lm.tokenizer, cfg.data, cfg.num_seqs, cfg.seq_len, name=lm.name)
        run_ = run_lens(
            lm,
            tokens,
            topk=cfg.topk,
            batch_size=cfg.batch_size,
            compute_dtype=lens_dtype,
            vocab_chunk=cfg.vocab_chunk,
            seed=cfg.seed,
            progress=rank == 0,
            seq_indices=torch.arange(rank, cfg.num_seqs, world),
        )
        acc = run_.accumulator
        positions, excluded, seconds = dist.reduce_run(acc, run_)
        layers = acc.layer_summary()
        k = max(cfg.topk)
        results_models.append(
            {
                "name": lm.name,
                "source": lm.source,
                "architecture": lm.architecture,
                "num_layers": lm.num_layers,
                "tied_embeddings": lm.tied_embeddings,
                "vocab_size": int(lm.unembed.shape[0]),
                "bos_position_skipped": bool(
                    lm.bos_token_id is not None and (tokens[:, 0] == lm.bos_token_id).all()
                ),
                "num_positions": positions,
                "projection_excluded_positions": excluded,
                "layers": layers,
                "shift_layer": shift_layers(
                    [r[f"top{k}_input"] for r in layers], [r[f"top{k}_output"] for r in layers]
                ),
                "lens_screens": list(run_.screens),
                "seconds": seconds,
                "tokens_per_second": cfg.num_seqs * cfg.seq_len / seconds if seconds > 0 else None,
            }
        )
        del lm
    if rank != 0:
        dist.finish()
        return None
    results = {
        "schema_version": 1,
        "data": {"spec": cfg.data, "num_sequences": cfg.num_seqs, "seq_len": cfg.seq_len},
        "models": results_models,
        "config": {
            **dataclasses.asdict(cfg),
            "lens_dtype": str(lens_dtype).replace("torch.", ""),
            "world_size": world,
            "ci95_method": "normal approximation over per-sequence means",
        },
        "environment": environment(cfg.device),
    }
    write_results(out, results, plots=cfg.plots)
    dist.finish()
    return out


def write_results(out: Path, results: dict[str, Any], plots: bool = True) -> None:
    """results.json, layers.csv and (optionally) the two figures, each written atomically."""
    write_json(out / "results.json", results)
    write_text(out / "layers.csv", layers_csv(results))
    if plots:
        from causalshift.report.figures import plot_similarity, plot_topk

        plot_topk(results["models"], out / "topk_match.png")
        plot_similarity(results["models"], out / "similarity.png")


def layers_csv(results: dict[str, Any]) -> str:
    """Long form: one row per model x layer x metric with its 95% interval."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "layer", "depth", "metric", "value", "ci95_low", "ci95_high"])
    for m in results["models"]:
        for row in m["layers"]:
            for metric, (lo, hi) in row["ci95"].items():
                depth = row["layer"] / m["num_layers"]
                w.writerow([m["name"], row["layer"], f"{depth:.4f}", metric, row[metric], lo, hi])
    return buf.getvalue()


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    import torch
    import transformers

    from causalshift import __version__

    if device.startswith("cuda"):
        hw = torch.cuda.get_device_name(torch.device(device))
    else:
        cpu = platform.processor() or platform.machine()
        hw = f"cpu ({cpu}, {torch.get_num_threads()} threads)"
    return {
        "causalshift": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": hw,
    }
