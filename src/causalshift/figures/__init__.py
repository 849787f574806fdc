"""Every figure, drawn from result records (causalshift.results), never from a model.

One module per figure, each with its FILE_NAME; `common` holds what they share. Nothing
here imports torch; matplotlib is imported when a figure is drawn, not at import time.
"""

from causalshift.figures.fit_lens import plot_fit_lens
from causalshift.figures.gate import plot_gate
from causalshift.figures.heatmap import plot_heatmap
from causalshift.figures.intervene import plot_intervene
from causalshift.figures.learned_gate import plot_learned_gate
from causalshift.figures.loss import plot_loss
from causalshift.figures.outputs import analyze_figures, run_figures
from causalshift.figures.similarity import plot_similarity
from causalshift.figures.strata import plot_strata
from causalshift.figures.sublayers import plot_sublayers
from causalshift.figures.sweep import SweepSeries, plot_sweep
from causalshift.figures.topk import plot_topk
from causalshift.figures.val_loss import plot_val_loss

__all__ = [
    "SweepSeries",
    "analyze_figures",
    "plot_fit_lens",
    "plot_gate",
    "plot_heatmap",
    "plot_intervene",
    "plot_learned_gate",
    "plot_loss",
    "plot_similarity",
    "plot_strata",
    "plot_sublayers",
    "plot_sweep",
    "plot_topk",
    "plot_val_loss",
    "run_figures",
]
