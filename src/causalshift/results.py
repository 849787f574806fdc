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
    sweep.json     SweepResult (SweepRunRecord per run, LossStats, Comparison)  `sweep`
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
FIT_LENS_NAME = "fit.json"

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
    "ci95": {...}}`), in the engine's column order; here they are `values`. A sublayer row
    (`analyze --sublayers`: the stream after block l's attention) keeps its block in
    `layer` and adds `"label": "l.attn"` and `"depth": (l - 0.5) / L`; rows without a label
    are the streams after each block, as in files written before sublayers existed."""

    SUBLAYER_KEYS: ClassVar[tuple[str, ...]] = ("label", "depth")

    layer: int
    label: str | None = None
    depth: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    ci95: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layer": self.layer}
        d.update({k: getattr(self, k) for k in self.SUBLAYER_KEYS if getattr(self, k) is not None})
        d.update(self.values)
        if self.ci95 is not None:
            d["ci95"] = self.ci95
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerRow:
        skip = ("layer", "ci95", *cls.SUBLAYER_KEYS)
        values = {k: v for k, v in d.items() if k not in skip}
        return cls(
            layer=d.get("layer"),
            label=d.get("label"),
            depth=d.get("depth"),
            values=values,
            ci95=d.get("ci95"),
        )

    @property
    def is_block(self) -> bool:
        """True for the stream after a block (or layer 0), False for an `l.attn` row."""
        return self.label is None or self.label == str(self.layer)

    @property
    def name(self) -> str:
        """The row's label: "3" after block 3, "3.attn" after block 3's attention."""
        return self.label if self.label is not None else str(self.layer)

    @property
    def position(self) -> float:
        """Place on the layer axis: l, or l - 0.5 for `l.attn` (between streams l-1 and l)."""
        return self.layer if self.is_block else self.layer - 0.5

    def relative_depth(self, num_layers: int) -> float:
        """position / L (the `depth` a sublayer row stores)."""
        return self.depth if self.depth is not None else self.position / max(num_layers, 1)

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
class SublayerRow(Record):
    """How block l changes the output target's metrics (`analyze --sublayers`): the change
    brought by its attention (row l.attn minus row l-1) and by its MLP (row l minus row
    l.attn), per metric, with 95% intervals over sequences: ci95 = {"attn": {metric: [lo,
    hi]}, "mlp": {...}}."""

    layer: int
    attn: dict[str, Any] = field(default_factory=dict)
    mlp: dict[str, Any] = field(default_factory=dict)
    ci95: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def interval(self, part: str, metric: str) -> tuple[float, float] | None:
        """The 95% interval of `part` ("attn" or "mlp") for `metric` (None if not recorded)."""
        ci = (self.ci95 or {}).get(part, {}).get(metric)
        return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


@dataclass(kw_only=True)
class ModelResult(Record):
    """One model of an analysis: what was loaded, how many positions counted, its layers."""

    NESTED: ClassVar[dict[str, type[Record]]] = {
        "layers": LayerRow,
        "shift_layer": ShiftLayers,
        "strata": StratumResult,
        "sublayers": SublayerRow,
    }

    name: str
    # the decoder: "logit", or "tuned:LENS_DIR" (`analyze --lens`); files without it: logit
    lens: str = "logit"
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
    # per block, what its attention and its MLP add (`--sublayers`; the key only then)
    sublayers: list[SublayerRow] = field(default_factory=list)
    # the per-position records (a pyarrow Table, lens/positions.py) of `--save-positions`:
    # written to positions.parquet by AnalyzeResult.write, never to results.json
    positions: Any = field(default=None, repr=False, compare=False, metadata={"transient": True})

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not self.sublayers:  # files without sublayers stay as they were
            d.pop("sublayers", None)
        return d

    def block_layers(self) -> list[LayerRow]:
        """The rows of the streams after each block, 0..L (no `l.attn` rows)."""
        return [r for r in self.layers if r.is_block]

    @property
    def has_sublayer_rows(self) -> bool:
        return any(not r.is_block for r in self.layers)

    @property
    def lens_kind(self) -> str:
        """"logit" or "tuned" (the part of `lens` before any ":DIR")."""
        return (self.lens or "logit").split(":", 1)[0]

    @property
    def label(self) -> str:
        """The model's name, and its lens when that is not the logit lens."""
        return self.name if self.lens_kind == "logit" else f"{self.name} ({self.lens_kind} lens)"

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
        """Long form: one row per model x layer x metric with its 95% interval (the layer
        column holds `l.attn` for a sublayer row, its depth column (l - 0.5) / L).

        With strata (lens/strata.py), each stratum adds three columns after these, its
        value and interval of the row's model, layer and metric: `<stratum>`,
        `<stratum>_ci95_low`, `<stratum>_ci95_high` (empty where the stratum lacks it);
        the rows and the first seven columns stay what they are without strata. When a
        model was decoded by another lens than the logit lens (`--lens tuned:DIR`), an eighth
        column `lens` (the model's `lens`) comes before the strata columns."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        names = self.stratum_names()
        strata_cols = [f"{n}{suffix}" for n in names for suffix in ("", "_ci95_low", "_ci95_high")]
        lens_col = ["lens"] if any(m.lens_kind != "logit" for m in self.models) else []
        w.writerow(
            ["model", "layer", "depth", "metric", "value", "ci95_low", "ci95_high"]
            + lens_col
            + strata_cols
        )
        for m in self.models:
            by_name = {s.name: s for s in m.strata}
            for row in m.layers:
                # strata hold the block rows only: an `l.attn` row has empty stratum cells
                strata = by_name if row.is_block else {}
                for metric, (lo, hi) in (row.ci95 or {}).items():
                    depth = row.relative_depth(m.num_layers)
                    extra = _stratum_cells(strata, names, row.layer, metric)
                    w.writerow(
                        [m.name, row.name, f"{depth:.4f}", metric, row.values[metric], lo, hi]
                        + [m.lens] * len(lens_col)
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


# --- fit-lens: fit.json ----------------------------------------------------------------------


@dataclass(kw_only=True)
class FitLayerRow(Record):
    """One lens row of fit.json: the held-out KL(model || lens) in nats, mean over positions,
    of the tuned lens and of the logit lens, with 95% intervals over sequences (ci95 =
    {"kl_tuned": [lo, hi], "kl_logit": [lo, hi]})."""

    layer: int
    kl_tuned: float | None = None
    kl_logit: float | None = None
    ci95: dict[str, list[float]] | None = None


@dataclass(kw_only=True)
class FitLensResult(Record):
    """fit.json of `causalshift fit-lens`: the model, the text, the training (steps, tokens,
    seconds, the loss per step in `history`) and the held-out KL per layer."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"layers": FitLayerRow}

    schema_version: int = SCHEMA_VERSION
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    layers: list[FitLayerRow] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", "lr"}
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def write(self, out: str | Path) -> Path:
        """fit.json in `out`, atomically."""
        return write_json(Path(out) / FIT_LENS_NAME, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> FitLensResult:
        """A fit.json (or the lens folder holding one)."""
        return cls.from_dict(read_json_object(_file(path, FIT_LENS_NAME), "fit-lens results"))


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

    The baseline's statistics have no cut layer and no alpha, nor have a fixed cut's in
    sweeps whose runs record no alpha: then those keys are not written."""

    cut_layer: int | None = None
    alpha: float | None = None
    mean: float
    min: float
    max: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for key in ("cut_layer", "alpha"):
            if getattr(self, key) is None:
                d.pop(key, None)
        return d


def loss_stats(
    values: Sequence[float], cut_layer: int | None = None, alpha: float | None = None
) -> LossStats:
    """Statistics of a non-empty list of losses; std is 0.0 for one value."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return LossStats(
        cut_layer=cut_layer, alpha=alpha, mean=mean, min=min(values), max=max(values), std=std, n=n
    )


def _alpha_key(alpha: float | None) -> float:
    return -math.inf if alpha is None else alpha


def sweep_stats(runs: Iterable[SweepRunRecord]) -> tuple[LossStats | None, list[LossStats]]:
    """The baseline's and each fixed cut's (layer, alpha) statistics over the finished runs,
    the cuts ordered by alpha, then layer."""
    done = [r for r in runs if r.final_val_loss is not None]
    base = [r.final_val_loss for r in done if r.mode == "none"]
    cells: dict[tuple[int, float | None], list[float]] = {}
    for r in done:
        if r.mode == "fixed":
            cells.setdefault((int(r.cut_layer), r.alpha), []).append(r.final_val_loss)
    order = sorted(cells, key=lambda ka: (_alpha_key(ka[1]), ka[0]))
    by_layer = [loss_stats(cells[k, a], cut_layer=k, alpha=a) for k, a in order]
    return (loss_stats(base) if base else None), by_layer


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30.
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(df: int) -> float:
    """t(0.975, df): the table up to 30 degrees of freedom, then the Cornish-Fisher
    expansion in 1/df (within 0.001 of the exact quantile there)."""
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    if df <= len(T95):
        return T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(kw_only=True)
class PairedDiff(Record):
    """Losses minus a reference's, seed by seed: the mean difference over the `n` seeds that
    both have, and its 95% t interval over those seeds (None with one seed)."""

    mean: float
    ci95: list[float] | None = None
    n: int
    seeds: list[int] = field(default_factory=list)

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0."""
        return self.ci95 is not None and (self.ci95[0] > 0 or self.ci95[1] < 0)


def paired_diff(values: Mapping[int, float], reference: Mapping[int, float]) -> PairedDiff | None:
    """d_s = values[s] - reference[s] over the seeds s in both: mean(d) and
    mean(d) -/+ t(0.975, n - 1) sd(d) / sqrt(n); None when no seed is in both."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    d = [values[s] - reference[s] for s in seeds]
    n, mean = len(d), sum(d) / len(d)
    ci = None
    if n > 1:
        half = t95(n - 1) * math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
        ci = [mean - half, mean + half]
    return PairedDiff(mean=mean, ci95=ci, n=n, seeds=seeds)


@dataclass(kw_only=True)
class Comparison(Record):
    """One fixed cut (layer, alpha) or learned mode of a sweep: its mean final loss over
    seeds and its paired differences to the baseline and (learned modes) to the best cut."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"vs_baseline": PairedDiff, "vs_best": PairedDiff}

    mode: str
    cut_layer: int | None = None
    alpha: float | None = None
    mean: float
    n: int
    seeds: list[int] = field(default_factory=list)
    vs_baseline: PairedDiff | None = None
    vs_best: PairedDiff | None = None


def _losses_by_variant(
    runs: Iterable[SweepRunRecord],
) -> dict[tuple[str, int | None, float | None], tuple[list[float], dict[int, float]]]:
    """(mode, cut layer, alpha) -> (every finished loss, the mean loss per seed)."""
    found: dict[tuple[str, int | None, float | None], list[tuple[int | None, float]]] = {}
    for r in runs:
        if r.final_val_loss is None or not isinstance(r.mode, str):
            continue
        alpha = None if r.mode == "none" else r.alpha
        key = (r.mode, r.cut_layer if r.mode == "fixed" else None, alpha)
        found.setdefault(key, []).append((r.seed, r.final_val_loss))
    out = {}
    for key, pairs in found.items():
        per_seed: dict[int, list[float]] = {}
        for seed, loss in pairs:
            if isinstance(seed, int):
                per_seed.setdefault(seed, []).append(loss)
        out[key] = ([x for _, x in pairs], {s: sum(v) / len(v) for s, v in per_seed.items()})
    return out


def sweep_comparisons(
    runs: Iterable[SweepRunRecord],
) -> tuple[list[Comparison], dict[str, Any] | None]:
    """Each fixed cut (by alpha, then layer) and each learned mode (in report order) against
    the baseline, seed by seed; the best cut (the lowest mean loss: {"cut_layer", "alpha"},
    None without cuts) and each learned mode against it."""
    variants = _losses_by_variant(runs)
    base = next((by_seed for (m, _, _), (_, by_seed) in variants.items() if m == "none"), {})
    rows = []
    for (mode, cut, alpha), (losses, by_seed) in variants.items():
        if mode == "none":
            continue
        rows.append(
            Comparison(
                mode=mode,
                cut_layer=cut,
                alpha=alpha,
                mean=sum(losses) / len(losses),
                n=len(losses),
                seeds=sorted(by_seed),
                vs_baseline=paired_diff(by_seed, base),
            )
        )
    order = {name: cls.order for name, cls in MODES.items()}
    rows.sort(key=lambda c: (order.get(c.mode, 99), c.mode, _alpha_key(c.alpha), c.cut_layer or 0))
    cuts = [c for c in rows if c.mode == "fixed"]
    if not cuts:
        return rows, None
    best = min(cuts, key=lambda c: c.mean)
    best_seeds = variants["fixed", best.cut_layer, best.alpha][1]
    for c in rows:
        if c.mode != "fixed":
            c.vs_best = paired_diff(variants[c.mode, None, c.alpha][1], best_seeds)
    return rows, {"cut_layer": best.cut_layer, "alpha": best.alpha}


@dataclass(kw_only=True)
class SweepResult(Record):
    """sweep.json of `causalshift sweep`: every run, the baseline's and each cut's stats, and
    each cut's and learned mode's paired differences (`comparisons`).

    `alpha` is the sweep's one alpha (None when it has several: see `alphas`); files from
    before alpha lists have no `alphas`, `modes`, `comparisons` or `best`."""

    NESTED: ClassVar[dict[str, type[Record]]] = {
        "runs": SweepRunRecord,
        "baseline": LossStats,
        "by_layer": LossStats,
        "comparisons": Comparison,
    }
    STATS_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"baseline", "by_layer", "comparisons", "best"}
    )

    schema_version: int = SCHEMA_VERSION
    preset: str | None = None
    alpha: float | None = None
    alphas: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    max_steps: int | None = None
    data: str | None = None
    runs: list[SweepRunRecord] = field(default_factory=list)
    baseline: LossStats | None = None
    by_layer: list[LossStats] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def with_stats(self) -> SweepResult:
        """This sweep with its statistics (STATS_KEYS) computed from its runs."""
        baseline, by_layer = sweep_stats(self.runs)
        comparisons, best = sweep_comparisons(self.runs)
        return dataclasses.replace(
            self,
            baseline=baseline,
            by_layer=by_layer,
            comparisons=comparisons,
            best=best,
            absent=self.absent - self.STATS_KEYS,
        )

    @property
    def cuts(self) -> list[Comparison]:
        """The fixed cuts' comparisons."""
        return [c for c in self.comparisons if c.mode == "fixed"]

    @property
    def learned(self) -> list[Comparison]:
        """The learned modes' comparisons."""
        return [c for c in self.comparisons if c.mode != "fixed"]

    def best_cut(self) -> Comparison | None:
        """The comparison of the best cut (`best`), if any."""
        if not isinstance(self.best, Mapping):
            return None
        key = (self.best.get("cut_layer"), self.best.get("alpha"))
        return next((c for c in self.cuts if (c.cut_layer, c.alpha) == key), None)

    def write(self, out: str | Path) -> Path:
        return write_json(Path(out) / SWEEP_NAME, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> SweepResult:
        """A sweep.json (or the folder holding one)."""
        return cls.from_dict(read_json_object(_file(path, SWEEP_NAME), "sweep"))
