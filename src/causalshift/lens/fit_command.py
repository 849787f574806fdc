"""`causalshift fit-lens`: train a tuned lens for a model, resumably, and report its held-out
KL per layer against the logit lens (lens/tuned.py holds the lens, lens/fit.py the loss).

LENS_DIR gets config.json and params.pt (the tuned-lens package's layout: `analyze --lens
tuned:LENS_DIR` reads it), fit.json (results.FitLensResult), fit_lens.png, and while training
fit_config.json and checkpoint.pt (translators and optimizer, every --checkpoint-every steps
and on SIGINT/SIGTERM; `--resume` continues from it, and it is removed once the lens is
written).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift import runtime
from causalshift.config import add_config_arguments, check_fields, config_overrides, option
from causalshift.errors import UserError
from causalshift.io import atomic_write, read_json_object, verify_checksum, write_json
from causalshift.locks import output_folder
from causalshift.results import FitLayerRow, FitLensResult

if TYPE_CHECKING:
    import torch

    from causalshift.lens.models import LensModel

CHECKPOINT_NAME = "checkpoint.pt"
FIT_CONFIG_NAME = "fit_config.json"
# Default training tokens (12 steps of 8 x 128): SmolLM2-135M's fit then fits in 20 minutes
# on 2 idle CPU cores (docs/method.md, "Tuned lens": the rate measured and the extrapolation).
DEFAULT_TOKENS = 12_288
# The first tokens of the text are left to `analyze`: its default windows on a GPU (1000 x
# 128, the larger default) come from there.
ANALYZE_TOKENS = 1000 * 128
# Options a --resume may give besides those of the run it continues.
RESUME_FREE = ("resume", "device", "plots", "out", "checkpoint_every")


@dataclass(frozen=True)
class FitConfig:
    """Options of `causalshift fit-lens`."""

    model: str | None = option(None, "Model SPEC (as for analyze); required.")
    data: str = option("wiki", "Data SPEC (as for analyze).")
    tokens: int | None = option(
        None,
        f"Training tokens (default {DEFAULT_TOKENS}); steps = tokens / (batch-size x seq-len), "
        "rounded up. Each training window is used once.",
        ge=1,
    )
    steps: int | None = option(None, "Training steps, instead of --tokens.", ge=1)
    seq_len: int = option(128, "Tokens per window, BOS included when the tokenizer adds one.", ge=3)
    batch_size: int = option(8, "Windows per step.", ge=1)
    optimizer: str = option(
        "sgd",
        "sgd (Nesterov momentum 0.9, the step scaled by 1 - momentum) or adam (amsgrad), as "
        "in the tuned-lens package.",
        choices=["sgd", "adam"],
    )
    lr: float | None = option(
        None,
        "Peak learning rate (default 1.0 for sgd, 1e-3 for adam: the tuned-lens package's).",
        gt=0,
    )
    weight_decay: float = option(1e-3, "Weight decay (towards the identity map).", ge=0)
    eval_seqs: int = option(8, "Held-out windows for the KL per layer at the end.", ge=1)
    skip_tokens: int = option(
        ANALYZE_TOKENS,
        "Text tokens left unused at the start (analyze's default windows, 1000 x 128); the "
        "held-out windows follow, then the training windows.",
        ge=0,
    )
    vocab_chunk: int = option(4096, "Vocabulary columns per chunk of the streaming KL.", ge=1)
    checkpoint_every: int = option(5, "Steps between checkpoints.", ge=1)
    seed: int = option(0, "Seed of the training windows' order.", ge=0, le=2**63 - 1)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    out: str | None = option(None, "LENS_DIR (default runs/fit-lens-<model>-<timestamp>).")
    resume: bool = option(False, "Continue the run in --out from its checkpoint.")
    plots: bool = option(True, "Write fit_lens.png.")

    def __post_init__(self) -> None:
        check_fields(self, as_options=True)
        if not self.model and not self.resume:  # a resumed fit reads its run's model
            raise UserError("give --model (a Model SPEC, as for analyze)")
        if self.tokens is not None and self.steps is not None:
            raise UserError("give --tokens or --steps, not both")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.resume and not self.out:
            raise UserError("--resume needs --out (the LENS_DIR to continue)")

    @property
    def num_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil((self.tokens or DEFAULT_TOKENS) / (self.batch_size * self.seq_len))

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.optimizer == "adam" else 1.0)

    def warmup(self) -> int:
        """Warm-up steps: a fifth of the run for adam (as the tuned-lens package), none for sgd."""
        return self.num_steps // 5 if self.optimizer == "adam" else 0

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0-based): linear warm-up, then linear decay."""
        w, total = self.warmup(), self.num_steps
        factor = (step + 1) / (w + 1) if step < w else (total - step) / max(1, total - w)
        return self.peak_lr * factor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FitConfig)


def run(args: argparse.Namespace) -> int:
    overrides = config_overrides(FitConfig, args)
    with _Signals() as signals:
        result = fit_lens(FitConfig(**overrides), overrides, stop=lambda: signals.signum)
    if isinstance(result, int):  # stopped by a signal, checkpoint saved
        return result
    print(summary_table(result))
    print(f"tuned lens written to {result.config['out']}")
    return 0


def fit_lens(
    cfg: FitConfig,
    given: dict[str, Any],
    *,
    lm: LensModel | None = None,
    progress: bool = True,
    stop: Any = None,
) -> FitLensResult | int:
    """`causalshift fit-lens` (and `causalshift.fit_lens`): a new fit into cfg.out, or with
    cfg.resume the run there continued (`given`: the options set by the caller, which must
    agree with the run's). The folder is locked for the whole fit."""
    if cfg.resume:
        cfg = resumed(cfg, given)
    out = Path(cfg.out or default_out(cfg.model or "model"))
    cfg = dataclasses.replace(cfg, out=str(out))
    with output_folder(out):
        if not cfg.resume:
            check_fresh(out)
        return fit(cfg, out, lm=lm, progress=progress, stop=stop)


def default_out(model: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"fit-lens-{Path(model).name}-{stamp}")


def check_fresh(out: Path) -> None:
    """A new run must not overwrite a lens or a run that --resume could continue."""
    for name in (CHECKPOINT_NAME, "params.pt"):
        if (out / name).exists():
            raise UserError(
                f"--out {out} already holds a tuned lens or a fit to continue with --resume "
                "(choose another --out)"
            )


def resumed(cfg: FitConfig, given: dict[str, Any]) -> FitConfig:
    """The config of the run in cfg.out; options given again must agree with it."""
    out = Path(str(cfg.out))
    if not (out / CHECKPOINT_NAME).is_file() or not (out / FIT_CONFIG_NAME).is_file():
        finished = (out / "params.pt").is_file()
        what = "holds a finished lens" if finished else "has no checkpoint"
        raise UserError(f"--resume: {out} {what}: nothing to resume")
    saved = read_json_object(out / FIT_CONFIG_NAME, "fit-lens config")
    names = {f.name for f in dataclasses.fields(FitConfig)}
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in names}
    for key, value in given.items():
        if key not in RESUME_FREE and key in fields and fields[key] != value:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume: {flag} {value} differs from the run's {fields[key]}")
    keep = {k: given[k] for k in RESUME_FREE if k in given}
    return FitConfig(**{**fields, **keep, "resume": True, "out": str(out)})


class _Signals:
    """SIGINT/SIGTERM set a flag (the step in progress finishes, a checkpoint is written);
    a second one aborts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def fit(
    cfg: FitConfig,
    out: Path,
    *,
    lm: LensModel | None = None,
    progress: bool = True,
    stop: Any = None,
) -> FitLensResult | int:
    """Train (or, with cfg.resume, continue) the tuned lens of cfg.model (or `lm`, a model
    already loaded) into `out`, then evaluate it; returns fit.json's record, or the exit code
    128 + signal when `stop()` reported a signal (a checkpoint was written)."""
    import torch

    from causalshift.lens.models import load

    if lm is None:
        lm = load(str(cfg.model), dtype=torch.float32, device=runtime.resolve_device(cfg.device))
    if lm.max_positions and cfg.seq_len > lm.max_positions:
        raise UserError(
            f"--seq-len {cfg.seq_len} exceeds {lm.name}'s context of {lm.max_positions} tokens"
        )
    held_out, train = fit_windows(lm, cfg, progress)
    if not cfg.resume:
        write_json(out / FIT_CONFIG_NAME, dataclasses.asdict(cfg))
    flags = [p.requires_grad for p in lm.model.parameters()]
    lm.model.requires_grad_(False)  # the model is frozen: only the translators learn
    try:
        trainer = _Trainer(cfg, lm, out, train)
        code = trainer.run(progress, stop)
        if code:
            return code
        trainer.lens.save(out)
        result = evaluate(cfg, lm, trainer, held_out, progress)
    finally:  # a model of the caller's (causalshift.fit_lens) gets its flags back
        for p, flag in zip(lm.model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    result.write(out)
    if cfg.plots:
        from causalshift.figures.fit_lens import FILE_NAME, plot_fit_lens

        plot_fit_lens(result, out / FILE_NAME)
    for name in (CHECKPOINT_NAME, FIT_CONFIG_NAME):  # the lens is written: nothing to resume
        (out / name).unlink(missing_ok=True)
    return result


def fit_windows(lm: LensModel, cfg: FitConfig, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out windows (eval_seqs, T), training windows (steps x batch, T)) of cfg.data:
    after the first skip_tokens tokens, never overlapping."""
    from causalshift.corpus import token_sequences
    from causalshift.corpus.tokens import adds_bos

    width = cfg.seq_len - int(adds_bos(lm.tokenizer))
    skip = math.ceil(cfg.skip_tokens / width)
    n_train = cfg.num_steps * cfg.batch_size
    total = skip + cfg.eval_seqs + n_train
    try:
        windows = token_sequences(
            lm.tokenizer, cfg.data, total, cfg.seq_len, name=lm.name, progress=progress
        )
    except UserError as e:
        if "only" not in str(e):
            raise
        raise UserError(
            f"{cfg.data}: too little text for {skip} windows left to analyze (--skip-tokens), "
            f"{cfg.eval_seqs} held out and {n_train} for training, of {cfg.seq_len} tokens: "
            "lower --tokens, --eval-seqs or --skip-tokens"
        ) from None
    return windows[skip : skip + cfg.eval_seqs], windows[skip + cfg.eval_seqs :]


class _Trainer:
    """The translators, their optimizer and the loop over training batches."""

    def __init__(self, cfg: FitConfig, lm: LensModel, out: Path, windows: torch.Tensor) -> None:
        import torch

        from causalshift.lens.fit import Unembedding
        from causalshift.lens.metrics import first_position
        from causalshift.lens.tuned import TunedLens

        self.cfg, self.lm, self.out, self.windows = cfg, lm, out, windows
        self.device = lm.device
        self.lens = TunedLens.for_model(lm).to(self.device)
        params = list(self.lens.parameters())
        if cfg.optimizer == "adam":  # amsgrad and the package's betas (its defaults)
            self.opt = torch.optim.Adam(
                params, lr=cfg.peak_lr, betas=(0.9, 0.999), amsgrad=True,
                weight_decay=cfg.weight_decay,
            )  # fmt: skip
        else:  # the package's SGD: its lr scaled by 1 - momentum
            self.opt = torch.optim.SGD(
                params, lr=cfg.peak_lr * 0.1, momentum=0.9, nesterov=True,
                weight_decay=cfg.weight_decay,
            )  # fmt: skip
        self.head = Unembedding.of(lm, cfg.vocab_chunk, self.device)
        self.first = first_position(windows, lm.bos_token_id)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.order = torch.randperm(len(windows), generator=gen)
        self.step, self.seconds, self.history = 0, 0.0, []
        if cfg.resume:
            self.restore()

    def batch(self, step: int) -> torch.Tensor:
        b = self.cfg.batch_size
        return self.windows[self.order[step * b : (step + 1) * b]]

    def run(self, progress: bool, stop: Any = None) -> int:
        """Train from self.step to the last step; returns 0, or 128 + signal after a stop."""
        import torch
        from tqdm.auto import tqdm

        from causalshift.lens.fit import train_step

        cfg = self.cfg
        bar = tqdm(
            total=cfg.num_steps, initial=self.step, desc=f"fit-lens {self.lm.name}",
            unit="step", disable=not progress, dynamic_ncols=True,
        )  # fmt: skip
        while self.step < cfg.num_steps:
            t0 = time.perf_counter()
            lr = cfg.lr_at(self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr * (0.1 if cfg.optimizer == "sgd" else 1.0)
            per_layer = train_step(self.lm, self.lens, self.batch(self.step), self.first, self.head)
            torch.nn.utils.clip_grad_norm_(self.lens.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            self.seconds += time.perf_counter() - t0
            loss = float(per_layer.sum())
            if not math.isfinite(loss):
                raise UserError(f"fit-lens: the loss is {loss} at step {self.step}: lower --lr")
            self.history.append({"step": self.step, "loss": loss, "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            signum = stop() if callable(stop) else 0
            if signum or self.step % cfg.checkpoint_every == 0 or self.step == cfg.num_steps:
                self.checkpoint()
            if signum and self.step < cfg.num_steps:
                bar.close()
                print(f"fit-lens: stopped at step {self.step}; continue with --resume")
                return 128 + signum
        bar.close()
        return 0

    def checkpoint(self) -> None:
        """checkpoint.pt: the translators, the optimizer, the step, the history (atomic,
        checksummed)."""
        import torch

        state = {
            "step": self.step,
            "seconds": self.seconds,
            "history": self.history,
            "lens": {k: v.detach().cpu() for k, v in self.lens.state_dict().items()},
            "optimizer": self.opt.state_dict(),
        }
        atomic_write(self.out / CHECKPOINT_NAME, lambda tmp: torch.save(state, tmp), checksum=True)

    def restore(self) -> None:
        """Continue from checkpoint.pt (checked against checksums.json)."""
        import torch

        path = self.out / CHECKPOINT_NAME
        verify_checksum(path)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # a damaged file: torch raises many kinds
            raise UserError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
        try:
            self.lens.load_state_dict(state["lens"])
            self.opt.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from None
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.history = list(state["history"])


def evaluate(
    cfg: FitConfig, lm: LensModel, trainer: _Trainer, held_out: torch.Tensor, progress: bool
) -> FitLensResult:
    """fit.json: the held-out KL per layer of the tuned and the logit lens."""
    from tqdm.auto import tqdm

    from causalshift.lens.command import environment
    from causalshift.lens.fit import held_out_kl
    from causalshift.lens.metrics import mean_ci95

    bar = tqdm(total=2 * len(held_out), desc="held-out KL", unit="seq", disable=not progress)
    kl = {
        key: held_out_kl(lm, lens, held_out, cfg.batch_size, trainer.head, progress=bar.update)
        for key, lens in (("kl_tuned", trainer.lens), ("kl_logit", None))
    }
    bar.close()
    layers = []
    for layer in range(lm.num_layers + 1):
        row, ci = {}, {}
        for key, (sums, counts) in kl.items():
            mean, lo, hi = mean_ci95(sums[:, layer], counts)
            row[key], ci[key] = mean, [lo, hi]
        layers.append(FitLayerRow(layer=layer, ci95=ci, **row))
    steps, tokens = trainer.step, trainer.step * cfg.batch_size * cfg.seq_len
    return FitLensResult(
        model={
            "name": lm.name,
            "source": lm.source,
            "architecture": lm.architecture,
            "num_layers": lm.num_layers,
            "d_model": int(lm.unembed.shape[1]),
            "vocab_size": int(lm.unembed.shape[0]),
        },  # fmt: skip
        data={
            "spec": cfg.data,
            "seq_len": cfg.seq_len,
            "skip_tokens": cfg.skip_tokens,
            "eval_windows": len(held_out),
            "train_windows": len(trainer.windows),
        },  # fmt: skip
        training={
            "steps": steps,
            "tokens": tokens,
            "seconds": trainer.seconds,
            "seconds_per_step": trainer.seconds / steps if steps else None,
            "tokens_per_second": tokens / trainer.seconds if trainer.seconds else None,
            "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
        },  # fmt: skip
        layers=layers,
        history=trainer.history,
        config={**dataclasses.asdict(cfg), "ci95_method": "normal approximation over sequences"},
        environment=environment(lm.device),
    )


def summary_table(result: FitLensResult) -> str:
    """The held-out KL per layer, as printed at the end."""
    lines = ["layer  KL tuned  KL logit  (held-out, nats)"]
    for r in result.layers:
        lines.append(f"{r.layer:5d}  {r.kl_tuned:8.4f}  {r.kl_logit:8.4f}")
    return "\n".join(lines)
