"""Recipe ``label_noise``: Blanc, Gupta, Valiant, Valiant 2020; Li, Wang, Arora 2022 ("What Happens after SGD
Reaches Zero Loss?"). On kappa-sparse overparametrized regression (n < d) with the diagonal linear network
f(x) = <u*u - v*v, x>, full-batch label-noise GD drifts along the manifold of interpolating solutions towards
the one with the smallest Hessian trace, which for this model is the sparse ground truth; plain GD from the
same initialisation stops at the interpolating solution nearest to it (dense, near minimum l2 norm).

Measures (per run): the final test MSE (``test/loss``: the mean squared error, not half of it), ||w - w*||_2
from the final checkpoint and the ground truth stored with the data (:func:`measures`), and the Hessian trace
of the training loss at the final checkpoint (Hutchinson, the probe phase). Criteria
(``recipes/label_noise.yaml``): label noise recovers w* (mean test MSE and mean ||w - w*|| below absolute
bounds); GD does not (its test MSE at least ``min_mse_ratio`` x label noise's); label noise ends with at most
``max_trace_ratio`` x GD's trace.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sgdlab.recipes import Recipe, RecipeData, register
from sgdlab.recipes import common as cm
from sgdlab.recipes.verdict import Criterion, Verdict

CLAIM = (
    "label-noise GD on sparse overparametrized regression with a diagonal linear net recovers the sparse ground "
    "truth and ends at a smaller Hessian trace, where GD from the same initialisation does not "
    "(Blanc et al. 2020; Li, Wang, Arora 2022)"
)
NOISY, PLAIN = "label_noise_sgd", "sgd"


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_test_mse: float = Field(gt=0)  # label noise: mean final test MSE at most this
    max_w_error: float = Field(gt=0)  # label noise: mean ||w - w*||_2 at most this
    min_mse_ratio: float = Field(gt=1)  # GD's test MSE at least this x label noise's
    max_trace_ratio: float = Field(gt=0, lt=1)  # label noise's Hessian trace at most this x GD's
    min_seeds: int = Field(3, ge=1)


def measures(study, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{run_key: {w_error, w_l1, support_mass}}`` from each finished run's final checkpoint and w*."""
    from sgdlab.data.parquet import read_meta
    from sgdlab.data.prepare import processed_dir
    from sgdlab.train.checkpoint import load_checkpoint

    meta = read_meta(processed_dir(study.data_root, "sparse_regression") / "train.parquet")
    w_star = np.asarray(meta["extra"]["w_star"], dtype=np.float64)
    support = w_star != 0
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("status") != "finished" or not r.get("checkpoint"):
            continue
        state = load_checkpoint(study.resolve(r["checkpoint"]))["model"]
        u, v = state["u"].double().numpy()[0], state["v"].double().numpy()[0]
        w = u * u - v * v
        out[r["run_key"]] = {
            "w_error": float(np.linalg.norm(w - w_star)),
            "w_l1": float(np.abs(w).sum()),
            "support_mass": float(np.abs(w[support]).sum() / max(np.abs(w).sum(), 1e-300)),
        }
    return out


def _mean(vals: list[float]) -> float:
    v = [x for x in vals if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    per: dict[str, dict[str, list[float]]] = {}
    for opt in (NOISY, PLAIN):
        rows = data.finished(optimizer=opt)
        per[opt] = {
            "test_mse": [cm.value(r, "test/loss") for r in rows],
            "w_error": [data.measures.get(r["run_key"], {}).get("w_error", math.nan) for r in rows],
            "trace": [cm.value(r, "hessian/trace") for r in rows],
        }
        cm.enough({opt: per[opt]["test_mse"]}, c.min_seeds, opt, notes)
        for k, vals in per[opt].items():
            numbers[f"{opt}.{k}"] = _mean(vals)
    ln, gd = numbers, numbers
    crits = [
        Criterion(
            "label_noise.test_mse",
            "label noise recovers w*: mean final test MSE (mean squared error on the test set)",
            ln[f"{NOISY}.test_mse"],
            "<=",
            c.max_test_mse,
        ),
        Criterion(
            "label_noise.w_error",
            "label noise recovers w*: mean ||w - w*||_2 at the final checkpoint",
            ln[f"{NOISY}.w_error"],
            "<=",
            c.max_w_error,
        ),
        Criterion(
            "gd.test_mse_ratio",
            "GD from the same initialisation does not: its mean test MSE over label noise's",
            gd[f"{PLAIN}.test_mse"] / ln[f"{NOISY}.test_mse"] if ln[f"{NOISY}.test_mse"] > 0 else math.nan,
            ">=",
            c.min_mse_ratio,
        ),
        Criterion(
            "trace_ratio",
            "label noise ends flatter: its mean Hessian trace (training loss, final checkpoint) over GD's",
            ln[f"{NOISY}.trace"] / gd[f"{PLAIN}.trace"] if gd[f"{PLAIN}.trace"] > 0 else math.nan,
            "<=",
            c.max_trace_ratio,
        ),
    ]
    return Verdict("label_noise", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 3, width=4.8)
    ax_curve, ax_w, ax_tr = axes[0]
    steps = lambda row: lambda s: s  # noqa: E731
    colors = {NOISY: "tab:green", PLAIN: "tab:red"}
    names = {NOISY: "label-noise GD", PLAIN: "GD"}
    for opt in (NOISY, PLAIN):
        rows = data.finished(optimizer=opt)
        cm.plot_mean(ax_curve, data, rows, "test/loss", steps, colors[opt], names[opt])
    ax_curve.set_yscale("log")
    ax_curve.set_xlabel("steps (full batch)")
    ax_curve.set_ylabel("test MSE (log scale)")
    ax_curve.set_title("test error along training")
    ax_curve.legend(fontsize=8)
    w_star = None
    for i, opt in enumerate((NOISY, PLAIN)):
        rows = sorted(data.finished(optimizer=opt), key=lambda r: r.get("seed", 0))
        if not rows or rows[0]["run_key"] not in data.measures:
            continue
        w = data.measures[rows[0]["run_key"]].get("w")
        if w is not None:
            ax_w.plot(np.arange(len(w)) + 0.2 * i, w, "o", ms=3, color=colors[opt], label=f"{names[opt]} (seed 0)")
            w_star = data.measures[rows[0]["run_key"]].get("w_star", w_star)
    if w_star is not None:
        ax_w.plot(np.arange(len(w_star)), w_star, "kx", ms=6, label="w*")
    ax_w.set_xlabel("coordinate j")
    ax_w.set_ylabel("final w_j = u_j² − v_j²")
    ax_w.set_title("learned weights vs the sparse ground truth")
    ax_w.legend(fontsize=8)
    vals = [verdict.numbers.get(f"{opt}.trace", math.nan) for opt in (NOISY, PLAIN)]
    ax_tr.bar([names[NOISY], names[PLAIN]], vals, color=[colors[NOISY], colors[PLAIN]])
    ax_tr.set_yscale("log")
    ax_tr.set_ylabel("Hessian trace, training loss (log scale)")
    ax_tr.set_title("flatness at the end")
    cm.suptitle(fig, "Label-noise GD on sparse regression (diagonal linear net)", verdict)
    return fig


def _measures_with_w(study, rows):
    """:func:`measures` plus the weight vectors themselves (for the figure; not logged as metrics)."""
    from sgdlab.data.parquet import read_meta
    from sgdlab.data.prepare import processed_dir
    from sgdlab.train.checkpoint import load_checkpoint

    out = measures(study, rows)
    meta = read_meta(processed_dir(study.data_root, "sparse_regression") / "train.parquet")
    for r in rows:
        if r["run_key"] in out:
            state = load_checkpoint(study.resolve(r["checkpoint"]))["model"]
            u, v = state["u"].double().numpy()[0], state["v"].double().numpy()[0]
            out[r["run_key"]]["w"] = (u * u - v * v).tolist()
            out[r["run_key"]]["w_star"] = list(meta["extra"]["w_star"])
    return out


register(
    Recipe(
        "label_noise",
        Criteria,
        check,
        figure,
        measures=_measures_with_w,
        metrics=("train/loss", "test/loss"),
    )
)
