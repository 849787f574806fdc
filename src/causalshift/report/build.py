"""Assemble the report: figures + tables from result files, rendered to Markdown and HTML."""

from __future__ import annotations

import dataclasses
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
    plot_heatmap,
    plot_similarity,
    plot_sweep,
    plot_topk,
    plot_val_loss,
)
from causalshift.gpt.residual import label_order
from causalshift.io import write_text
from causalshift.lens.metrics import label as metric_label
from causalshift.report.document import Document
from causalshift.report.sources import Sources
from causalshift.results import (
    Comparison,
    EvalResult,
    ModelResult,
    PairedDiff,
    ShiftLayers,
    SweepResult,
    SweepRunRecord,
    TrainingRun,
    common_topk_ks,
    mode_label,
    t95,
)

PRIMARY_METRICS = ("acc_norm", "acc", "word_perplexity", "perplexity")


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
    """A sweep.json with its statistics computed from its runs (stored ones when it lists no
    runs). Runs of files from before alpha lists carry no alpha: they take the sweep's."""
    if not sweep.runs:
        return sweep
    if isinstance(sweep.alpha, (int, float)):
        runs = [
            dataclasses.replace(r, alpha=sweep.alpha)
            if r.mode == "fixed" and r.alpha is None
            else r
            for r in sweep.runs
        ]
        sweep = dataclasses.replace(sweep, runs=runs)
    return sweep.with_stats()


def _sweep_from_runs(runs: list[TrainingRun]) -> list[SweepSeries]:
    """Sweep data from run dirs (no sweep.json given): per preset, every finished run as a
    sweep run (baseline, fixed cuts, learned modes), when there is a fixed cut."""
    by_preset: dict[str, list[TrainingRun]] = defaultdict(list)
    for r in runs:
        if r.final_val_loss is not None and isinstance(r.info.get("mode"), str):
            by_preset[str(r.info.get("preset", "?"))].append(r)
    out = []
    for preset, rs in by_preset.items():
        if not any(r.info.get("mode") == "fixed" for r in rs):
            continue
        records = [
            SweepRunRecord(
                name=r.name,
                mode=r.info["mode"],
                cut_layer=r.info.get("cut_layer"),
                alpha=r.info.get("alpha"),
                seed=r.info.get("seed"),
                final_val_loss=r.final_val_loss,
            )
            for r in rs
        ]
        out.append(
            SweepSeries(SweepResult(preset=preset, runs=records).with_stats(), f"{preset} (runs)")
        )
    return out


def fmt_diff(d: PairedDiff | None) -> str:
    """'+0.1234 [+0.0500, +0.2000]' (a paired difference and its 95% interval; ' *' when
    the interval excludes 0), '+0.1234 (1 seed)', or 'n/a' (no seed in common)."""
    if d is None:
        return "n/a"
    if d.ci95 is None:
        return f"{d.mean:+.4f} ({d.n} seed)"
    lo, hi = d.ci95
    return f"{d.mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (" *" if d.excludes_zero else "")


def _alpha(c: Comparison) -> str:
    return "?" if c.alpha is None else f"{c.alpha:g}"


def _seeds(c: Comparison) -> str:
    return ",".join(map(str, c.seeds)) if c.seeds else str(c.n)


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
        "Figure 4 analogue: final validation loss of a residual cut at layer K with "
        "coefficient alpha (one line per alpha; mean over seeds, min/max bars); dotted: the "
        "baseline; dash-dot: learned modes.",
    )
    rows = []
    for s in series:
        for c in s.sweep.cuts:
            rows.append(
                [
                    s.label,
                    str(c.cut_layer),
                    _alpha(c),
                    _seeds(c),
                    fmt(c.mean),
                    fmt_diff(c.vs_baseline),
                ]
            )
        base = s.sweep.baseline
        if base:
            rows.append([s.label, "baseline", "-", str(base.n or 1), fmt(base.mean), "0"])
    doc.table(
        [
            "sweep",
            "cut layer K",
            "alpha",
            "seeds",
            "final val loss (mean)",
            "minus baseline (95% CI)",
        ],
        rows,
    )
    _sweep_heatmaps(doc, series, out)
    _sweep_best_table(doc, series)
    doc.para(PAIRED_NOTE)


PAIRED_NOTE = (
    "Paired differences: for each seed s run by both, d_s = final val loss - the "
    "reference's final val loss with the same seed (the same initialisation and data "
    "order); the cell gives mean(d) and its 95% Student-t interval over seeds, "
    "mean(d) -/+ t(0.975, n - 1) sd(d) / sqrt(n); `*` marks an interval that excludes 0. "
    "With one seed there is no interval (`(1 seed)`). The best cut is the (K, alpha) with "
    "the lowest mean loss: chosen on the same runs, its advantage is optimistic (its "
    "interval does not account for the choice among the cells)."
)


def _sweep_heatmaps(doc: Document, series: list[SweepSeries], out: Path) -> None:
    """One layer x alpha heatmap per sweep that has cuts paired with a baseline."""
    drawn = 0
    for s in series:
        name = "val_loss_heatmap.png" if drawn == 0 else f"val_loss_heatmap_{drawn + 1}.png"
        if plot_heatmap(s.sweep, out / name, title=f"{s.label}: difference to the baseline"):
            drawn += 1
            doc.image(
                name,
                f"{s.label}: final validation loss of each cut (K, alpha) minus the baseline's, "
                "paired by seed (red: worse than the baseline, blue: better); a framed cell "
                "with `*`: its 95% interval excludes 0.",
            )


def _sweep_best_table(doc: Document, series: list[SweepSeries]) -> None:
    """The best cut of each sweep against its learned modes (gate, ...), paired by seed."""
    rows = []
    for s in series:
        best = s.sweep.best_cut()
        if best is None or not s.sweep.learned:
            continue
        name = f"best cut K={best.cut_layer}, alpha={_alpha(best)}"
        rows.append([s.label, name, _seeds(best), fmt(best.mean), fmt_diff(best.vs_baseline), "0"])
        for c in s.sweep.learned:
            label = mode_label({"mode": c.mode, "alpha": c.alpha})
            rows.append(
                [
                    s.label,
                    label,
                    _seeds(c),
                    fmt(c.mean),
                    fmt_diff(c.vs_baseline),
                    fmt_diff(c.vs_best),
                ]
            )
    if not rows:
        return
    doc.heading("The best fixed cut against the learned modes", 3)
    doc.table(
        [
            "sweep",
            "variant",
            "seeds",
            "final val loss (mean)",
            "minus baseline (95% CI)",
            "minus best cut (95% CI)",
        ],  # fmt: skip
        rows,
    )


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
