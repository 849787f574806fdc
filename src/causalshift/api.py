"""The Python API: `causalshift.load_model`, `measure` and `view` (docs/python.md).

The same engine as the command line: `measure` builds the `AnalyzeConfig` of `causalshift
analyze` and calls the function `analyze` calls (`lens.command.measure`), so on the same
inputs the numbers are the same. Nothing here calls sys.exit or prints unless asked
(`progress=True`); bad input raises `causalshift.UserError` with the line the CLI prints.
Nothing is imported at module import time beyond the standard library: torch is imported
when a function runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causalshift.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from causalshift.lens.command import AnalyzeConfig
    from causalshift.lens.models import LensModel
    from causalshift.lens.view import TokenView
    from causalshift.results import AnalyzeResult, ModelResult

# (name, source) of the models `load_model` returned, so that `measure` records them as
# `analyze` does (a weak map: a model the user drops is not kept alive).
_ORIGIN: Any = None


def _origins() -> Any:
    global _ORIGIN
    if _ORIGIN is None:
        import weakref

        _ORIGIN = weakref.WeakKeyDictionary()
    return _ORIGIN


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Without progress, transformers' loading bars are off (restored afterwards)."""
    if progress:
        yield
        return
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _weights_dtype(dtype: Any, device: Any) -> torch.dtype:
    """dtype= of load_model: a torch.dtype, a name, or "auto" (bf16 on CUDA, else float32)."""
    import torch

    from causalshift import runtime

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return runtime.lens_dtypes("auto", device)[0]
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise UserError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16 or a torch.dtype)")


def _load(spec: str, dtype: Any, device: Any, device_map: str | None, progress: bool) -> LensModel:
    from causalshift import runtime
    from causalshift.lens.models import load

    if not isinstance(spec, str):
        raise UserError(f"a model SPEC is a string, got {type(spec).__name__}")
    resolved = runtime.resolve_device(str(device))
    with _quiet(progress):
        lm = load(
            spec,
            dtype=_weights_dtype(dtype, resolved),
            device=resolved,
            device_map=device_map,
        )
    _origins()[lm.model] = (lm.name, lm.source)
    return lm


def load_model(
    spec: str,
    *,
    dtype: Any = "auto",
    device: str = "auto",
    device_map: str | None = None,
    progress: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) of any Model SPEC `causalshift analyze --model` takes: an embedded
    name (gemma-3-270m, smollm2-135m), a local HF folder, a .gguf file, a causalshift run
    directory or export, or a hub id. In eval mode, on `device` (auto: CUDA if available);
    dtype: auto (bf16 on CUDA, float32 on CPU: what `analyze` loads), a name or a
    torch.dtype; device_map="auto" spreads a large model over the GPUs."""
    lm = _load(spec, dtype, device, device_map, progress)
    return lm.model, lm.tokenizer


def lens_model(model: Any, tokenizer: Any = None, *, name: str | None = None) -> LensModel:
    """The `LensModel` of a SPEC string, a LensModel, or a causal LM in memory (any
    supported transformers model or a causalshift GPT, on any device or spread with
    device_map). Unsupported architectures raise UserError."""
    from causalshift.lens.models import LensModel
    from causalshift.lens.models import lens_model as wrap

    if isinstance(model, LensModel):
        return model
    if isinstance(model, str):
        return _load(model, "auto", "auto", None, progress=False)
    origin = _origins().get(model)
    if origin is None:
        where = getattr(getattr(model, "config", None), "name_or_path", "") or ""
        origin = (Path(where).name or type(model).__name__, where or "memory")
    return wrap(model.eval(), tokenizer, name or origin[0], origin[1])


@dataclass
class Measurement:
    """What `measure` returns: the analysis of one model (`result`, as results.json holds
    it) with notebook views of it."""

    result: AnalyzeResult

    @property
    def model(self) -> ModelResult:
        return self.result.models[0]

    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer: layer, every metric, and <metric>_lo / <metric>_hi (the 95%
        interval); with sublayers=True also `label` ("3.attn" after block 3's attention, "3"
        after block 3) and `depth` (relative depth, (l - 0.5) / L for "l.attn")."""
        import pandas as pd

        sub = self.model.has_sublayer_rows
        rows = []
        for r in self.model.layers:
            row: dict[str, Any] = {"layer": r.layer}
            if sub:
                row.update(label=r.name, depth=r.relative_depth(self.model.num_layers))
            row.update(r.values)
            for metric, (lo, hi) in (r.ci95 or {}).items():
                row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def sublayers(self) -> pd.DataFrame | None:
        """With sublayers=True, one row per block l and sublayer ("attn", "mlp"): the change
        it brings to each metric (logprob_output, top{k}_output, projection) and its 95%
        interval (<metric>_lo / <metric>_hi); None without sublayers."""
        import pandas as pd

        if not self.model.sublayers:
            return None
        rows = []
        for s in self.model.sublayers:
            for part in ("attn", "mlp"):
                row: dict[str, Any] = {"layer": s.layer, "sublayer": part, **getattr(s, part)}
                for metric in getattr(s, part):
                    lo, hi = s.interval(part, metric) or (None, None)
                    row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
                rows.append(row)
        return pd.DataFrame(rows)

    @property
    def shift_layer(self) -> dict[str, int | None]:
        """{"input_until": .., "output_from": .., "crossover": ..} (lens.metrics.shift_layers)."""
        return self.model.shift_layer.to_dict()

    @property
    def positions(self) -> pd.DataFrame | None:
        """The per-position records (measure(positions=True)) as a DataFrame, else None."""
        table = self.model.positions
        return None if table is None else table.to_pandas()

    def plot(self) -> list[Any]:
        """The two figures of `analyze` (top-k match, similarity) as matplotlib Figures; no
        file is written."""
        from causalshift.figures import plot_similarity, plot_topk
        from causalshift.lens.metrics import label

        models = self.result.models
        return [
            plot_topk(models, None, metric_label=label),
            plot_similarity(models, None, metric_label=label),
        ]

    def save(self, out: str | os.PathLike, *, plots: bool = True) -> Path:
        """Write the files `causalshift analyze` writes into `out`; returns the folder."""
        from causalshift.lens.command import write_outputs

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out} exists and is not a folder")
        result = dataclasses.replace(self.result, config={**self.result.config, "out": str(out)})
        write_outputs(result, out, plots=plots)
        return out


def measure(
    model: Any,
    tokenizer: Any = None,
    *,
    data: str | None = None,
    texts: Sequence[str] | None = None,
    tokens: torch.Tensor | None = None,
    num_seqs: int | None = None,
    seq_len: int = 128,
    topk: Sequence[int] = (1, 5),
    progress: bool = False,
    positions: bool = False,
    sublayers: bool = False,
    name: str | None = None,
    **options: Any,
) -> Measurement:
    """Where across depth hidden states switch from t_i to t_{i+1}: `causalshift analyze`
    on one model, from Python (docs/python.md).

    model: a causal LM in memory (with its tokenizer), or a Model SPEC string. The text: one
    of `data` (a Data SPEC, default "wiki"), `texts` (strings, joined and cut into windows
    as a data file is; num_seqs None: every full window) or `tokens` (an (S, T) LongTensor,
    used as it is). positions: keep the per-position records (`analyze --save-positions`:
    `.positions`, positions.parquet on save). sublayers: also the rows after each block's
    attention and the attention/MLP split (`analyze --sublayers`: `.sublayers`).
    options: any other option of `causalshift analyze` by its field name (targets,
    batch_size, dtype, vocab_chunk, seed, ...);
    num_seqs None with `data`: 32 on CPU, 1000 on GPU, as in `analyze`.
    """
    from causalshift.lens.command import measure as run_measure

    if sum(x is not None for x in (data, texts, tokens)) > 1:
        raise UserError("give one of data=, texts= and tokens=")
    with _quiet(progress):
        lm = lens_model(model, tokenizer, name=name)
    if tokens is None and lm.tokenizer is None:
        raise UserError("pass the model's tokenizer, or token ids as tokens=")
    if tokens is not None:
        tokens = _check_tokens(tokens, lm)
        num_seqs, seq_len = tokens.shape
        label, tokens_for = "<tokens>", lambda _lm: tokens
    elif texts is not None:
        texts = _check_texts(texts)
        num_seqs = num_seqs or _full_windows(lm.tokenizer, texts, seq_len)
        label, tokens_for = "<texts>", _texts_windows(texts, num_seqs, seq_len, progress)
    else:
        label, tokens_for = data or "wiki", None
    if positions:
        options = {**options, "save_positions": True}
    if sublayers:
        options = {**options, "sublayers": True}
    cfg = _config(lm, label, num_seqs, seq_len, topk, options)
    result = run_measure(cfg, [lm], tokens_for=tokens_for, progress=progress)
    assert result is not None  # one process: always rank 0
    return Measurement(result)


def _config(
    lm: LensModel,
    data: str,
    num_seqs: int | None,
    seq_len: int,
    topk: Sequence[int],
    options: dict[str, Any],
) -> AnalyzeConfig:
    """The resolved `AnalyzeConfig` of a measure call (device: where the model is)."""
    from causalshift.lens.command import AnalyzeConfig

    fields = {f.name for f in dataclasses.fields(AnalyzeConfig)}
    given = {"model", "data", "num_seqs", "seq_len", "topk", "device", "out", "plots"}
    unknown = sorted(set(options) - (fields - given))
    if unknown:
        raise UserError(
            f"measure() got unknown option(s) {', '.join(unknown)}; options: "
            + ", ".join(sorted(fields - given))
        )
    cfg = AnalyzeConfig(
        model=(lm.name,),
        data=data,
        num_seqs=num_seqs,
        seq_len=int(seq_len),
        topk=tuple(topk),
        device=str(lm.device),
        out="",
        **options,
    )
    return cfg.resolved()


def _check_tokens(tokens: Any, lm: LensModel) -> torch.Tensor:
    import torch

    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise UserError("tokens= must be an (S, T) integer tensor of token ids")
    vocab = int(lm.unembed.shape[0])
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise UserError(f"tokens= holds ids outside the vocabulary (0..{vocab - 1})")
    return tokens.long().cpu()


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise UserError("texts= must be a list of strings")
    if not any(t.strip() for t in texts):
        raise UserError("texts= holds no text")
    return list(texts)


def _full_windows(tokenizer: Any, texts: list[str], seq_len: int) -> int:
    """How many windows of seq_len the texts fill (at least 1: too little text then fails
    with the usual message)."""
    from causalshift.corpus.tokens import adds_bos

    ids = tokenizer(texts, add_special_tokens=False).input_ids
    eos = int(getattr(tokenizer, "eos_token_id", None) is not None)
    stream = sum(len(x) for x in ids) + eos * (len(ids) - 1)
    return max(1, stream // max(1, seq_len - int(adds_bos(tokenizer))))


def _texts_windows(texts: list[str], num_seqs: int, seq_len: int, progress: bool) -> Any:
    def tokens_for(lm: LensModel) -> torch.Tensor:
        from causalshift.corpus import token_sequences

        return token_sequences(
            lm.tokenizer, "texts", num_seqs, seq_len, documents=texts, progress=progress
        )

    return tokens_for


def view(
    model: Any, tokenizer: Any = None, prompt: str = "", *, topk: int = 5, name: str | None = None
) -> TokenView:
    """The per-token logit-lens picture of `prompt` (what `causalshift view` draws):
    `.top_ids` (L+1, T), `.top_tokens`, `.target_probs`, `.save(out)` -> view.png, view.html.
    model: a causal LM in memory with its tokenizer, or a Model SPEC string."""
    from causalshift.lens.view import token_view

    lm = lens_model(model, tokenizer, name=name)
    if lm.tokenizer is None:
        raise UserError("pass the model's tokenizer: view(model, tokenizer, prompt)")
    return token_view(lm, prompt, topk=topk)


def intervene(
    model: Any,
    tokenizer: Any = None,
    *,
    data: str = "wiki",
    num_seqs: int = 32,
    seq_len: int = 128,
    layers: str | Sequence[int] = "all",
    alpha: float | Sequence[float] | None = None,
    batch_size: int | None = None,
    with_lens: bool = False,
    learn_gate: bool = False,
    tau: float = 1.0,
    steps: int = 24,
    lr: float = 0.2,
    eval_seqs: int = 8,
    seed: int = 0,
    progress: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Test-time residual attenuation (what `causalshift intervene` measures): block l
    computes alpha * x + F_l(x), one (layer, alpha) pair at a time (alpha default 0, 0.5,
    0.9). Returns the intervene.json document: `baseline` (with the lens' `shift_layer`)
    and, per pair, an entry of `runs` (loss, top1, their 95% intervals, loss_increase and
    its paired interval; with_lens: the run's `shift_layer`). model: a causal LM in memory
    with its tokenizer, or a Model SPEC string; layers: "all" or block numbers 1..L.

    learn_gate=True (`intervene --learn-gate`): learn the gate over all blocks on the frozen
    model (alpha: the floor A, default 0.5; tau, steps, lr, seed; num_seqs windows to fit
    on, the eval_seqs after them held out) and return the learn_gate.json document."""
    from causalshift.lens.intervene_command import InterveneConfig, measure_model

    with _quiet(progress):
        lm = lens_model(model, tokenizer, name=name)
    if lm.tokenizer is None:
        raise UserError("pass the model's tokenizer: intervene(model, tokenizer, ...)")
    if not isinstance(layers, str):
        layers = ",".join(str(int(x)) for x in layers)
    if isinstance(alpha, (int, float)):
        alpha = (alpha,)
    cfg = InterveneConfig(
        model=lm.name,
        data=data,
        layers=layers,
        alpha=None if alpha is None else tuple(float(a) for a in alpha),
        num_seqs=num_seqs,
        seq_len=seq_len,
        batch_size=batch_size,
        with_lens=with_lens,
        learn_gate=learn_gate,
        tau=tau,
        steps=steps,
        lr=lr,
        eval_seqs=eval_seqs,
        seed=seed,
        device=str(lm.device),
    )
    return measure_model(cfg, lm, progress=progress)


def fit_lens(
    model: Any,
    tokenizer: Any = None,
    *,
    out: str | os.PathLike,
    data: str | None = None,
    tokens: int | None = None,
    steps: int | None = None,
    resume: bool = False,
    progress: bool = False,
    name: str | None = None,
    **options: Any,
) -> Any:
    """Train a tuned lens for `model` into the folder `out` (what `causalshift fit-lens`
    does: config.json + params.pt in the tuned-lens package's layout, fit.json,
    fit_lens.png) and return fit.json's record (`results.FitLensResult`: `.layers[l].kl_tuned`
    and `.kl_logit`, the held-out KL per layer). model: a causal LM in memory with its
    tokenizer, or a Model SPEC string; data: a Data SPEC (default "wiki"); tokens or steps:
    the training budget (default 12,288 tokens); options: any other option of fit-lens by its field
    name (seq_len, batch_size, lr, optimizer, eval_seqs, skip_tokens, seed, ...); resume:
    continue the fit in `out`. `measure(..., lens="tuned:DIR")` then measures through it."""
    from causalshift.lens.fit_command import FitConfig
    from causalshift.lens.fit_command import fit_lens as run_fit

    with _quiet(progress):
        lm = lens_model(model, tokenizer, name=name)
    if lm.tokenizer is None:
        raise UserError("pass the model's tokenizer: fit_lens(model, tokenizer, out=...)")
    fields = {f.name for f in dataclasses.fields(FitConfig)} - {"model", "device", "out"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UserError(
            f"fit_lens() got unknown option(s) {', '.join(unknown)}; options: "
            + ", ".join(sorted(fields))
        )
    given = {"resume": resume, **options}  # what the caller set (a resume checks it)
    named = (("data", data), ("tokens", tokens), ("steps", steps))
    given.update({k: v for k, v in named if v is not None})
    cfg = FitConfig(model=lm.name, device=str(lm.device), out=str(out), **given)
    result = run_fit(cfg, given, lm=lm, progress=progress)
    assert not isinstance(result, int)  # no signal handler here: Ctrl-C raises
    return result


def sweep(
    out: str | os.PathLike,
    *,
    preset: str = "cpu-small",
    layers: str | Sequence[int] = "all",
    alpha: float | Sequence[float] = 0.0,
    seeds: Sequence[int] = (1,),
    modes: Sequence[str] = (),
    max_steps: int | None = None,
    data: str | None = None,
    tracker: Sequence[str] = (),
    train_args: str = "",
    baseline: bool = True,
    progress: bool = False,
) -> Any:
    """Train the runs of `causalshift sweep` into the folder `out` (every (layer, alpha, seed)
    cut, the baseline and the learned `modes` per seed; finished runs are skipped, so a call
    continues a sweep) and return sweep.json's record (`results.SweepResult`: `.comparisons`
    holds each cut's and mode's paired difference to the baseline, `.best_cut()` the best).
    Without progress, each run's output goes to OUT/<name>/train.log."""
    import argparse
    import io

    from causalshift.results import SweepResult
    from causalshift.train import sweep as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--out", str(out)])
    args.preset, args.max_steps, args.data, args.train_args = preset, max_steps, data, train_args
    args.layers = layers if isinstance(layers, str) else ",".join(str(int(k)) for k in layers)
    alphas = (alpha,) if isinstance(alpha, (int, float)) else alpha
    args.alpha = ",".join(str(a) for a in alphas)  # checked as the command line's
    args.seeds, args.modes, args.tracker = tuple(seeds), tuple(modes), list(tracker)
    args.baseline, args.quiet = baseline, not progress
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        command.run(args)  # runs that failed are in the record with their status
    return SweepResult.read(out)
