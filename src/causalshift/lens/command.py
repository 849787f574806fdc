"""`causalshift analyze`: where across depth do hidden states switch from t_i to t_{i+1}?"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift import runtime
from causalshift.config import (
    add_config_arguments,
    check_fields,
    config_overrides,
    int_list,
    option,
    str_list,
)
from causalshift.errors import UserError
from causalshift.locks import output_folder
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
        ge=1,
    )
    seq_len: int = option(
        128, "Tokens per sequence, BOS included when the tokenizer adds one.", ge=3
    )
    batch_size: int | None = option(
        None, "Sequences per forward pass (default 8 on CPU, 16 on GPU).", ge=1
    )
    topk: tuple[int, ...] = option(
        (1, 5),
        "Comma-separated k values for top-k match (each below the vocabulary size).",
        parse=int_list,
        ge=1,
    )
    dtype: str = option(
        "auto",
        "Precision of the lens' screening matmul: auto (CPU: the fastest screen here for the "
        "run's size, measured by a short probe cached per machine; GPU: bf16), float32, "
        "bfloat16, int8 (CPU: the int8 kernel the CPU has), or one int8 kernel: int8-intmm "
        "(torch._int_mm), int8-onednn, int8-fbgemm. The ranks are the float32 ranks either "
        "way; only speed differs (on CUDA bfloat16/auto also load the weights in bf16).",
        choices=list(runtime.LENS_DTYPES),
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    device_map: str | None = option(
        None, "Pass 'auto' to spread a model too large for one GPU over all GPUs (accelerate)."
    )
    out: str | None = option(None, "Output folder (default runs/analyze-<timestamp>).")
    plots: bool = option(True, "Write topk_match.png and similarity.png.")
    seed: int = option(0, "Seed of the random-token baseline (cos_random).", ge=0, le=2**63 - 1)
    vocab_chunk: int | None = option(
        None,
        "Vocabulary columns decoded at once, the working set is positions x this "
        "(default 4096 on CPU, where the chunk's logits then stay in cache, 16384 on GPU).",
        ge=1,
    )
    targets: tuple[str, ...] = option(
        ("input", "output"),
        "Comma-separated targets: input (t_i) and output (t_(i+1)) always, next2 (t_(i+2)) "
        "adds top{k}_next2 columns.",
        parse=str_list,
    )
    save_positions: bool = option(
        False,
        "Write positions.parquet: one row per model x sequence x position x layer with exact "
        "ranks (slower: every rank is decoded uncapped; see docs/method.md).",
    )
    sublayers: bool = option(
        False,
        "Also decode the stream after each block's attention, before its MLP (rows l.attn), "
        "and split each block's change of the output target's log-probability, top-k match "
        "and projection between attention and MLP (sublayers.png; see docs/method.md).",
    )
    lens: tuple[str, ...] = option(
        ("logit",),
        "Comma-separated lenses: logit (U . N(h)) and/or tuned:LENS_DIR (a tuned lens from "
        "`causalshift fit-lens` or the tuned-lens package: U . N(h + A_l h + b_l)); each "
        "(model, lens) is one result, drawn side by side (see docs/method.md).",
        parse=str_list,
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise UserError("give at least one --model")
        if len(set(self.model)) != len(self.model):
            raise UserError("each --model may be given once")
        if not self.topk:
            raise UserError("--topk needs at least one value, e.g. 1,5")
        check_fields(self, as_options=True)  # each number: finite, in its field's range
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        from causalshift.lens.metrics import check_targets

        try:
            object.__setattr__(self, "targets", check_targets(self.targets))
        except ValueError as e:
            raise UserError(f"--targets: {e}") from None
        from causalshift.lens.tuned import check_lens_specs

        lenses = check_lens_specs(self.lens, self.sublayers, self.save_positions)
        object.__setattr__(self, "lens", lenses)

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
    with command_output(out, cfg.device) as info:
        result = measure(cfg, cfg.model, info=info, progress=info.is_main)
        if result is None:
            return None
        write_outputs(result, out, plots=cfg.plots)
        return out


@contextlib.contextmanager
def command_output(out: Path, device: str) -> Iterator[runtime.DistInfo]:
    """The process (joined to a torchrun group if there is one) and its --out folder: on
    rank 0 created, checked writable and locked before any model loads; the lock released
    and the group left at the end, however the command ends."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    info = runtime.setup(device)
    hold = contextlib.ExitStack()
    try:
        if info.is_main:
            hold.enter_context(output_folder(out))
        yield info
    finally:
        hold.close()
        runtime.teardown()


def measure(
    cfg: AnalyzeConfig,
    models: Sequence[str | LensModel],
    *,
    info: runtime.DistInfo | None = None,
    tokens_for: Callable[[LensModel], torch.Tensor] | None = None,
    progress: bool = True,
) -> AnalyzeResult | None:
    """The one measurement behind `causalshift analyze` and `causalshift.measure`: run the
    lens on each model (a SPEC, loaded in turn, or a `LensModel` already in memory) over the
    token windows of cfg.data (or `tokens_for(lm)`); None on ranks other than 0.

    cfg must be `resolved()`; info: this process's rank and device (default: one process on
    cfg.device, no process group); progress: show progress bars."""
    info = info or runtime.DistInfo(0, 0, 1, runtime.resolve_device(cfg.device))
    weight_dtype, lens_dtype = runtime.lens_dtypes(cfg.dtype, cfg.device)
    screens: dict[str, Any] = {}  # model -> how its lens screens were chosen
    results = [  # one result per (model, lens)
        r
        for m in models
        for r in measure_model(
            cfg, m, info, weight_dtype, lens_dtype, tokens_for, progress, screens
        )
    ]
    if not info.is_main:
        return None
    return AnalyzeResult(
        data=AnalyzeData(spec=cfg.data, num_sequences=cfg.num_seqs, seq_len=cfg.seq_len),
        models=results,
        config={
            **dataclasses.asdict(cfg),
            "lens_dtype": lens_dtype or "auto",
            "world_size": info.world_size,
            "ci95_method": "normal approximation over per-sequence means",
        },
        environment={
            **environment(info.device),
            "cpu_capability": runtime.cpu_capability(),
            "lens_screen": screens,
        },
    )


def write_outputs(result: AnalyzeResult, out: Path, *, plots: bool = True) -> None:
    """The files of an analysis in `out`: results.json, layers.csv and (plots) the figures."""
    result.write(out)
    if plots:
        from causalshift.figures import analyze_figures
        from causalshift.lens.metrics import label

        analyze_figures(result, out, metric_label=label)


def measure_model(
    cfg: AnalyzeConfig,
    model: str | LensModel,
    info: runtime.DistInfo,
    weight_dtype: torch.dtype,
    lens_dtype: str | None,
    tokens_for: Callable[[LensModel], torch.Tensor] | None = None,
    progress: bool = True,
    screens: dict[str, Any] | None = None,
) -> list[ModelResult]:
    """Load one model SPEC (or take a loaded model) and run each lens of cfg.lens on this
    rank's share of the sequences: one result per lens, summed over ranks (every rank
    returns the same). lens_dtype:
    the screen `--dtype` asks for (None: measured); `screens[name]` gets how it was chosen
    (the probe's timings included)."""
    import torch

    from causalshift.corpus import token_sequences
    from causalshift.lens.engine import reduce_run, run_lens
    from causalshift.lens.models import LensModel, load

    if isinstance(model, LensModel):
        lm = model
    else:
        lm = load(model, dtype=weight_dtype, device=info.device, device_map=cfg.device_map)
    if lm.max_positions and cfg.seq_len > lm.max_positions:
        raise UserError(
            f"--seq-len {cfg.seq_len} exceeds {lm.name}'s context of {lm.max_positions} tokens"
        )
    vocab = int(lm.unembed.shape[0])
    if max(cfg.topk) >= vocab:  # every token is in the top V: each rate would be 1
        raise UserError(
            f"--topk {max(cfg.topk)} is not below {lm.name}'s vocabulary of {vocab} tokens"
        )
    if cfg.sublayers:  # refuse an unsupported family before reading any text
        from causalshift.lens.sublayers import check_supported

        check_supported(lm)
    from causalshift.lens.tuned import lens_translator

    translators = [lens_translator(spec, lm) for spec in cfg.lens]  # checked before any text
    if tokens_for is not None:
        tokens = tokens_for(lm)
    else:
        tokens = token_sequences(
            lm.tokenizer, cfg.data, cfg.num_seqs, cfg.seq_len, name=lm.name, progress=progress
        )
    results = []
    for spec, translate in zip(cfg.lens, translators, strict=True):
        run = run_lens(
            lm,
            tokens,
            topk=cfg.topk,
            batch_size=cfg.batch_size,
            compute_dtype=lens_dtype,
            vocab_chunk=cfg.vocab_chunk,
            seed=cfg.seed,
            progress=progress and info.is_main,
            seq_indices=torch.arange(info.rank, cfg.num_seqs, info.world_size),
            targets=cfg.targets,
            save_positions=cfg.save_positions,
            sublayers=cfg.sublayers,
            translate=translate,
        )
        if screens is not None and run.screen_choice is not None:
            screens[lm.name] = {**run.screen_choice.to_dict(), "compiled_kernels": run.compiled}
        results.append(model_result(cfg, lm, tokens, run, *reduce_run(run), lens=spec))
    return results


def model_result(
    cfg: AnalyzeConfig,
    lm: LensModel,
    tokens: torch.Tensor,
    run: LensRun,
    positions: int,
    excluded: int,
    seconds: float,
    lens: str = "logit",
) -> ModelResult:
    """One model's entry of results.json from its (rank-summed) lens run through `lens`."""
    from causalshift.lens.metrics import shift_layers
    from causalshift.lens.positions import model_positions
    from causalshift.lens.strata import model_strata
    from causalshift.lens.sublayers import contributions

    acc = run.accumulator
    layers = acc.layer_summary()
    k = max(cfg.topk)
    blocks = [r for r in layers if "label" not in r]  # shift layers: rows 0..L only
    shift = shift_layers(
        [r[f"top{k}_input"] for r in blocks], [r[f"top{k}_output"] for r in blocks]
    )
    bos = lm.bos_token_id
    return ModelResult(
        name=lm.name,
        lens=lens,
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
        strata=model_strata(run.strata, k),
        sublayers=contributions(acc.sums, acc.counts, acc.names, cfg.topk) if acc.sublayers else [],
        positions=model_positions(run.positions, run.first_position, lm, tokens),
    )


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    return runtime.environment(ENVIRONMENT_FIELDS, device=runtime.hardware_name(device))
