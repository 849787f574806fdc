"""The training loop: AdamW, warmup + cosine, gradient accumulation, DDP, eval, checkpoints.

One optimizer step (step s -> s + 1):

    lr = base_lr * factor(s)                           # every param group, gate's included
    for micro in range(accum):                          # DDP syncs gradients on the last one
        loss = model(x, y) / accum ; loss.backward()
    clip grad norm; all-reduce [loss, grad norm, stop flag] over ranks
    non-finite loss or grad norm -> stop *before* the update, keep the last checkpoint
    optimizer.step()

After step s: a metrics record (every log_interval), validation (every eval_interval),
a checkpoint (every checkpoint_interval), all on rank 0; the last step does all three.
SIGINT/SIGTERM set a flag that all ranks see at the next step's all-reduce: they finish
that step, save a checkpoint and exit with 128 + signal number.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalshift.errors import UserError
from causalshift.io import read_jsonl_records, write_json, write_text
from causalshift.train import distributed as D
from causalshift.train.checkpoint import (
    STATE_NAME,
    check_weights_file,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from causalshift.train.config import TrainConfig
from causalshift.train.data import TokenSplit, TrainSampler, eval_windows, rank_slice, read_meta

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
SUMMARY_NAME = "summary.json"
WEIGHTS_NAME = "model.safetensors"
# Fields that define the model: they cannot change when a run is resumed.
MODEL_FIELDS = (
    "n_layer n_head n_embd block_size vocab_size bias residual cut_layer alpha tau".split()
)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for the update made at `step` (0-based): warmup, cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr_ratio
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--dtype` (None: plain float32)."""
    if name == "float32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_bf16()
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def environment(info: D.DistInfo, amp: torch.dtype | None) -> dict[str, Any]:
    from causalshift import __version__

    device_name = platform.processor() or platform.machine()
    if info.device.type == "cuda":
        device_name = torch.cuda.get_device_name(info.device)
    return {
        "causalshift": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(info.device),
        "device_name": device_name,
        "world_size": info.world_size,
        "autocast_dtype": str(amp).replace("torch.", "") if amp else "float32",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


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


class _TensorBoard:
    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard is not installed: --tensorboard ignored", file=sys.stderr)
            return
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, rec: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "val_loss", "lr", "tokens_per_second", "grad_norm"):
            if rec.get(key) is not None:
                self.writer.add_scalar(key, rec[key], rec["step"])
        for i, p in enumerate(rec.get("gate_p") or []):
            self.writer.add_scalar(f"gate_p/layer{i + 1}", p, rec["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _last_losses(path: Path) -> tuple[float | None, float | None]:
    """The latest val and train loss in a metrics.jsonl (for a resumed run)."""
    from causalshift.train.figures import read_metrics

    val = train = None
    for rec in read_metrics(path):
        val = rec["val_loss"] if rec.get("val_loss") is not None else val
        train = rec["train_loss"] if rec.get("train_loss") is not None else train
    return val, train


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step` (a killed run may have logged past its checkpoint)."""
    if not path.is_file():
        return
    keep = [json.dumps(rec) for rec in read_jsonl_records(path) if rec["step"] <= step]
    write_text(path, "".join(k + "\n" for k in keep))


class Trainer:
    """Trains one run in `run_dir`; `run()` returns the exit code."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        data_dir: Path,
        info: D.DistInfo,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        from causalshift.gpt.model import GPT

        self.cfg, self.run_dir, self.info, self.progress = cfg, Path(run_dir), info, progress
        self.device = info.device
        self.accum = cfg.grad_accum_for(info.world_size)
        self.global_batch = cfg.batch_size * self.accum * info.world_size  # sequences
        self.step_tokens = self.global_batch * cfg.block_size
        self.amp = autocast_dtype(cfg.dtype, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        meta = read_meta(data_dir)
        if meta["vocab_size"] > cfg.vocab_size:
            raise UserError(
                f"data vocabulary ({meta['vocab_size']}) is larger than the model's "
                f"({cfg.vocab_size})"
            )
        self.data_dir, self.meta = Path(data_dir), meta
        self.sampler = TrainSampler(TokenSplit(data_dir, "train"), cfg.block_size, cfg.seed)
        self.val = TokenSplit(data_dir, "val")
        self.val_starts = eval_windows(self.val, cfg.block_size, cfg.eval_iters * self.global_batch)

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = GPT(cfg.model_config()).to(self.device)
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
        saved = state["config"]
        changed = [k for k in MODEL_FIELDS if saved.get(k) != getattr(self.cfg, k)]
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
        self.last_checkpoint = self.step
        rngs = state["rng"]
        set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])

    def save_checkpoint(self) -> bool:
        """Weights + train state (collective: call on every rank). False if not finite."""
        from causalshift.gpt.io import save_model

        finite = bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())
        rngs = D.gather_objects(rng_state())
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
        D.barrier()
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
        B, T = self.cfg.batch_size, self.cfg.block_size
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
        D.all_reduce_sum(total)
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

    def train_step(self, stop_flag: int) -> tuple[float, float, bool]:
        """One optimizer step; returns (loss, grad norm, stop requested on any rank)."""
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
        stats = torch.stack(
            [
                loss_sum / self.accum,
                norm.float(),
                torch.tensor(float(stop_flag), device=self.device),
            ]
        ).double()
        D.all_reduce_sum(stats)
        loss_v, norm_v, stop = (stats / info.world_size).tolist()
        if math.isfinite(loss_v) and math.isfinite(norm_v):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_v, norm_v, stop > 0

    def run(self) -> int:
        from tqdm.auto import tqdm

        cfg, main = self.cfg, self.info.is_main
        metrics_path = self.run_dir / METRICS_NAME
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _trim_metrics(metrics_path, self.step)
        D.barrier()
        tb = _TensorBoard(self.run_dir, cfg.tensorboard and main)
        metrics = open(metrics_path, "a", encoding="utf-8") if main else None
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            unit="step",
            desc=self.run_dir.name,
            disable=not (main and self.progress),
            dynamic_ncols=True,
        )
        t_start = time.perf_counter()
        tokens_run, train_seconds = 0, 0.0
        pending: list[float] = []  # train losses since the last record
        last_val, last_train = _last_losses(metrics_path) if main else (None, None)
        code = 0

        def record(val_loss: float | None, tok_s: float | None, norm: float | None) -> None:
            gate, alpha = self._residual_stats()
            rec = {
                "step": self.step,
                "tokens": self.step * self.step_tokens,
                "train_loss": round(sum(pending) / len(pending), 6) if pending else None,
                "val_loss": None if val_loss is None else round(val_loss, 6),
                "lr": cfg.lr * lr_factor(self.step - 1, cfg) if self.step else None,
                "tokens_per_second": None if tok_s is None else round(tok_s, 1),
                "grad_norm": None if norm is None else round(norm, 6),
                "gate_p": gate,
                "alpha": alpha,
                "epoch": round(self.sampler.epoch_of(self.position), 4),
                "elapsed": round(time.perf_counter() - t_start, 2),
            }
            pending.clear()
            if main:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                tb.log(rec)

        def figures() -> None:
            if main:
                from causalshift.train.figures import run_figures

                run_figures(self.run_dir)

        try:
            with _Signals() as signals:
                if self.step == 0 and self.last_checkpoint is None:
                    last_val = self.evaluate()
                    record(last_val, None, None)
                if main and cfg.compile and self.step < cfg.max_steps:
                    bar.write("compiling the model: the first step takes a while")
                interval_tokens, interval_seconds, warm = 0, 0.0, False
                while self.step < cfg.max_steps:
                    t0 = time.perf_counter()
                    loss, norm, stop = self.train_step(signals.signum)
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        where = (
                            f"the last good checkpoint (step {self.last_checkpoint}) is in "
                            f"{self.run_dir}"
                            if self.last_checkpoint is not None
                            else "no checkpoint had been written yet"
                        )
                        bad = loss if not math.isfinite(loss) else norm
                        what = "loss" if not math.isfinite(loss) else "gradient norm"
                        if main:
                            bar.close()
                            print(
                                f"causalshift train: error: non-finite {what} ({bad}) at step "
                                f"{self.step + 1}: training stopped, nothing was updated; {where} "
                                "(try a lower --lr)",
                                file=sys.stderr,
                                flush=True,
                            )
                        code = 1
                        break
                    self.step += 1
                    self.position += self.global_batch
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - t0
                    if warm:  # the first step of a process compiles: not in tokens/s
                        interval_tokens += self.step_tokens
                        interval_seconds += dt
                        tokens_run += self.step_tokens
                        train_seconds += dt
                    warm = True
                    pending.append(loss)
                    last_train = loss
                    last = self.step == cfg.max_steps
                    do_eval = self.step % cfg.eval_interval == 0 or last
                    do_log = self.step % cfg.log_interval == 0 or do_eval or stop
                    val = self.evaluate() if do_eval else None
                    if val is not None:
                        last_val = val
                        if main:
                            bar.write(f"step {self.step}: val loss {val:.4f}")
                    if do_log:
                        tok_s = interval_tokens / interval_seconds if interval_seconds else None
                        record(val, tok_s, norm)
                        interval_tokens, interval_seconds = 0, 0.0
                        bar.set_postfix(
                            loss=f"{loss:.3f}",
                            val=f"{last_val:.3f}" if last_val is not None else "-",
                            tok_s=f"{tok_s:,.0f}" if tok_s else "-",
                        )
                    bar.update(1)
                    if self.step % cfg.checkpoint_interval == 0 or last or stop:
                        if not self.save_checkpoint() and main:
                            bar.write(f"step {self.step}: weights not finite, checkpoint skipped")
                    if do_eval:
                        figures()
                    if stop:
                        name = signal.Signals(signals.signum).name if signals.signum else "signal"
                        if main:
                            bar.close()
                            print(
                                f"causalshift train: {name}: checkpoint saved at step {self.step} "
                                f"in {self.run_dir}; continue with --resume --out {self.run_dir}",
                                file=sys.stderr,
                                flush=True,
                            )
                        code = 128 + (signals.signum or signal.SIGTERM)
                        break
        finally:
            bar.close()
            tb.close()
            if metrics is not None:
                metrics.close()
        if code == 0 and main:
            figures()
            write_json(
                self.run_dir / SUMMARY_NAME,
                {
                    "finished": True,
                    "step": self.step,
                    "tokens": self.step * self.step_tokens,
                    "final_val_loss": last_val,
                    "final_train_loss": last_train,
                    "seconds": round(time.perf_counter() - t_start, 2),
                    "train_tokens_per_second": round(tokens_run / train_seconds, 1)
                    if train_seconds
                    else None,
                },
            )
            shown = "-" if last_val is None else f"{last_val:.4f}"
            print(f"done: step {self.step}, val loss {shown}, run dir {self.run_dir}", flush=True)
        return code

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
        write_json(self.run_dir / CONFIG_NAME, doc)
