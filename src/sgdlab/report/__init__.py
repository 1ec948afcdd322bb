"""The study report: PNG figures (matplotlib, no pyplot) and one self-contained HTML page.

``build_report(results_dir, out_dir, study=..., curves=...)`` is the entry point; the figure functions
are public so a notebook can draw one figure from the same data::

    from sgdlab.report import build_report
    res = build_report(Path("results/default"), Path("results/default/report"), study="default", curves={})
    res.html, res.figures, res.skipped

The library never imports Prefect or MLflow: the caller fetches per-step curves and passes them in.
"""

from sgdlab.report.build import ReportResult, build_report
from sgdlab.report.data import SkipFigure, StudyData, load_study, seed_band
from sgdlab.report.figures_generalization import measures_vs_error, predicted_vs_true
from sgdlab.report.figures_training import (
    edge_of_stability,
    scaling_rules,
    spectral_density,
    summary_bars,
    training_curves,
)
from sgdlab.report.style import save_png

__all__ = [
    "ReportResult",
    "SkipFigure",
    "StudyData",
    "build_report",
    "edge_of_stability",
    "load_study",
    "measures_vs_error",
    "predicted_vs_true",
    "save_png",
    "scaling_rules",
    "seed_band",
    "spectral_density",
    "summary_bars",
    "training_curves",
]
