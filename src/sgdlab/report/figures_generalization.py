"""Figures of the generalization side: predicted vs true test error (the GAN predictor of Zhang, Gupta,
Saunshi, Arora, ICLR 2022, and baselines) and generalization measures vs the generalization gap (the
target Jiang et al. 2020 and the PGDL competition rank measures against).

MAE and Kendall tau shown in the figures are computed from the points drawn (signed tau-b, as
``scipy.stats.kendalltau``), so every number can be checked against its own picture; the official
scores of the scoring phase are in the report's table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sgdlab.report.data import SkipFigure, column, kendall, prefixed_columns
from sgdlab.report.style import optimizer_colors, styled

TRUE = "true/test_err"
PRED_NAMES = {"pred/gan": "GAN synthetic set", "pred/val": "validation set", "pred/train_err": "train error"}
MARKERS = ["o", "s", "^", "D", "v", "P", "*"]


def predictor_label(col: str) -> str:
    """Readable name of a ``pred/<name>`` column."""
    return PRED_NAMES.get(col, col.removeprefix("pred/").replace("_", " "))


def _need_true(predictions: list[dict[str, Any]] | None) -> np.ndarray:
    if not predictions:
        raise SkipFigure("predictions.parquet is missing or empty (the predict phase did not run)")
    true = column(predictions, TRUE)
    if not np.isfinite(true).any():
        raise SkipFigure(f"predictions.parquet has no {TRUE} values")
    return true * 100.0  # fraction -> %


@styled
def predicted_vs_true(predictions: list[dict[str, Any]] | None) -> Figure:
    """Figure 4: predicted vs true test error (%) of every classifier, one marker per predictor
    (``pred/gan`` first, then ``pred/val``, then the others), the y = x line, MAE (percentage points)
    and signed Kendall tau per predictor in the legend."""
    true = _need_true(predictions)
    cols = prefixed_columns(predictions, "pred/")
    if not cols:
        raise SkipFigure("predictions.parquet has no pred/* columns (no error predictor was evaluated)")
    cols.sort(key=lambda c: ({"pred/gan": 0, "pred/val": 1}.get(c, 2), c))
    fig = Figure(figsize=(6.9, 6.6), layout="constrained")
    ax = fig.subplots()
    lo, hi = math.inf, -math.inf
    cmap = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]
    for i, c in enumerate(cols):
        pred = column(predictions, c) * 100.0
        ok = np.isfinite(pred) & np.isfinite(true)
        if not ok.any():
            continue
        mae = float(np.mean(np.abs(pred[ok] - true[ok])))
        tau = kendall(pred[ok], true[ok])
        ax.scatter(
            true[ok],
            pred[ok],
            marker=MARKERS[i % len(MARKERS)],
            s=38,
            color=cmap[i % len(cmap)],
            alpha=0.8,
            edgecolor="black",
            linewidth=0.4,
            label=f"{predictor_label(c)} (n={int(ok.sum())}): MAE {mae:.2f} pp, τ = {tau:+.2f}",
        )
        lo, hi = min(lo, true[ok].min(), pred[ok].min()), max(hi, true[ok].max(), pred[ok].max())
    pad = max((hi - lo) * 0.06, 0.5)
    lims = (max(lo - pad, 0.0), min(hi + pad, 100.0))
    ax.plot(lims, lims, color="black", ls="--", lw=1.1, label="y = x (perfect prediction)")
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("true test error (%)")
    ax.set_ylabel("predicted test error (%)")
    ax.set_title("Predicted vs true test error, one point per classifier")
    ax.legend(loc="upper left", frameon=True, framealpha=0.9)
    return fig


@styled
def measures_vs_error(predictions: list[dict[str, Any]] | None) -> Figure:
    """Figure 5: one panel per ``measure/<name>`` column: the measure (higher = predicted worse) vs true
    generalization gap (test error - train error, on each run's own training data; in percentage
    points), points coloured by optimizer, signed Kendall tau against the gap in each title (Jiang et al.
    2020, "Fantastic Generalization Measures": a good measure has tau near +1)."""
    _need_true(predictions)
    true = column(predictions, "true/gap") * 100
    cols = prefixed_columns(predictions, "measure/")
    if not cols:
        raise SkipFigure("predictions.parquet has no measure/* columns (no generalization measure was evaluated)")
    opts = [str(r.get("optimizer")) for r in predictions]
    colors = optimizer_colors(sorted(set(opts)))
    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig = Figure(figsize=(max(4.6 * ncols + 1.8, 8.0), 3.9 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(cols) :]:
        ax.set_visible(False)
    for ax, c in zip(axes, cols):
        m = column(predictions, c)
        ok = np.isfinite(m) & np.isfinite(true)
        ax.scatter(
            m[ok],
            true[ok],
            c=[colors[o] for o, k in zip(opts, ok) if k],
            s=30,
            alpha=0.85,
            edgecolor="black",
            linewidth=0.4,
        )
        pos = m[ok][m[ok] > 0]
        if ok.sum() and pos.size == ok.sum() and pos.max() / pos.min() > 100:
            ax.set_xscale("log")
        tau = kendall(m[ok], true[ok])
        name = c.removeprefix("measure/")
        ax.set_title(f"{name}\nτ = {tau:+.2f} (n={int(ok.sum())})")
        ax.set_xlabel(name + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("generalization gap (pp)")
        if not ok.any():
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center")
    handles = [Line2D([], [], ls="", marker="o", color=colors[o], mec="black", mew=0.4, label=o) for o in colors]
    fig.legend(handles=handles, loc="outside right upper", title="optimizer")
    fig.suptitle("Generalization measures vs generalization gap\n(τ > 0: a higher measure goes with a larger gap)")
    return fig


@styled
def gan_curve(curve: list[dict[str, Any]] | None, fd_floor: float | None = None) -> Figure:
    """FD to the validation part and the GAN predictor's tau and MAE against GAN training time (seconds)."""
    if not curve:
        raise SkipFigure("no GAN snapshots (set gan.snapshots > 0)")
    rows = sorted(curve, key=lambda r: r["step"])
    if fd_floor is None and rows[0].get("fd_floor") is not None:
        fd_floor = float(rows[0]["fd_floor"])
    t = np.array([float(r["train_seconds"]) for r in rows])
    fd = np.array(
        [float(r["fd_synthetic_vs_val"]) if r.get("fd_synthetic_vs_val") is not None else np.nan for r in rows]
    )
    tau = np.array([float(r["kendall_tau"]) for r in rows])
    err = np.array([100 * float(r["mae"]) for r in rows])
    fig = Figure(figsize=(10, 3.6))
    ax_fd, ax_tau = fig.subplots(1, 2)
    if np.isfinite(fd).any():
        ax_fd.plot(t, fd, "o-", color="C0")
        ax_fd.set_yscale("log")
        if fd_floor is not None and math.isfinite(fd_floor):
            ax_fd.axhline(5 * fd_floor, ls="--", color="0.4", label=f"gate: 5 × floor ({5 * fd_floor:.3g})")
            ax_fd.legend(fontsize=8)
    else:
        ax_fd.text(0.5, 0.5, "no FD (gan.frechet_steps = 0)", ha="center", va="center", transform=ax_fd.transAxes)
    ax_fd.set(xlabel="GAN training time (s)", ylabel="class-conditional FD to validation", title="Sample quality")
    ax_tau.plot(t, tau, "o-", color="C1", label="Kendall τ")
    ax_tau.axhline(0.8, ls=":", color="C1", lw=1)
    ax_tau.set_ylim(-1.05, 1.05)
    ax_tau.set(xlabel="GAN training time (s)", ylabel="Kendall τ (pred vs true test error)", title="GAN predictor")
    ax_mae = ax_tau.twinx()
    ax_mae.plot(t, err, "s--", color="C2", label="MAE (pp)")
    ax_mae.set_ylabel("MAE (percentage points)")
    ax_mae.set_ylim(bottom=0)
    handles = ax_tau.get_legend_handles_labels()[0] + ax_mae.get_legend_handles_labels()[0]
    ax_tau.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    fig.tight_layout()
    return fig
