"""Typed records of every result file: their file names, readers and writers.

Each JSON file a command writes has one record here (a dataclass): `to_dict()` gives the
file's exact JSON (keys in the order of the fields) and `from_dict(d)` reads it back. The
readers are tolerant, because the report also reads older and hand-made files: keys a record
does not know are kept in `extra` and written back after its own, and its keys a file lacks
are remembered in `absent` and left out again, so `R.from_dict(d).to_dict() == d`.

    results.json   AnalyzeResult (ModelResult per model, LayerRow per layer)  `analyze`
    positions.parquet  per-position rows of `analyze --save-positions` (pyarrow)
    metrics.jsonl  MetricRecord per logged step                               `train`
    summary.json   RunSummary                                                 `train`
    config.json    read by run_info (the residual mode, seed, preset, depth)  `train`, `export`
    sweep.json     SweepResult (SweepRunRecord per run, LossStats)            `sweep`
    eval.json      EvalResult (EvalRow per number)                            `eval`

Pure JSON: nothing here imports torch, pandas or matplotlib (the figures/ package draws
from these records; it imports this module, never the other way round).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from causalshift.gpt.residual import MODES
from causalshift.io import (
    atomic_write,
    read_json_object,
    read_jsonl_records,
    write_json,
    write_text,
)

SCHEMA_VERSION = 1
RESULTS_NAME = "results.json"
LAYERS_CSV_NAME = "layers.csv"
POSITIONS_NAME = "positions.parquet"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
RUN_CONFIG_NAME = "config.json"
SWEEP_NAME = "sweep.json"
EVAL_NAME = "eval.json"

R = TypeVar("R", bound="Record")


def _default(f: dataclasses.Field) -> Any:
    """A field's default; None for a required field that a tolerant read did not find."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _plain(value: Any) -> Any:
    """Records (also inside lists) as their JSON dicts; anything else as it is."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _typed(kind: type[Record] | None, value: Any) -> Any:
    """A JSON value as record `kind` (each item, for a list); other values unchanged."""
    if kind is None:
        return value
    if isinstance(value, list):
        return [kind.from_dict(v) if isinstance(v, Mapping) else v for v in value]
    return kind.from_dict(value) if isinstance(value, Mapping) else value


def is_number(x: Any) -> bool:
    """An int or float that JSON would write as a number (bools are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(kw_only=True)
class Record:
    """Base of the records: the dataclass fields are the JSON keys, in their order."""

    # key -> the record type of its value (or of each item of its list)
    NESTED: ClassVar[dict[str, type[Record]]] = {}

    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def _keys(cls) -> list[dataclasses.Field]:
        """The fields that are JSON keys (not extra, absent, or a field marked transient:
        data held in memory only, such as a model's per-position table)."""
        return [
            f
            for f in dataclasses.fields(cls)
            if f.name not in ("extra", "absent") and not f.metadata.get("transient")
        ]

    def to_dict(self) -> dict[str, Any]:
        """The record as its file writes it."""
        d = {
            f.name: _plain(getattr(self, f.name)) for f in self._keys() if f.name not in self.absent
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any]) -> R:
        """Read a record from JSON; missing keys take their default (or None)."""
        fields = cls._keys()
        names = {f.name for f in fields}
        values = {
            f.name: _typed(cls.NESTED.get(f.name), d[f.name]) if f.name in d else _default(f)
            for f in fields
        }
        return cls(
            **values,
            extra={k: v for k, v in d.items() if k not in names},
            absent=frozenset(n for n in names if n not in d),
        )


# --- analyze: results.json and layers.csv --------------------------------------------------


@dataclass(kw_only=True)
class LayerRow(Record):
    """One layer of an analysis: each metric's mean over sequences and its 95% interval.

    In JSON the metrics are top-level keys of the row (`{"layer": 0, "top1_input": ...,
    "ci95": {...}}`), in the engine's column order; here they are `values`."""

    layer: int
    values: dict[str, Any] = field(default_factory=dict)
    ci95: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layer": self.layer, **self.values}
        if self.ci95 is not None:
            d["ci95"] = self.ci95
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerRow:
        values = {k: v for k, v in d.items() if k not in ("layer", "ci95")}
        return cls(layer=d.get("layer"), values=values, ci95=d.get("ci95"))

    def value(self, metric: str) -> Any:
        """The metric's mean at this layer (None when the row lacks it)."""
        return self.values.get(metric)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The metric's 95% interval (None when not recorded)."""
        ci = (self.ci95 or {}).get(metric)
        return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


@dataclass(kw_only=True)
class ShiftLayers(Record):
    """Where the shift happens (lens.metrics.shift_layers); None: the condition never holds."""

    input_until: int | None = None
    output_from: int | None = None
    crossover: int | None = None


@dataclass(kw_only=True)
class StratumResult(Record):
    """One stratum of a model's positions (lens/strata.py): which positions, how many, and
    its own layers (means and 95% intervals over sequences) and shift layers. A metric of an
    empty stratum has null means."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"layers": LayerRow, "shift_layer": ShiftLayers}

    family: str
    name: str
    definition: str | None = None
    num_positions: int | None = None
    num_sequences: int | None = None
    layers: list[LayerRow] = field(default_factory=list)
    shift_layer: ShiftLayers = field(default_factory=ShiftLayers)


@dataclass(kw_only=True)
class ModelResult(Record):
    """One model of an analysis: what was loaded, how many positions counted, its layers."""

    NESTED: ClassVar[dict[str, type[Record]]] = {
        "layers": LayerRow,
        "shift_layer": ShiftLayers,
        "strata": StratumResult,
    }

    name: str
    source: str | None = None
    architecture: str | None = None
    num_layers: int
    tied_embeddings: bool | None = None
    vocab_size: int | None = None
    bos_position_skipped: bool | None = None
    num_positions: int | None = None
    projection_excluded_positions: int | None = None
    layers: list[LayerRow] = field(default_factory=list)
    shift_layer: ShiftLayers = field(default_factory=ShiftLayers)
    lens_screens: list[str] = field(default_factory=list)
    seconds: float | None = None
    tokens_per_second: float | None = None
    strata: list[StratumResult] = field(default_factory=list)
    # the per-position records (a pyarrow Table, lens/positions.py) of `--save-positions`:
    # written to positions.parquet by AnalyzeResult.write, never to results.json
    positions: Any = field(default=None, repr=False, compare=False, metadata={"transient": True})

    def topk_ks(self) -> list[int]:
        """The k's of the top-k match columns (keys like 'top5_input' of the first layer)."""
        keys = self.layers[0].values if self.layers else {}
        return sorted(int(k[3:-6]) for k in keys if k.startswith("top") and k.endswith("_input"))


def common_topk_ks(models: Iterable[ModelResult]) -> list[int]:
    """The k's present in every model's layer rows."""
    ks: set[int] | None = None
    for m in models:
        ks = set(m.topk_ks()) if ks is None else ks & set(m.topk_ks())
    return sorted(ks or [])


@dataclass(kw_only=True)
class AnalyzeData(Record):
    """The text an analysis ran on."""

    spec: str | None = None
    num_sequences: int | None = None
    seq_len: int | None = None


@dataclass(kw_only=True)
class AnalyzeResult(Record):
    """results.json of `causalshift analyze`."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"data": AnalyzeData, "models": ModelResult}

    schema_version: int = SCHEMA_VERSION
    data: AnalyzeData = field(default_factory=AnalyzeData)
    models: list[ModelResult] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def layers_csv(self) -> str:
        """Long form: one row per model x layer x metric with its 95% interval.

        With strata (lens/strata.py), each stratum adds three columns after these, its
        value and interval of the row's model, layer and metric: `<stratum>`,
        `<stratum>_ci95_low`, `<stratum>_ci95_high` (empty where the stratum lacks it);
        the rows and the first seven columns stay what they are without strata."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        names = self.stratum_names()
        strata_cols = [f"{n}{suffix}" for n in names for suffix in ("", "_ci95_low", "_ci95_high")]
        w.writerow(
            ["model", "layer", "depth", "metric", "value", "ci95_low", "ci95_high"] + strata_cols
        )
        for m in self.models:
            by_name = {s.name: s for s in m.strata}
            for row in m.layers:
                for metric, (lo, hi) in (row.ci95 or {}).items():
                    depth = row.layer / m.num_layers
                    extra = _stratum_cells(by_name, names, row.layer, metric)
                    w.writerow(
                        [m.name, row.layer, f"{depth:.4f}", metric, row.values[metric], lo, hi]
                        + extra
                    )
        return buf.getvalue()

    def stratum_names(self) -> list[str]:
        """The names of the strata of any model, in first-seen order."""
        names: list[str] = []
        for m in self.models:
            names += [s.name for s in m.strata if s.name not in names]
        return names

    def write(self, out: str | Path) -> Path:
        """results.json and layers.csv in `out`, each written atomically; returns results.json.

        With per-position tables (`--save-positions`), positions.parquet too. The figures
        of an analysis are `causalshift.figures.analyze_figures(result, out)`."""
        out = Path(out)
        path = write_json(out / RESULTS_NAME, self.to_dict())
        write_text(out / LAYERS_CSV_NAME, self.layers_csv())
        tables = [m.positions for m in self.models if m.positions is not None]
        if tables:
            write_positions(tables, out / POSITIONS_NAME)
        return path

    @classmethod
    def read(cls, path: str | Path) -> AnalyzeResult:
        """A results.json (or the folder holding one)."""
        return cls.from_dict(read_json_object(_file(path, RESULTS_NAME), "analyze results"))


def write_positions(tables: Sequence[Any], path: Path) -> Path:
    """Per-position tables (pyarrow, one per model) as one parquet file, atomically.

    pyarrow is imported here, only when there is something to write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(tables, promote_options="permissive")
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _stratum_cells(
    strata: Mapping[str, StratumResult], names: Sequence[str], layer: int, metric: str
) -> list[Any]:
    """The value and interval of `metric` at `layer` in each named stratum ("" if absent)."""
    cells: list[Any] = []
    for name in names:
        stratum = strata.get(name)
        rows = [] if stratum is None else [r for r in stratum.layers if r.layer == layer]
        row = rows[0] if rows else None
        value = None if row is None else row.value(metric)
        ci = None if row is None else row.interval(metric)
        cells += ["" if v is None else v for v in (value, *(ci or (None, None)))]
    return cells


def _file(path: str | Path, name: str) -> Path:
    """`path` itself, or `path / name` when `path` is a folder."""
    path = Path(path)
    return path / name if path.is_dir() else path


# --- train: metrics.jsonl, summary.json, config.json ---------------------------------------


@dataclass(kw_only=True)
class MetricRecord(Record):
    """One line of metrics.jsonl: the state of training after `step` optimizer steps."""

    step: int
    tokens: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_second: float | None = None
    grad_norm: float | None = None
    gate_p: list[float] | None = None
    alpha: list[float] | None = None
    epoch: float | None = None
    elapsed: float | None = None

    def json_line(self) -> str:
        """The record as one metrics.jsonl line (newline included)."""
        return json.dumps(self.to_dict()) + "\n"


def read_metrics(path: str | Path) -> list[MetricRecord]:
    """The records of a metrics.jsonl (or of the run folder holding one); a partial last
    line, from a kill, is skipped and a missing file gives []."""
    return [MetricRecord.from_dict(r) for r in read_jsonl_records(_file(path, METRICS_NAME))]


@dataclass(kw_only=True)
class RunSummary(Record):
    """summary.json: written once, when a training run finishes."""

    finished: bool = True
    step: int
    tokens: int
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    seconds: float | None = None
    train_tokens_per_second: float | None = None

    def write(self, run_dir: str | Path) -> Path:
        return write_json(Path(run_dir) / SUMMARY_NAME, self.to_dict())


def read_summary(run_dir: str | Path) -> RunSummary | None:
    """A run's summary.json; None when the run has none (not finished) or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return RunSummary.from_dict(data) if isinstance(data, dict) else None


def run_info(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Residual mode, cut layer, alpha, seed, preset and depth from a config.json.

    Reads a run directory's config (TrainConfig fields + "model": GPTConfig dict) or an
    HF export's config (model_type gpt2 -> mode none; causalshift_gpt -> "causalshift").
    Keys whose value is unknown are left out.
    """
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    if model is None and isinstance(cfg.get("causalshift"), dict):
        model = cfg["causalshift"]
    residual = (model or {}).get("residual")
    residual = residual if isinstance(residual, dict) else {}
    mode = cfg.get("residual") if isinstance(cfg.get("residual"), str) else None
    mode = mode or residual.get("mode") or ("none" if cfg.get("model_type") == "gpt2" else None)
    info: dict[str, Any] = {
        "mode": mode,
        "cut_layer": cfg.get("cut_layer", residual.get("cut_layer")),
        "alpha": cfg.get("alpha", residual.get("alpha")),
        "seed": cfg.get("seed"),
        "preset": cfg.get("preset"),
        "n_layer": (model or {}).get("n_layer", cfg.get("n_layer")),
    }
    return {k: v for k, v in info.items() if v is not None}


def mode_label(info: Mapping[str, Any]) -> str:
    """'baseline', 'fixed K=4', 'fixed K=4 (alpha=0.5)', 'gate', ... for tables and legends."""
    mode = info.get("mode")
    if mode is None:
        return "unknown"
    cls = MODES.get(mode) if isinstance(mode, str) else None
    return str(mode) if cls is None else cls.label(info.get("cut_layer"), info.get("alpha"))


# --- eval: eval.json -----------------------------------------------------------------------


@dataclass(kw_only=True)
class EvalRow(Record):
    """One number of an lm-eval run, labelled by task, metric and filter."""

    task: str
    metric: str
    filter: str = "none"
    value: float
    stderr: float | None = None
    higher_is_better: bool | None = None
    num_samples: int | None = None
    is_group: bool = False
    alias: str | None = None


@dataclass(kw_only=True)
class EvalResult(Record):
    """eval.json of `causalshift eval`."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"results": EvalRow}

    schema_version: int = SCHEMA_VERSION
    model: dict[str, Any] = field(default_factory=dict)  # path, name, run_info, backend, ...
    results: list[EvalRow] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def write(self, out: str | Path) -> Path:
        return write_json(Path(out) / EVAL_NAME, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> EvalResult:
        """An eval.json (or the folder holding one)."""
        return cls.from_dict(read_json_object(_file(path, EVAL_NAME), "eval results"))


# --- a training run folder, read back --------------------------------------------------------


@dataclass
class TrainingRun:
    """A training run folder: its config's residual facts, its metrics, evals made of it."""

    path: Path
    info: dict[str, Any]
    metrics: list[MetricRecord]
    evals: list[EvalResult] = field(default_factory=list)
    environment: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, path: Path, cfg: Mapping[str, Any]) -> TrainingRun:
        """The run in folder `path` whose config.json holds `cfg`."""
        env = cfg.get("environment")
        return cls(
            path,
            run_info(cfg),
            read_metrics(path),
            environment=env if isinstance(env, dict) else None,
        )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """The residual mode's label ('baseline', 'gate', ...)."""
        return mode_label(self.info)

    @property
    def final_val_loss(self) -> float | None:
        vals = [r.val_loss for r in self.metrics if is_number(r.val_loss)]
        return vals[-1] if vals else None

    @property
    def tokens(self) -> int | None:
        toks = [r.tokens for r in self.metrics if is_number(r.tokens)]
        return toks[-1] if toks else None

    @property
    def gate_history(self) -> list[tuple[int, list[float]]]:
        """(step, p_l by layer) of every record that logged the gate."""
        return [(r.step, r.gate_p) for r in self.metrics if r.gate_p]


def read_run(run_dir: str | Path) -> TrainingRun:
    """A training run folder (its config.json may be missing: then nothing is known of it)."""
    path = Path(run_dir)
    cfg_path = path / RUN_CONFIG_NAME
    cfg = read_json_object(cfg_path, "run config") if cfg_path.is_file() else {}
    return TrainingRun.from_config(path, cfg)


# --- sweep: sweep.json -----------------------------------------------------------------------


@dataclass(kw_only=True)
class SweepRunRecord(Record):
    """One run of a sweep and how it ended."""

    name: str | None = None
    mode: str
    cut_layer: int | None = None
    alpha: float | None = None
    seed: int | None = None
    final_val_loss: float | None = None
    tokens: int | None = None
    seconds: float | None = None
    run_dir: str | None = None
    status: str | None = None


@dataclass(kw_only=True)
class LossStats(Record):
    """Final validation losses of several runs (seeds): mean, range, sample std, count.

    The baseline's statistics have no cut layer: then the key is not written."""

    cut_layer: int | None = None
    mean: float
    min: float
    max: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.cut_layer is None:
            d.pop("cut_layer", None)
        return d


def loss_stats(values: Sequence[float], cut_layer: int | None = None) -> LossStats:
    """Statistics of a non-empty list of losses; std is 0.0 for one value."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return LossStats(cut_layer=cut_layer, mean=mean, min=min(values), max=max(values), std=std, n=n)


def sweep_stats(runs: Iterable[SweepRunRecord]) -> tuple[LossStats | None, list[LossStats]]:
    """The baseline's and each fixed cut layer's statistics over the finished runs."""
    done = [r for r in runs if r.final_val_loss is not None]
    base = [r.final_val_loss for r in done if r.mode == "none"]
    layers: dict[int, list[float]] = {}
    for r in done:
        if r.mode == "fixed":
            layers.setdefault(int(r.cut_layer), []).append(r.final_val_loss)
    by_layer = [loss_stats(v, cut_layer=k) for k, v in sorted(layers.items())]
    return (loss_stats(base) if base else None), by_layer


@dataclass(kw_only=True)
class SweepResult(Record):
    """sweep.json of `causalshift sweep`: every run, the baseline's and each layer's stats."""

    NESTED: ClassVar[dict[str, type[Record]]] = {
        "runs": SweepRunRecord,
        "baseline": LossStats,
        "by_layer": LossStats,
    }

    schema_version: int = SCHEMA_VERSION
    preset: str | None = None
    alpha: float | None = None
    seeds: list[int] = field(default_factory=list)
    max_steps: int | None = None
    data: str | None = None
    runs: list[SweepRunRecord] = field(default_factory=list)
    baseline: LossStats | None = None
    by_layer: list[LossStats] = field(default_factory=list)

    def with_stats(self) -> SweepResult:
        """This sweep with `baseline` and `by_layer` computed from its runs."""
        baseline, by_layer = sweep_stats(self.runs)
        return dataclasses.replace(
            self,
            baseline=baseline,
            by_layer=by_layer,
            absent=self.absent - {"baseline", "by_layer"},
        )

    def write(self, out: str | Path) -> Path:
        return write_json(Path(out) / SWEEP_NAME, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> SweepResult:
        """A sweep.json (or the folder holding one)."""
        return cls.from_dict(read_json_object(_file(path, SWEEP_NAME), "sweep"))
