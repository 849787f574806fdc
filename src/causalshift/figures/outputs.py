"""The figures a command writes next to its results: an analysis' two, a training run's
figures/ folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from causalshift.figures import gate, loss, similarity, strata, sublayers, topk
from causalshift.results import AnalyzeResult, read_run

RUN_FIGURES_DIR = "figures"


def analyze_figures(
    result: AnalyzeResult, out: Path, metric_label: Callable[[str], str] = str
) -> list[Path]:
    """topk_match.png, similarity.png and (when its models have strata) strata.png of an
    analysis, in `out` (metric_label: see `plot_topk`); sublayers.png when a model has
    sublayer contributions (`analyze --sublayers`)."""
    made = [
        topk.plot_topk(result.models, out / topk.FILE_NAME, metric_label=metric_label),
        similarity.plot_similarity(
            result.models, out / similarity.FILE_NAME, metric_label=metric_label
        ),
        strata.plot_strata(result.models, out / strata.FILE_NAME),
    ]
    if any(m.sublayers for m in result.models):
        made.append(sublayers.plot_sublayers(result.models, out / sublayers.FILE_NAME))
    return [p for p in made if p is not None]


def run_figures(run_dir: Path) -> list[Path]:
    """(Re)draw a training run's figures/ (loss.png; gate_p.png for a gate) from its files."""
    run = read_run(run_dir)
    folder = Path(run_dir) / RUN_FIGURES_DIR
    made = [
        loss.plot_loss(run, folder / loss.FILE_NAME),
        gate.plot_gate([run], folder / gate.FILE_NAME),
    ]
    return [p for p in made if p is not None]
