"""Assemble the report: figures + tables from result files, rendered to Markdown and HTML."""

from __future__ import annotations

import datetime as dt
import math
import platform
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causalshift import __version__
from causalshift.figures import (
    SweepSeries,
    plot_gate,
    plot_similarity,
    plot_sweep,
    plot_topk,
    plot_val_loss,
)
from causalshift.gpt.residual import label_order, learned_modes
from causalshift.io import write_text
from causalshift.lens.metrics import label as metric_label
from causalshift.report.document import Document
from causalshift.report.sources import Sources
from causalshift.results import (
    EvalResult,
    ModelResult,
    ShiftLayers,
    SweepResult,
    SweepRunRecord,
    TrainingRun,
    common_topk_ks,
    mode_label,
)

# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (then ~normal).
T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
PRIMARY_METRICS = ("acc_norm", "acc", "word_perplexity", "perplexity")


def t95(df: int) -> float:
    return T95[df - 1] if 1 <= df <= len(T95) else 1.96


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t-interval across values); None for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t95(n - 1) * sd / math.sqrt(n)


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 1e4:
        return f"{x:.4g}"
    return f"{x:.{digits}f}"


def fmt_pm(mean: float, half: float | None, digits: int = 4) -> str:
    return fmt(mean, digits) + (f" ± {fmt(half, digits)}" if half is not None else "")


def _shift(v: Any) -> str:
    return "never" if v is None else str(v)


def _known(v: Any) -> str:
    return "?" if v is None else str(v)


# --- grouping -------------------------------------------------------------------------


@dataclass
class Entry:
    """A model trained or evaluated: its residual facts (run_info), run folder, evals."""

    info: dict[str, Any]
    name: str
    run: TrainingRun | None = None
    evals: list[EvalResult] = field(default_factory=list)


def _entries(src: Sources) -> list[Entry]:
    """One entry per model evaluated or trained: runs, plus evals with no run dir given."""
    entries = [Entry(r.info, r.name, r, r.evals) for r in src.runs]
    for folder, ev in src.evals:
        model = ev.model if isinstance(ev.model, dict) else {}
        info = {
            k: model[k]
            for k in ("mode", "cut_layer", "alpha", "seed", "preset", "n_layer")
            if model.get(k) is not None
        }
        entries.append(Entry(info, model.get("name") or folder.name, None, [ev]))
    return entries


def _group_key(info: dict[str, Any], many_presets: bool) -> str:
    label = mode_label(info)
    if label == "unknown":
        label = "other"
    return f"{info.get('preset', '?')}: {label}" if many_presets else label


def _mode_order(key: str) -> tuple:
    label = key.split(": ", 1)[-1]
    digits = "".join(ch for ch in label if ch.isdigit())
    return (
        key.split(": ")[0] if ": " in key else "",
        label_order(label),
        int(digits) if digits else 0,
        label,
    )


def group_entries(entries: list[Entry]) -> dict[str, list[Entry]]:
    many = len({e.info.get("preset") for e in entries}) > 1
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[_group_key(e.info, many)].append(e)
    return dict(sorted(groups.items(), key=lambda kv: _mode_order(kv[0])))


# --- sections -------------------------------------------------------------------------


def _analysis_models(src: Sources) -> tuple[list[ModelResult], list[str]]:
    """Every analysed model with layers, and its label: its name, with its result folder
    where two models share a name."""
    found = [(m, folder.name) for folder, res in src.analyses for m in res.models if m.layers]
    names = [_known(m.name) for m, _ in found]
    labels = [f"{n} ({d})" if names.count(n) > 1 else n for n, (_, d) in zip(names, found)]
    return [m for m, _ in found], labels


def section_analysis(doc: Document, src: Sources, out: Path) -> None:
    models, labels = _analysis_models(src)
    if not models:
        return
    doc.heading("Where the causal shift happens (logit lens)")
    data = src.analyses[0][1].data
    doc.para(
        f"{len(models)} model(s) from {len(src.analyses)} `causalshift analyze` result file(s); "
        f"data `{_known(data.spec)}`, {_known(data.num_sequences)} sequences of "
        f"{_known(data.seq_len)} tokens (first file). Layer 0 is the embedding output, "
        "layer L the last residual stream before the final norm. Bands: 95% intervals over "
        "sequences, as computed by `analyze`."
    )
    if plot_topk(models, out / "topk_match.png", labels, metric_label):
        doc.image(
            "topk_match.png",
            "Figure 2 analogue: top-k match of the decoded hidden "
            "state with the input token t_i (dashed) and the output token t_(i+1) (solid).",
        )
    if plot_similarity(models, out / "similarity.png", labels, metric_label):
        doc.image(
            "similarity.png",
            "Figure 3 analogue: cosine of the normed hidden state to "
            "the input and output token embeddings (dotted: a random token, chance level) "
            "and the normalized projection on the input->output axis.",
        )
    k = max(common_topk_ks(models) or [1])
    rows = []
    for m, label in zip(models, labels, strict=True):
        shift = m.shift_layer or ShiftLayers()
        last = m.layers[-1]
        rows.append(
            [
                label,
                _known(m.architecture),
                _known(m.num_layers),
                _known(m.num_positions),
                _shift(shift.input_until),
                _shift(shift.output_from),
                _shift(shift.crossover),
                fmt(last.value(f"top{k}_output"), 3),
                fmt(last.value("projection"), 3),
                fmt(m.tokens_per_second, 0),
            ]
        )
    doc.table(
        [
            "model",
            "architecture",
            "layers L",
            "positions",
            "input_until",
            "output_from",
            "crossover",
            f"top{k}_output at L",
            "projection at L",
            "tokens/s",
        ],
        rows,
    )
    doc.para(
        f"Shift layers (K = {k}): `input_until` is the last layer with top-K input match "
        ">= 0.5; `output_from` the first layer from which the top-K output match stays >= "
        "half its final value; `crossover` the first layer from which output match stays "
        "above input match."
    )


def section_training(doc: Document, src: Sources, out: Path) -> None:
    runs = [r for r in src.runs if r.metrics]
    if not runs:
        return
    doc.heading("Training: validation loss per residual mode")
    groups = group_entries([Entry(r.info, r.name, r) for r in runs])
    rows = []
    for key, entries in groups.items():
        done = [e.run for e in entries if e.run is not None]
        losses = [r.final_val_loss for r in done if r.final_val_loss is not None]
        tokens = [r.tokens for r in done if r.tokens]
        seeds = sorted({str(e.info.get("seed", "?")) for e in entries})
        mean, half = mean_ci(losses) if losses else (None, None)
        rows.append(
            [
                key,
                str(len(entries)),
                ",".join(seeds),
                f"{max(tokens):,}" if tokens else "n/a",
                fmt_pm(mean, half) if mean is not None else "n/a",
                ", ".join(fmt(v) for v in losses),
            ]
        )
    doc.table(
        ["residual mode", "runs", "seeds", "tokens", "final val loss (95% CI)", "per run"], rows
    )
    doc.para(
        "Final validation loss: the last `val_loss` in each run's `metrics.jsonl` (nats "
        "per token). With several seeds: mean ± the 95% Student-t half-width across seeds; "
        "one seed: no interval."
    )
    if plot_val_loss(runs, out / "val_loss.png"):
        doc.image("val_loss.png", "Validation loss during training, one line per run.")


def _with_stats(sweep: SweepResult) -> SweepResult:
    """A sweep.json's per-layer and baseline stats (computed from its runs when absent)."""
    return sweep if sweep.by_layer or sweep.baseline else sweep.with_stats()


def _sweep_from_runs(runs: list[TrainingRun]) -> list[SweepSeries]:
    """Figure-4 data from run dirs (no sweep.json given): per preset, fixed cuts + baseline."""
    by_preset: dict[str, list[TrainingRun]] = defaultdict(list)
    for r in runs:
        if r.final_val_loss is not None:
            by_preset[str(r.info.get("preset", "?"))].append(r)
    out = []
    for preset, rs in by_preset.items():
        if not any(r.info.get("mode") == "fixed" for r in rs):
            continue
        records = [
            SweepRunRecord(
                mode=r.info.get("mode"),
                cut_layer=r.info.get("cut_layer"),
                final_val_loss=r.final_val_loss,
            )
            for r in rs
        ]
        gates = defaultdict(list)
        for r in rs:
            if r.info.get("mode") in learned_modes():
                gates[r.label].append(r.final_val_loss)
        means = tuple((k, sum(v) / len(v)) for k, v in gates.items())
        sweep = SweepResult(runs=records).with_stats()
        out.append(SweepSeries(sweep, f"{preset} (runs)", means))
    return out


def section_sweep(doc: Document, src: Sources, out: Path) -> None:
    series = [
        SweepSeries(_with_stats(sweep), f"{sweep.preset or ''} {folder.name}".strip())
        for folder, sweep in src.sweeps
    ]
    if not series:
        series = _sweep_from_runs(src.runs)
    if not series or not plot_sweep(series, out / "val_loss_vs_cut_layer.png"):
        return
    doc.heading("Validation loss against the cut layer")
    doc.image(
        "val_loss_vs_cut_layer.png",
        "Figure 4 analogue: final validation loss of a full "
        "residual cut at layer K (mean over seeds, min/max bars); dotted: the baseline; "
        "dash-dot: learned gates, where run directories were given.",
    )
    rows = []
    for s in series:
        base = s.sweep.baseline
        for r in s.sweep.by_layer:
            delta = r.mean - base.mean if base else None
            rows.append(
                [
                    s.label,
                    str(r.cut_layer),
                    str(r.n or 1),
                    fmt(r.mean),
                    fmt(delta) if delta is not None else "n/a",
                ]
            )
        if base:
            rows.append([s.label, "baseline", str(base.n or 1), fmt(base.mean), "0"])
    doc.table(["sweep", "cut layer K", "seeds", "final val loss (mean)", "minus baseline"], rows)


def section_gates(doc: Document, src: Sources, out: Path) -> None:
    runs = sorted(
        (r for r in src.runs if r.gate_history),
        key=lambda r: (_mode_order(r.label), r.name),
    )
    if not runs or not plot_gate(runs, out / "gate_p.png"):
        return
    doc.heading("Where the gate learns to cut")
    doc.image(
        "gate_p.png",
        "Figure 5 analogue: the gate's probability p_l of cutting at "
        "layer l, logged during training.",
    )
    rows = []
    for r in runs:
        step, p = r.gate_history[-1]
        top = max(range(len(p)), key=p.__getitem__)
        rows.append(
            [
                r.name,
                r.label,
                str(step),
                str(top + 1),
                fmt(p[top], 3),
                " ".join(f"{x:.2f}" for x in p),
            ]
        )
    doc.table(["run", "mode", "last step", "argmax layer", "max p", "p by layer (1..L)"], rows)


def _primary(metrics: set[str]) -> str | None:
    for m in PRIMARY_METRICS:
        if m in metrics:
            return m
    return sorted(metrics)[0] if metrics else None


def section_benchmarks(doc: Document, src: Sources) -> None:
    entries = [e for e in _entries(src) if e.evals]
    if not entries:
        return
    doc.heading("Zero-shot benchmarks (lm-evaluation-harness)")
    groups = group_entries(entries)
    # (group, task, metric, filter) -> [(value, stderr)], one per run/eval
    cells: dict[tuple, list[tuple[float, float | None]]] = defaultdict(list)
    task_metrics: dict[str, set[str]] = defaultdict(set)
    for key, es in groups.items():
        for e in es:
            for ev in e.evals:
                for row in ev.results:
                    if row.is_group:
                        continue
                    cells[(key, row.task, row.metric, row.filter)].append((row.value, row.stderr))
                    task_metrics[row.task].add(row.metric)
    tasks = sorted(task_metrics)
    primary = {t: _primary(task_metrics[t]) for t in tasks}

    def cell(key: str, task: str, metric: str, filt: str = "none") -> str:
        vals = cells.get((key, task, metric, filt))
        if not vals:
            return "n/a"
        n = len(vals)
        mean = sum(v for v, _ in vals) / n
        ses = [s for _, s in vals]
        half = (1.96 * math.sqrt(sum(s * s for s in ses)) / n) if None not in ses else None
        return fmt_pm(mean, half)

    rows = [
        [key, str(len(es))] + [cell(key, t, primary[t]) for t in tasks]
        for key, es in groups.items()
    ]
    doc.table(["residual mode", "models"] + [f"{t} ({primary[t]})" for t in tasks], rows)
    doc.para(
        "Each cell: the score ± 1.96 x lm-eval's standard error (sampling over the "
        "benchmark's documents). Several runs of one mode (seeds): the mean score and "
        "the combined standard error sqrt(sum se^2) / n. Perplexities have no standard "
        "error in lm-eval."
    )
    doc.heading("All benchmark numbers", 3)
    full = []
    for (key, task, metric, filt), vals in sorted(
        cells.items(), key=lambda kv: (_mode_order(kv[0][0]), kv[0][1:])
    ):
        full.append([key, task, metric, filt, str(len(vals)), cell(key, task, metric, filt)])
    doc.table(["residual mode", "task", "metric", "filter", "models", "value (95% CI)"], full)
    limits = {str(ev.config.get("limit")) for e in entries for ev in e.evals}
    if limits - {"None"}:
        doc.para(
            f"Note: evaluated with `--limit` {', '.join(sorted(limits))} documents per task "
            "(a quick check, not the full benchmark)."
        )


def section_environment(doc: Document, src: Sources) -> None:
    doc.heading("Environment and versions")
    rows = []
    for folder, result in src.analyses:
        rows.append([f"analyze: {folder.name}", _env(result.environment)])
    for run in src.runs:
        if run.environment:
            rows.append([f"run: {run.path.name}", _env(run.environment)])
    for e in _entries(src):
        for ev in e.evals:
            rows.append([f"eval: {e.name}", _env(ev.environment)])
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    rows.append(
        [
            "this report",
            f"causalshift {__version__}, python {platform.python_version()}, "
            f"matplotlib {v('matplotlib')}, {platform.platform()}",
        ]
    )
    merged: dict[str, list[str]] = {}
    for source, env in rows:  # identical environments share one row
        merged.setdefault(env, []).append(source)
    rows = [["; ".join(sources), env] for env, sources in merged.items()]
    doc.table(["source", "environment"], rows)


def _env(env: Any) -> str:
    if not isinstance(env, dict) or not env:
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, (dict, list)))


def build_report(src: Sources, out: Path, inputs: list[str]) -> tuple[Path, Path]:
    """Write report.md, report.html and the figures into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    doc = Document("causalshift report")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.para(
        f"Built {stamp} by `causalshift report` from result files only: "
        f"{len(src.analyses)} analyze result(s), {len(src.runs)} training run(s), "
        f"{len(src.sweeps)} sweep(s), {sum(len(r.evals) for r in src.runs) + len(src.evals)} "
        f"benchmark evaluation(s). Inputs: " + ", ".join(f"`{i}`" for i in inputs) + "."
    )
    section_analysis(doc, src, out)
    section_training(doc, src, out)
    section_sweep(doc, src, out)
    section_gates(doc, src, out)
    section_benchmarks(doc, src)
    section_environment(doc, src)
    md = write_text(out / "report.md", doc.markdown())
    page = write_text(out / "report.html", doc.html())
    return md, page


__all__ = ["build_report"]
