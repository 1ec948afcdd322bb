"""``build_report``: the study's figures (PNG) and one self-contained HTML summary.

The caller (a Prefect flow) fetches per-step curves from MLflow and passes them in; this module only
reads the results directory and writes into ``out_dir``. Any optional input may be missing: the
figure is skipped and the HTML says why. Only a missing ``runs.parquet`` is an error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sgdlab.report import figures_generalization as fgen
from sgdlab.report import figures_training as ftrain
from sgdlab.report.data import SkipFigure, StudyData, check_curves, group_key, load_study
from sgdlab.report.html import FigureEntry, render_page
from sgdlab.report.style import save_png
from sgdlab.report.tables import hessian_table, runs_table, scores_table, sweep_summary
from sgdlab.study import REPORT_FIGURES  # noqa: E402  (file names: the Study's table)


def _placeholder(path: Path, title: str, reason: str) -> Path:
    """A small PNG stating that the figure was skipped and why (the HTML says the same)."""
    import textwrap

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 1.6))
    fig.text(
        0.5, 0.5, f"{title}: skipped\n" + textwrap.fill(reason, 90), ha="center", va="center", fontsize=8, color="0.35"
    )
    return save_png(fig, path)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote: the HTML page, the PNG figures, and ``(figure, reason)`` for
    each figure that was skipped."""

    html: Path
    figures: tuple[Path, ...]
    skipped: tuple[tuple[str, str], ...]


# (number, file stem, title, caption)
FIGURES = [
    (
        1,
        REPORT_FIGURES[0],
        "Training curves per optimizer",
        "Train loss (log scale) and test accuracy vs optimizer step, one row per optimizer and one colour per "
        "(learning rate, batch size, variant) group: the line is the mean over finished seeds, the band ±1 std "
        "(≥3 seeds) or min–max (2 seeds). Diverged or failed runs are dashed and end in a cross; a blow-up "
        "leaves the top of the loss axis, which is scaled to the finished runs.",
    ),
    (
        2,
        REPORT_FIGURES[1],
        "Edge of Stability",
        "Sharpness λ_max of the training loss during training (lowest seed of each group) and the stability "
        "threshold of the run's optimizer at its learning rate as a dashed line of the same colour (2/η for "
        "GD/SGD; momentum forms for heavy ball/Nesterov). For Adam/AdamW the preconditioned sharpness is drawn "
        "against (2+2β1)/((1−β1)η) when it was logged (Cohen et al. 2021; 2022).",
    ),
    (
        3,
        REPORT_FIGURES[2],
        "Hessian spectral density",
        "Spectral density of the training-loss Hessian at the final checkpoint by stochastic Lanczos quadrature "
        "(log density, Gaussian-smoothed) for a few runs: one seed per group, every optimizer before a second "
        "group of the same optimizer.",
    ),
    (
        4,
        REPORT_FIGURES[3],
        "Predicted vs true test error",
        "Each point is one classifier: its predicted test error (GAN synthetic test set, validation set, or other "
        "predictors) against its true test error. Points on the dashed y = x line are exact predictions. MAE (in "
        "percentage points) and signed Kendall τ are computed from the points shown.",
    ),
    (
        5,
        REPORT_FIGURES[4],
        "Generalization measures vs generalization gap",
        "One panel per generalization measure (higher means predicted worse generalization), against the "
        "generalization gap (test − train error on each run's own training data, percentage points), points "
        "coloured by optimizer; signed Kendall τ between the measure and the gap in each title (τ > 0 is the "
        "right direction; Jiang et al. 2020 rank measures against the gap).",
    ),
    (
        6,
        REPORT_FIGURES[5],
        "Final test accuracy per group",
        "Final test accuracy per (optimizer, learning rate, batch size, variant) group: mean ± std over finished "
        "seeds; diverged/failed runs are counted next to the bar, not averaged.",
    ),
    (
        7,
        "fig7_gan_samples",
        "GAN samples",
        "Samples of the class-conditional GAN used as the synthetic test set (one row per class, as given by the "
        "GAN phase).",
    ),
    (
        8,
        REPORT_FIGURES[6],
        "Scaling rules and SVAG on one axis",
        "For a base run with scaling-rule or SVAG variants: train loss against epochs (steps × batch size / the "
        "run's training examples) and against SDE time (steps × η for SGD-type runs, steps × η² for Adam/RMSprop-"
        "type runs; η the per-step lr, lr/l for SVAG). The linear (SGD) and square-root (Adam) rules keep epochs "
        "and SDE time, SVAG keeps SDE time: the rule holds where the curves coincide (Goyal et al. 2017; Li, "
        "Malladi, Arora 2021; Malladi et al. 2022).",
    ),
    (
        9,
        REPORT_FIGURES[7],
        "The GAN predictor along GAN training",
        "For generator snapshots kept along GAN training (gan.snapshots): left, the class-conditional Fréchet "
        "distance of the snapshot's samples to the validation part (log scale), with the gate's limit (5 × the "
        "real-data floor FD(train, val)) dashed; right, the GAN predictor's Kendall τ and MAE (percentage points) "
        "against the classifiers' true test errors. x axis: GAN training time in seconds on this machine (the "
        "step of each point is in gan_curve.parquet).",
    ),
]

CAVEATS = [
    "Sharpness is not a measure of generalization by itself: λ_max (and the trace) move with the learning rate "
    "and the batch size, e.g. at the Edge of Stability λ_max hovers at 2/η by construction, without a matching "
    "change in test error (Kaur, Cohen, Lipton 2023). Compare sharpness only between runs with the same "
    "learning rate and batch size; adaptive sharpness mostly tracks the learning rate too (Andriushchenko et "
    "al. 2023).",
    "The PGDL score barely notices a flipped sign: a measure that ranks the models exactly backwards can score "
    "as high as one that ranks them right. Read the signed Kendall τ next to it (τ < 0 = wrong direction).",
    "Hessian quantities are estimates on a fixed probe subset of the training data (λ_max by Lanczos, trace by "
    "Hutchinson with its standard error); estimates on small subsets are noisy, and BatchNorm's mode changes "
    "them.",
    "The GAN predictor (Zhang, Gupta, Saunshi, Arora, ICLR 2022) uses a GAN trained on the same training set "
    "as the classifiers and is not fitted to test errors; its accuracy here holds for this population of "
    "models only.",
    "Kendall τ and MAE in the figures are computed from the plotted points (signed τ-b); the predictor-score "
    "table holds the scoring phase's own numbers, which may use a different variant or population.",
]


def _figure(fn: Callable[[], object], out: Path) -> tuple[Path | None, str | None]:
    try:
        fig = fn()
    except SkipFigure as exc:
        return None, str(exc)
    return save_png(fig, out), None


def _gan_grid(gan_grid: Path | None, out: Path) -> tuple[Path | None, str | None]:
    if gan_grid is None:
        return None, "no GAN sample grid was given (the GAN phase did not run)"
    gan_grid = Path(gan_grid)
    if not gan_grid.is_file():
        return None, f"GAN sample grid {gan_grid.name} not found"
    if gan_grid.read_bytes()[:8] != PNG_MAGIC:
        return None, f"GAN sample grid {gan_grid.name} is not a PNG file"
    out.parent.mkdir(parents=True, exist_ok=True)
    if gan_grid.resolve() != out.resolve():
        shutil.copyfile(gan_grid, out)
    return out, None


def _overview(data: StudyData) -> list[str]:
    runs = data.runs
    n = {s: sum(r.get("status") == s for r in runs) for s in ("finished", "diverged", "failed")}
    groups: dict[tuple, int] = {}
    for r in runs:
        groups[group_key(r)] = groups.get(group_key(r), 0) + 1
    seeds = sorted(set(groups.values()))
    opts = sorted({str(r.get("optimizer")) for r in runs})
    return [
        f"{len(runs)} runs ({n['finished']} finished, {n['diverged']} diverged, {n['failed']} failed)",
        f"in {len(groups)} groups of {seeds[0]}–{seeds[-1]} seeds"
        if len(seeds) > 1
        else f"in {len(groups)} groups of {seeds[0]} seed(s)",
        f"over {len(opts)} optimizers ({', '.join(opts)}).",
    ]


def build_report(
    results_dir: Path,
    out_dir: Path,
    *,
    study: str,
    curves: dict[str, dict[str, list[tuple[int, float]]]],
    gan_grid: Path | None = None,
    notes: list[str] | None = None,
    recipe: tuple[str, list[str], Path] | None = None,
) -> ReportResult:
    """Write the study report into ``out_dir``: PNG figures and ``report.html`` (self-contained).

    Args:
        results_dir: the study's results directory; ``runs.parquet`` is required, ``probe.parquet``,
            ``densities.json``, ``predictions.parquet`` and ``scores.parquet`` are used when present.
        out_dir: where the PNGs and ``report.html`` go (created).
        study: the study name (page title).
        curves: ``{run_key: {metric: [(step, value), ...]}}`` from MLflow (``train/loss``, ``test/acc``,
            ``hessian/lambda_max``, ``hessian/threshold``, ``hessian/precond_lambda_max``; any may be absent).
        gan_grid: a PNG of GAN samples to embed, if the GAN phase ran.
        notes: free-text lines shown near the top of the page.
        recipe: ``(title, verdict lines, figure PNG)`` of a recipe check on this study (``sgdlab recipe``):
            the lines join the notes, the figure is embedded first.

    Raises:
        FileNotFoundError: ``results_dir/runs.parquet`` does not exist.
        TypeError: ``curves`` is not ``{run_key: {metric: [(step, value), ...]}}``.
        ValueError: ``study`` is empty or ``runs.parquet`` has no rows.
    """
    from sgdlab import __version__

    if not isinstance(study, str) or not study.strip():
        raise ValueError(f"study must be a non-empty string, got {study!r}")
    if notes is not None and (not isinstance(notes, (list, tuple)) or not all(isinstance(n, str) for n in notes)):
        raise TypeError(f"notes must be a list of strings, got {notes!r}")
    curves = check_curves(curves)
    data = load_study(results_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    why_pred = data.missing.get("predictions.parquet")
    # regression studies have no accuracy: their summary is the test loss
    final_metric = "test/acc" if any(isinstance(r.get("test/acc"), (int, float)) for r in data.runs) else "test/loss"
    makers: dict[int, Callable[[Path], tuple[Path | None, str | None]]] = {
        1: lambda p: _figure(lambda: ftrain.training_curves(data.runs, curves), p),
        2: lambda p: _figure(lambda: ftrain.edge_of_stability(data.runs, curves), p),
        3: lambda p: (
            (None, data.missing["densities.json"])
            if data.densities is None
            else _figure(lambda: ftrain.spectral_density(data.runs, data.densities), p)
        ),
        4: lambda p: (None, why_pred) if why_pred else _figure(lambda: fgen.predicted_vs_true(data.predictions), p),
        5: lambda p: (None, why_pred) if why_pred else _figure(lambda: fgen.measures_vs_error(data.predictions), p),
        6: lambda p: _figure(lambda: ftrain.summary_bars(data.runs, final_metric), p),
        7: lambda p: _gan_grid(gan_grid, p),
        8: lambda p: _figure(lambda: ftrain.scaling_rules(data.runs, curves), p),
        9: lambda p: (
            (None, data.missing.get("gan_curve.parquet", "no GAN snapshots (set gan.snapshots > 0)"))
            if data.gan_curve is None
            else _figure(lambda: fgen.gan_curve(data.gan_curve), p)
        ),
    }
    entries, written, skipped = [], [], []
    for number, stem, title, caption in FIGURES:
        png, reason = makers[number](out_dir / f"{stem}.png")
        entries.append(FigureEntry(number, title, caption, png, reason))
        if png is not None:
            written.append(png)
        else:
            skipped.append((stem, reason or "no data"))
            if stem in REPORT_FIGURES:  # a declared DVC plot: a file that says why, so the stage's outs exist
                _placeholder(out_dir / f"{stem}.png", title, reason or "no data")

    if recipe is not None:
        title, lines, png = recipe
        notes = [*lines, *(notes or [])]
        if Path(png).is_file():
            dst = out_dir / "recipe_check.png"
            shutil.copyfile(png, dst)
            entries.insert(0, FigureEntry(0, f"Recipe check: {title}", lines[0], dst, None))
            written.append(dst)
        else:
            entries.insert(0, FigureEntry(0, f"Recipe check: {title}", lines[0], None, f"{png} not found"))

    tables = [sweep_summary(data.runs), runs_table(data.runs)]
    missing_tables = []
    ht = hessian_table(data.runs)
    if ht is None:
        missing_tables.append(
            "Hessian at the final checkpoints: no run has hessian/lambda_max "
            "(probe.parquet not found or empty: the probe phase did not run)"
        )
    else:
        tables.append(ht)
    if data.scores:
        tables.append(scores_table(data.scores))
    else:
        missing_tables.append(f"Predictor scores: {data.missing.get('scores.parquet', 'no scores')}")

    n_probed = sum(isinstance(r.get("hessian/lambda_max"), (int, float)) for r in data.runs)
    inputs = [
        ("runs.parquet", f"{len(data.runs)} runs"),
        (
            "probe.parquet",
            f"Hessian at the final checkpoint of {n_probed} runs"
            if n_probed
            else "no Hessian probe results (probe.parquet not found or empty)",
        ),
    ]
    present = {
        "densities.json": lambda: f"spectral densities of {len(data.densities)} runs",
        "predictions.parquet": lambda: f"predictions for {len(data.predictions)} classifiers",
        "scores.parquet": lambda: f"scores of {len(data.scores)} predictors",
    }
    inputs += [(name, data.missing.get(name) or say()) for name, say in present.items()]
    inputs.append(("curves", f"{sum(bool(v) for v in curves.values())} runs with per-step curves"))
    caveats = list(CAVEATS)
    bad = [r for r in data.runs if r.get("status") != "finished"]
    if bad:
        caveats.insert(
            0,
            f"{len(bad)} of {len(data.runs)} runs did not finish (diverged or failed); they are "
            "excluded from every mean and listed with their reason in the Runs table.",
        )
    page = render_page(
        study=study,
        overview=_overview(data),
        inputs=inputs,
        notes=list(notes or []),
        figures=entries,
        tables=tables,
        missing_tables=missing_tables,
        caveats=caveats,
        version=__version__,
    )
    html_path = out_dir / "report.html"
    tmp = html_path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(html_path)
    return ReportResult(html_path, tuple(written), tuple(skipped))
