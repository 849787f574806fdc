"""`causalshift intervene`: what happens to a pretrained model's next-token loss when one
block's residual is attenuated (x_next = alpha * x + F_l(x)) at test time, no training; and,
with --learn-gate, where the paper's gate puts its mass when learned on the frozen model."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import time
from collections.abc import Callable
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
LEARN_GATE_NAME = "learn_gate.json"
CSV_FIELDS = ("layer", "alpha", "loss", "loss_lo", "loss_hi", "top1", "top1_lo", "top1_hi",
              "loss_increase", "loss_increase_lo", "loss_increase_hi")  # fmt: skip
SHIFT_FIELDS = ("input_until", "crossover", "output_from")  # CSV columns with --with-lens
SWEEP_ALPHAS = (0.0, 0.5, 0.9)  # --alpha's default for the (layer, alpha) sweep
GATE_ALPHA = 0.5  # --alpha's default with --learn-gate: the gate's floor A
# --learn-gate defaults, chosen so that Gemma 3 270M (the slower embedded model) finishes in
# about 8 minutes on 2 idle CPU cores (README "The gate learned on a frozen model").
GATE_BATCH = 2
GATE_STEPS = 24
GATE_LR = 0.2
GATE_EVAL_SEQS = 8
SWEEP_BATCH = 8


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
    alpha: tuple[float, ...] | None = option(
        None,
        "Comma-separated residual coefficients (each >= 0; 1 is the unchanged model; "
        "default: 0,0.5,0.9); with --learn-gate one value, the gate's floor A (default: 0.5).",
        parse=float_list,
        ge=0,
    )
    num_seqs: int = option(32, "Sequences to evaluate (with --learn-gate: to fit on).", ge=1)
    seq_len: int = option(
        128, "Tokens per sequence, BOS included when the tokenizer adds one.", ge=3
    )
    batch_size: int | None = option(
        None, "Sequences per forward pass (default 8; with --learn-gate 2, per step).", ge=1
    )
    with_lens: bool = option(
        False,
        "Also run the lens under each intervention (under the learned gate with "
        "--learn-gate) and store its shift layers.",
    )
    learn_gate: bool = option(
        False,
        "Learn the gate p = softmax(theta / tau), alpha_l = 1 - p_l (1 - A) over all blocks "
        "on the frozen model (writes learn_gate.json and gate_p.png instead of intervene.*).",
    )
    tau: float = option(1.0, "--learn-gate: the gate's softmax temperature.", gt=0)
    steps: int = option(GATE_STEPS, "--learn-gate: optimizer steps.", ge=1)
    lr: float = option(GATE_LR, "--learn-gate: Adam's learning rate for theta.", gt=0)
    eval_seqs: int = option(
        GATE_EVAL_SEQS, "--learn-gate: held-out sequences (after the fit ones) for the loss.", ge=1
    )
    seed: int = option(0, "--learn-gate: seed of the fit's batch order.", ge=0, le=2**63 - 1)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    out: str | None = option(None, "Output folder (default runs/intervene-<timestamp>).")

    def __post_init__(self) -> None:
        if self.alpha is not None and not self.alpha:
            raise UserError("--alpha needs at least one value, e.g. 0,0.5")
        if not self.layers.replace(",", "").strip():
            raise UserError("--layers needs all or at least one layer")
        check_fields(self, as_options=True)  # each number: finite, in its field's range
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.learn_gate:
            if self.alpha is not None and len(self.alpha) != 1:
                raise UserError(
                    f"--learn-gate takes one --alpha (the gate's floor A), got {len(self.alpha)}"
                )
            if self.layers != "all":
                raise UserError(
                    "--layers does not apply to --learn-gate (the gate spans all blocks)"
                )
        default = (GATE_ALPHA,) if self.learn_gate else SWEEP_ALPHAS
        object.__setattr__(self, "alpha", self.alpha or default)
        batch = GATE_BATCH if self.learn_gate else SWEEP_BATCH
        object.__setattr__(self, "batch_size", self.batch_size or batch)

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
    """Load cfg.model once and measure the baseline and every (layer, alpha) pair (or, with
    cfg.learn_gate, fit the gate)."""
    from causalshift.lens.models import load

    return measure_model(cfg, load(cfg.model, device=device), progress=progress)


def _windows(cfg: InterveneConfig, lm: LensModel, num_seqs: int, progress: bool) -> Any:
    """(num_seqs, seq_len) token windows of cfg.data for lm (a seq-len beyond the model's
    context is a UserError)."""
    from causalshift.corpus import token_sequences

    if lm.max_positions and cfg.seq_len > lm.max_positions:
        raise UserError(
            f"--seq-len {cfg.seq_len} exceeds {lm.name}'s context of {lm.max_positions} tokens"
        )
    return token_sequences(
        lm.tokenizer, cfg.data, num_seqs, cfg.seq_len, name=lm.name, progress=progress
    )


def shift_lens(
    cfg: InterveneConfig, lm: LensModel, tokens: Any, *, progress: bool = False
) -> Callable[[], dict[str, int | None]]:
    """A function that runs the lens of `causalshift analyze` (defaults: top-1 and top-5,
    K = 5) on lm as it is when called, over `tokens`, and returns its shift layers."""
    from causalshift.lens.command import AnalyzeConfig
    from causalshift.lens.command import measure as lens_measure

    acfg = AnalyzeConfig(
        model=(lm.name,),
        data=cfg.data,
        num_seqs=int(tokens.shape[0]),
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        device=str(lm.device),
    ).resolved()

    def shift_layer() -> dict[str, int | None]:
        result = lens_measure(acfg, [lm], tokens_for=lambda _lm: tokens, progress=progress)
        assert result is not None  # one process: rank 0
        return result.models[0].shift_layer.to_dict()

    return shift_layer


def _footer(cfg: InterveneConfig, lm: LensModel, num_seqs: int) -> dict[str, Any]:
    """What every document ends with: data, model and config."""
    return {
        "data": {"spec": cfg.data, "num_sequences": num_seqs, "seq_len": cfg.seq_len},
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


def measure_model(cfg: InterveneConfig, lm: LensModel, *, progress: bool = True) -> dict[str, Any]:
    """The intervene.json document of a loaded model (`causalshift.intervene` calls this
    too): its text from cfg.data, the baseline with the lens' shift layers, every (layer,
    alpha) pair of cfg; with cfg.learn_gate the learn_gate.json document instead."""
    from causalshift.lens.intervene import intervene, paired_change

    if cfg.learn_gate:
        return learn_gate_document(cfg, lm, progress=progress)
    layers = cfg.layer_numbers(lm.num_layers)
    tokens = _windows(cfg, lm, cfg.num_seqs, progress)
    pairs = [(layer, alpha) for layer in layers for alpha in cfg.alpha or ()]
    baseline, measured = intervene(
        lm,
        tokens,
        pairs,
        batch_size=cfg.batch_size or SWEEP_BATCH,
        progress=progress,
        lens=shift_lens(cfg, lm, tokens, progress=False),
        lens_runs=cfg.with_lens,
    )
    runs = []
    for (layer, alpha), m in zip(pairs, measured, strict=True):
        change = paired_change(m.sums, baseline.sums)
        shift = m.as_dict().pop("shift_layer", None)
        runs.append(
            {
                "layer": layer,
                "alpha": alpha,
                **m.sums.stats().as_dict(),
                "loss_increase": change["loss"],
                "loss_increase_ci95": change["loss_ci95"],
                **({"shift_layer": shift} if shift is not None else {}),
            }
        )
    doc = {"schema_version": SCHEMA_VERSION, "baseline": baseline.as_dict(), "runs": runs}
    return {**doc, **_footer(cfg, lm, cfg.num_seqs)}


def learn_gate_document(
    cfg: InterveneConfig, lm: LensModel, *, progress: bool = True
) -> dict[str, Any]:
    """The learn_gate.json document: fit the gate on cfg.num_seqs windows, measure on the
    cfg.eval_seqs windows that follow them (docs/method.md)."""
    from causalshift.lens.learn_gate import GateSettings, learn_gate

    tokens = _windows(cfg, lm, cfg.num_seqs + cfg.eval_seqs, progress)
    fit, heldout = tokens[: cfg.num_seqs], tokens[cfg.num_seqs :]
    settings = GateSettings(
        alpha=(cfg.alpha or (GATE_ALPHA,))[0],
        tau=cfg.tau,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size or GATE_BATCH,
        seed=cfg.seed,
    )
    lens = shift_lens(cfg, lm, heldout, progress=False)
    body = learn_gate(
        lm, fit, heldout, settings, lens=lens, lens_after=cfg.with_lens, progress=progress
    )
    return {
        "schema_version": SCHEMA_VERSION,
        **body,
        **_footer(cfg, lm, cfg.num_seqs + cfg.eval_seqs),
    }


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """intervene.json, intervene.csv and intervene.png in `out` (learn_gate.json and
    gate_p.png for a --learn-gate document)."""
    from causalshift.figures.intervene import FILE_NAME, plot_intervene

    if "gate" in result:
        from causalshift.figures.learned_gate import FILE_NAME as GATE_FIGURE
        from causalshift.figures.learned_gate import plot_learned_gate

        write_json(out / LEARN_GATE_NAME, result)
        plot_learned_gate(result, out / GATE_FIGURE)
        return
    write_json(out / "intervene.json", result)
    write_text(out / "intervene.csv", runs_csv(result["runs"]))
    plot_intervene(
        result["runs"],
        out / FILE_NAME,
        model=result["model"]["name"],
        shift_layer=result["baseline"].get("shift_layer"),
    )


def runs_csv(runs: list[dict[str, Any]]) -> str:
    """intervene.csv: one row per run; the lens' shift layers too when it ran per run."""
    lens = any("shift_layer" in r for r in runs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS + (SHIFT_FIELDS if lens else ()))
    for r in runs:
        row = [r["layer"], r["alpha"], r["loss"], *r["loss_ci95"], r["top1"], *r["top1_ci95"]]
        row += [r["loss_increase"], *r["loss_increase_ci95"]]
        if lens:
            shift = r.get("shift_layer") or {}
            row += ["" if shift.get(k) is None else shift[k] for k in SHIFT_FIELDS]
        writer.writerow(row)
    return buf.getvalue()
