"""The training loop: AdamW, warmup + cosine, gradient accumulation, DDP, eval, checkpoints.

One optimizer step (step s -> s + 1):

    lr = base_lr * factor(s)                           # every param group, gate's included
    for micro in range(accum):                          # DDP syncs gradients on the last one
        loss = model(x, y) / accum ; loss.backward()
    clip grad norm; all-reduce [loss, grad norm, stop flag] over ranks
    non-finite loss or grad norm -> stop *before* the update, keep the last checkpoint
    optimizer.step()

`Trainer.run` is a loop over named steps. After step s: validation (every eval_interval),
a metrics record (every log_interval; `RunLog` in train/runlog.py owns metrics.jsonl,
the trackers, the figures and summary.json), a checkpoint (every checkpoint_interval), all
written on rank 0; the last step does all three. SIGINT/SIGTERM set a flag that is read
when the step in progress all-reduces its loss (so all ranks agree): they finish that step,
save a checkpoint and exit with 128 + signal number. A signal that lands after that
all-reduce (during validation or a checkpoint) is read by the next step, which then is the
last.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalshift import runtime
from causalshift.errors import UserError
from causalshift.gpt.config import ResidualConfig
from causalshift.io import write_json
from causalshift.results import RUN_CONFIG_NAME
from causalshift.train.checkpoint import (
    STATE_NAME,
    check_weights_file,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from causalshift.train.config import TrainConfig, model_changes
from causalshift.train.data import (
    TokenSplit,
    TrainSampler,
    check_token_ids,
    eval_windows,
    rank_slice,
    read_meta,
)
from causalshift.train.runlog import RunLog

WEIGHTS_NAME = "model.safetensors"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for the update made at `step` (0-based): warmup, cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr_ratio
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def nonfinite_hint(cfg: TrainConfig) -> str:
    """What to change after a non-finite loss: --alpha when the run sets one (A > 1 makes
    the cut block amplify its residual stream, which can overflow), else the learning rate."""
    res = cfg.model.residual
    default = ResidualConfig().alpha
    if res.mode == "none" or res.alpha == default:
        return "try a lower --lr"
    if res.alpha > 1:
        return f"check --alpha: A = {res.alpha:g} > 1 amplifies the residual stream"
    return f"check --alpha (A = {res.alpha:g}), or try a lower --lr"


# config.json's "environment": these keys in this order.
ENVIRONMENT_FIELDS = (
    "causalshift python torch numpy device device_name world_size autocast_dtype cpu_count "
    "torch_threads"
).split()


def environment(info: runtime.DistInfo, amp: torch.dtype | None) -> dict[str, Any]:
    """The versions and hardware recorded in config.json."""
    return runtime.environment(
        ENVIRONMENT_FIELDS,
        device=str(info.device),
        device_name=runtime.device_name(info.device),
        world_size=info.world_size,
        autocast_dtype=str(amp).replace("torch.", "") if amp else "float32",
    )


class _Signals:
    """SIGINT/SIGTERM set a flag; a second one aborts at once."""

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


@dataclass
class _Meter:
    """Training tokens and seconds; each process's first step (it compiles) is left out."""

    warm: bool = False
    tokens: int = 0
    seconds: float = 0.0
    interval_tokens: int = 0
    interval_seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        if self.warm:
            self.tokens += tokens
            self.seconds += seconds
            self.interval_tokens += tokens
            self.interval_seconds += seconds
        self.warm = True

    def interval_rate(self) -> float | None:
        """Tokens/s since the last call (None: no timed step since)."""
        rate = self.interval_tokens / self.interval_seconds if self.interval_seconds else None
        self.interval_tokens, self.interval_seconds = 0, 0.0
        return rate

    def rate(self) -> float | None:
        """Tokens/s over the whole run."""
        return self.tokens / self.seconds if self.seconds else None


class Trainer:
    """Trains one run in `run_dir`; `run()` returns the exit code."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        data_dir: Path,
        info: runtime.DistInfo,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        from causalshift.gpt.model import GPT

        self.cfg, self.run_dir, self.info, self.progress = cfg, Path(run_dir), info, progress
        self.device = info.device
        self.accum = cfg.grad_accum_for(info.world_size)
        self.global_batch = cfg.batch_size * self.accum * info.world_size  # sequences
        self.step_tokens = self.global_batch * cfg.model.block_size
        self.amp = runtime.autocast_dtype(cfg.dtype, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        meta = read_meta(data_dir)
        if meta["vocab_size"] > cfg.model.vocab_size:
            raise UserError(
                f"data vocabulary ({meta['vocab_size']}) is larger than the model's "
                f"({cfg.model.vocab_size})"
            )
        check_token_ids(data_dir, meta, cfg.model.vocab_size)  # every run, resumed ones too
        self.data_dir, self.meta = Path(data_dir), meta
        T = cfg.model.block_size
        self.sampler = TrainSampler(TokenSplit(data_dir, "train"), T, cfg.seed)
        self.val = TokenSplit(data_dir, "val")
        self.val_starts = eval_windows(self.val, T, cfg.eval_iters * self.global_batch)

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = GPT(cfg.model).to(self.device)
        self.optimizer = self.model.configure_optimizer(
            cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.peak_gate_lr, self.device.type
        )
        self.step = 0
        self.position = 0  # training samples consumed (global)
        self.last_checkpoint: int | None = None
        if resume:
            self._restore()
        else:
            torch.manual_seed(cfg.seed + info.rank)  # per-rank dropout noise
        self.fwd = torch.compile(self.model) if cfg.compile else self.model
        # On CPU the eval graph would be a second compile (about as long as the first) for
        # little gain: evaluate eagerly there. DDP is not needed without gradients.
        self.eval_model = self.fwd if self.device.type == "cuda" else self.model
        self.ddp = None
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (fixed alphas, gate noise) are computed identically on every rank:
            # no need to sync them before every forward.
            no_sync = {"broadcast_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DDP).parameters:
                no_sync = {"forward_sync_buffers": False}
            self.ddp = DDP(self.fwd, device_ids=ids, **no_sync)
            self.fwd = self.ddp

    # ---- state -------------------------------------------------------------------------

    def _restore(self) -> None:
        state = load_state(self.run_dir)
        check_weights_file(self.run_dir / WEIGHTS_NAME)
        changed = model_changes(state["config"], self.cfg.model)
        if changed:
            raise UserError(f"cannot change {', '.join(changed)} when resuming {self.run_dir}")
        # Hyperparameters come from the (possibly changed) config, not the checkpoint.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group, hyper in zip(self.optimizer.param_groups, fresh, strict=True):
                group.update(hyper)
        except (RuntimeError, ValueError, KeyError) as e:
            msg = str(e).splitlines()[0]
            raise UserError(f"checkpoint {self.run_dir / STATE_NAME} does not fit: {msg}") from None
        self.step, self.position = int(state["step"]), int(state["position"])
        if self.cfg.max_steps < self.step:  # before config.json is rewritten
            raise UserError(
                f"--max-steps {self.cfg.max_steps} is below the step {self.step} that "
                f"{self.run_dir} has reached: give --max-steps {self.step} or more"
            )
        self.last_checkpoint = self.step
        rngs = state["rng"]
        set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])

    def save_checkpoint(self) -> bool:
        """Weights + train state (collective: call on every rank). False if not finite."""
        from causalshift.gpt.io import save_model

        finite = bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())
        rngs = runtime.gather_objects(rng_state())
        if finite and self.info.is_main:
            save_model(self.model, self.run_dir)
            save_state(
                self.run_dir,
                {
                    "step": self.step,
                    "position": self.position,
                    "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    "optimizer": self.optimizer.state_dict(),
                    "rng": rngs,
                    "config": self.cfg.to_dict(),
                    "world_size": self.info.world_size,
                    "global_batch": self.global_batch,
                },
            )
        runtime.barrier()
        if finite:
            self.last_checkpoint = self.step
        return finite

    # ---- batches and evaluation --------------------------------------------------------

    def _to_device(self, tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(tokens)  # (B, T + 1)
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()  # (B, T), (B, T)
        if self.device.type == "cuda":
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x, y

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows (all ranks, all-reduced)."""
        self.model.eval()
        B, T = self.cfg.batch_size, self.cfg.model.block_size
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        n_micro = self.cfg.eval_iters * self.accum
        for micro in range(n_micro):
            first = rank_slice(0, micro, self.info.rank, self.info.world_size, B)
            starts = self.val_starts[first : first + B]
            tokens = np.stack([self.val.read(int(s), T + 1) for s in starts])
            x, y = self._to_device(tokens)
            with self._autocast():
                _, loss = self.eval_model(x, y, return_logits=False)
            total += loss.double()
        runtime.all_reduce_sum(total)
        self.model.train()
        return float(total) / (n_micro * self.info.world_size)

    def _residual_stats(self) -> tuple[list[float] | None, list[float]]:
        res = self.model.residual
        with torch.no_grad():
            p = res.gate_p()
            alpha = res.expected_coefficients()
        gate = None if p is None else [round(float(v), 6) for v in p]
        return gate, [round(float(v), 6) for v in alpha]

    # ---- the loop ----------------------------------------------------------------------

    def train_step(self, stop_flag: int | Callable[[], int]) -> tuple[float, float, bool]:
        """One optimizer step; returns (loss, grad norm, stop requested on any rank).

        stop_flag: a signal number, or a function giving it, called as late as possible (at
        the all-reduce), so that a signal during this step stops after this step."""
        cfg, info = self.cfg, self.info
        self.model.residual.begin_step(self.step, cfg.seed)
        factor = lr_factor(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for micro in range(self.accum):
            first = rank_slice(self.position, micro, info.rank, info.world_size, cfg.batch_size)
            x, y = self._to_device(self.sampler.batch(first, cfg.batch_size))
            sync = self.ddp is not None and micro < self.accum - 1
            with self.ddp.no_sync() if sync else contextlib.nullcontext():
                with self._autocast():
                    _, loss = self.fwd(x, y, return_logits=False)
                (loss / self.accum).backward()
            loss_sum += loss.detach().float()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        flag = stop_flag() if callable(stop_flag) else stop_flag  # read now: a signal
        stats = torch.stack(  # during this step's forward/backward stops after it
            [
                loss_sum / self.accum,
                norm.float(),
                torch.tensor(float(flag), device=self.device),
            ]
        ).double()
        runtime.all_reduce_sum(stats)
        loss_v, norm_v, stop = (stats / info.world_size).tolist()
        if math.isfinite(loss_v) and math.isfinite(norm_v):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_v, norm_v, stop > 0

    def run(self) -> int:
        """Train to max_steps: a loop of named steps. Returns the exit code (0, 1 on a
        non-finite loss, 128 + signal number after SIGINT/SIGTERM)."""
        from tqdm.auto import tqdm

        cfg, main = self.cfg, self.info.is_main
        log = RunLog(self.run_dir, main=main, trackers=cfg.trackers, tracking=cfg.tracking())
        log.open(self.step)
        runtime.barrier()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            unit="step",
            desc=self.run_dir.name,
            disable=not (main and self.progress),
            dynamic_ncols=True,
        )
        meter, code = _Meter(), None
        try:
            with _Signals() as signals:
                self._start(log, bar)
                while code is None and self.step < cfg.max_steps:
                    code = self._iteration(signals, log, bar, meter)
            if code is None:  # before close: the trackers receive the figures
                bar.close()
                log.finish(self.step, self.step * self.step_tokens, meter.rate())
        finally:
            bar.close()
            log.close()
        return code or 0

    def _start(self, log: RunLog, bar: Any) -> None:
        """A fresh run records its untrained validation loss as step 0."""
        if self.step == 0 and self.last_checkpoint is None:
            self._record(log, self.evaluate(), None, None)
        if self.info.is_main and self.cfg.compile and self.step < self.cfg.max_steps:
            bar.write("compiling the model: the first step takes a while")

    def _iteration(self, signals: _Signals, log: RunLog, bar: Any, meter: _Meter) -> int | None:
        """One optimizer step and what follows it; an exit code ends the run."""
        cfg = self.cfg
        t0 = time.perf_counter()
        loss, norm, stop = self.train_step(lambda: signals.signum)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return self._nonfinite_stop(loss, norm, bar)
        self.step += 1
        self.position += self.global_batch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        meter.add(self.step_tokens, time.perf_counter() - t0)
        log.train_loss(loss)
        last = self.step == cfg.max_steps
        do_eval = self.step % cfg.eval_interval == 0 or last
        if do_eval or stop or self.step % cfg.log_interval == 0:
            self._eval_and_log(do_eval, loss, norm, log, bar, meter)
        bar.update(1)
        if self.step % cfg.checkpoint_interval == 0 or last or stop:
            self._checkpoint(bar)
        if do_eval:
            log.figures()
        return self._signal_stop(signals.signum, bar) if stop else None

    def _eval_and_log(
        self, do_eval: bool, loss: float, norm: float, log: RunLog, bar: Any, meter: _Meter
    ) -> None:
        """Validation (if due) and a metrics record; the progress bar shows both."""
        val = self.evaluate() if do_eval else None
        if val is not None and self.info.is_main:
            bar.write(f"step {self.step}: val loss {val:.4f}")
        tok_s = meter.interval_rate()
        self._record(log, val, tok_s, norm)
        bar.set_postfix(
            loss=f"{loss:.3f}",
            val=f"{log.last_val:.3f}" if log.last_val is not None else "-",
            tok_s=f"{tok_s:,.0f}" if tok_s else "-",
        )

    def _record(
        self, log: RunLog, val: float | None, tok_s: float | None, norm: float | None
    ) -> None:
        gate, alpha = self._residual_stats()
        log.record(
            step=self.step,
            tokens=self.step * self.step_tokens,
            val_loss=val,
            lr=self.cfg.lr * lr_factor(self.step - 1, self.cfg) if self.step else None,
            tokens_per_second=tok_s,
            grad_norm=norm,
            gate_p=gate,
            alpha=alpha,
            epoch=self.sampler.epoch_of(self.position),
        )

    def _checkpoint(self, bar: Any) -> None:
        if not self.save_checkpoint() and self.info.is_main:
            bar.write(f"step {self.step}: weights not finite, checkpoint skipped")

    def _nonfinite_stop(self, loss: float, norm: float, bar: Any) -> int:
        """Nothing was updated: say where the last good checkpoint is; exit code 1."""
        where = (
            f"the last good checkpoint (step {self.last_checkpoint}) is in {self.run_dir}"
            if self.last_checkpoint is not None
            else "no checkpoint had been written yet"
        )
        bad = loss if not math.isfinite(loss) else norm
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        if self.info.is_main:
            bar.close()
            print(
                f"causalshift train: error: non-finite {what} ({bad}) at step "
                f"{self.step + 1}: training stopped, nothing was updated; {where} "
                f"({nonfinite_hint(self.cfg)})",
                file=sys.stderr,
                flush=True,
            )
        return 1

    def _signal_stop(self, signum: int, bar: Any) -> int:
        """After SIGINT/SIGTERM (the checkpoint is saved): exit code 128 + signal number."""
        name = signal.Signals(signum).name if signum else "signal"
        if self.info.is_main:
            bar.close()
            print(
                f"causalshift train: {name}: checkpoint saved at step {self.step} "
                f"in {self.run_dir}; continue with --resume --out {self.run_dir}",
                file=sys.stderr,
                flush=True,
            )
        return 128 + (signum or signal.SIGTERM)

    def write_config(self) -> None:
        """config.json: the TrainConfig, the model config, batch geometry, environment."""
        if not self.info.is_main:
            return
        doc = {
            **self.cfg.to_dict(),
            "model": self.model.config.to_dict(),
            "data_dir": str(self.data_dir),
            "data_source": self.meta.get("source"),
            "world_size": self.info.world_size,
            "grad_accum_per_process": self.accum,
            "global_batch_sequences": self.global_batch,
            "global_batch_tokens": self.step_tokens,
            "environment": environment(self.info, self.amp),
        }
        write_json(self.run_dir / RUN_CONFIG_NAME, doc)
