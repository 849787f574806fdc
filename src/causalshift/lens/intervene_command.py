"""`causalshift intervene`: what happens to a pretrained model's next-token loss when one
block's residual is attenuated (x_next = alpha * x + F_l(x)) at test time, no training."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift.config import add_config_arguments, check_fields, config_overrides, option
from causalshift.errors import UserError
from causalshift.io import write_json, write_text
from causalshift.lens.command import command_output

if TYPE_CHECKING:
    from causalshift.lens.models import LensModel

SCHEMA_VERSION = 1
CSV_FIELDS = ("layer", "alpha", "loss", "loss_lo", "loss_hi", "top1", "top1_lo", "top1_hi",
              "loss_increase")  # fmt: skip


def float_list(text: str) -> tuple[float, ...]:
    """Parse '0,0.5' into (0.0, 0.5)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def layer_list(text: str) -> str:
    """'all' or comma-separated integers (checked against the model once it is loaded)."""
    text = text.strip()
    if text != "all":
        try:
            [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected all or comma-separated layers, got {text!r}"
            ) from None
    return text


@dataclass(frozen=True)
class InterveneConfig:
    """Options of `causalshift intervene`."""

    model: str = option("gemma-3-270m", "Model SPEC (as for analyze).")
    data: str = option("wiki", "Data SPEC (as for analyze).")
    layers: str = option(
        "all", "Blocks to attenuate: all, or comma-separated 1..L.", parse=layer_list
    )
    alpha: tuple[float, ...] = option(
        (0.0, 0.5, 0.9),
        "Comma-separated residual coefficients (each >= 0; 1 is the unchanged model).",
        parse=float_list,
        ge=0,
    )
    num_seqs: int = option(32, "Sequences to evaluate.", ge=1)
    seq_len: int = option(
        128, "Tokens per sequence, BOS included when the tokenizer adds one.", ge=3
    )
    batch_size: int = option(8, "Sequences per forward pass.", ge=1)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    out: str | None = option(None, "Output folder (default runs/intervene-<timestamp>).")

    def __post_init__(self) -> None:
        if not self.alpha:
            raise UserError("--alpha needs at least one value, e.g. 0,0.5")
        if not self.layers.replace(",", "").strip():
            raise UserError("--layers needs all or at least one layer")
        check_fields(self, as_options=True)  # each number: finite, in its field's range
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def layer_numbers(self, num_layers: int) -> list[int]:
        """The blocks to attenuate, 1..L; a layer out of range is a UserError."""
        if self.layers == "all":
            return list(range(1, num_layers + 1))
        layers = [int(x) for x in self.layers.split(",") if x.strip()]
        for layer in layers:
            if not 1 <= layer <= num_layers:
                raise UserError(f"--layers: {layer} is not a block of this model (1..{num_layers})")
        return sorted(set(layers))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, InterveneConfig)


def run(args: argparse.Namespace) -> int:
    cfg = InterveneConfig(**config_overrides(InterveneConfig, args))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out or os.path.join("runs", f"intervene-{stamp}"))
    with command_output(out, cfg.device) as info:  # as analyze: --out locked before loading
        result = measure(cfg, info.device, progress=info.is_main)
        if info.is_main:
            write_outputs(result, out)
            print(f"results written to {out}")
    return 0


def measure(cfg: InterveneConfig, device: Any, *, progress: bool = True) -> dict[str, Any]:
    """Load cfg.model once and measure the baseline and every (layer, alpha) pair."""
    from causalshift.lens.models import load

    return measure_model(cfg, load(cfg.model, device=device), progress=progress)


def measure_model(cfg: InterveneConfig, lm: LensModel, *, progress: bool = True) -> dict[str, Any]:
    """The intervene.json document of a loaded model (`causalshift.intervene` calls this
    too): its text from cfg.data, the baseline, every (layer, alpha) pair of cfg."""
    from causalshift.corpus import token_sequences
    from causalshift.lens.intervene import intervene

    if lm.max_positions and cfg.seq_len > lm.max_positions:
        raise UserError(
            f"--seq-len {cfg.seq_len} exceeds {lm.name}'s context of {lm.max_positions} tokens"
        )
    layers = cfg.layer_numbers(lm.num_layers)
    tokens = token_sequences(
        lm.tokenizer, cfg.data, cfg.num_seqs, cfg.seq_len, name=lm.name, progress=progress
    )
    pairs = [(layer, alpha) for layer in layers for alpha in cfg.alpha]
    baseline, stats = intervene(lm, tokens, pairs, batch_size=cfg.batch_size, progress=progress)
    runs = [
        {"layer": layer, "alpha": alpha, **s.as_dict(), "loss_increase": s.loss - baseline.loss}
        for (layer, alpha), s in zip(pairs, stats, strict=True)
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "baseline": baseline.as_dict(),
        "runs": runs,
        "data": {"spec": cfg.data, "num_sequences": cfg.num_seqs, "seq_len": cfg.seq_len},
        "model": {
            "name": lm.name,
            "source": lm.source,
            "architecture": lm.architecture,
            "num_layers": lm.num_layers,
        },
        "config": {
            **dataclasses.asdict(cfg),
            "ci95_method": "normal approximation over per-sequence means",
        },
    }


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """intervene.json, intervene.csv and intervene.png in `out`."""
    from causalshift.figures.intervene import FILE_NAME, plot_intervene

    write_json(out / "intervene.json", result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in result["runs"]:
        writer.writerow(
            [
                r["layer"],
                r["alpha"],
                r["loss"],
                *r["loss_ci95"],
                r["top1"],
                *r["top1_ci95"],
                r["loss_increase"],
            ]  # fmt: skip
        )
    write_text(out / "intervene.csv", buf.getvalue())
    plot_intervene(result["runs"], out / FILE_NAME, model=result["model"]["name"])
