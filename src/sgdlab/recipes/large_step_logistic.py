"""Recipe ``large_step_logistic``: "From Logistic Regression to the Perceptron Algorithm: Exploring Gradient
Descent with Large Step Sizes" (Tyurin 2024). On linearly separable data, full-batch GD on the logistic loss
reaches zero training error for *any* step size, also very large ones where the loss is no longer monotone
(GD then behaves like the perceptron), and does so in fewer steps than small step sizes.

The model is linear (``mlp`` with no hidden layer: 2 logits, softmax cross-entropy, i.e. logistic regression
on the logit difference) on the ``separable`` dataset (symmetric, margin >= 0.1). Every step is logged
(``log_every: 1``), so ``train/acc`` at step s is the full-batch accuracy of the parameters step s started
from. Steps to separation of a run = the first such s with accuracy 1. Criteria (``recipes/
large_step_logistic.yaml``): every run ends with zero training error (full training set, after the last
step); the largest step size's loss increases at least once between consecutive steps (non-monotone); its
mean steps to separation is at most ``max_speed_ratio`` x the smallest step size's. Reported: steps to
separation and loss increases per step size.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sgdlab.recipes import Recipe, RecipeData, register
from sgdlab.recipes import common as cm
from sgdlab.recipes import stats as st
from sgdlab.recipes.verdict import Criterion, Verdict

CLAIM = (
    "GD on linearly separable data with very large step sizes still reaches zero training error, with a "
    "non-monotone loss, and in fewer steps than small step sizes (Tyurin 2024)"
)


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lrs: tuple[float, ...]  # the step sizes of the sweep, smallest to largest
    max_speed_ratio: float = Field(0.5, gt=0, le=1)
    min_seeds: int = Field(3, ge=1)


def steps_to_separation(points) -> float:
    s, v = st.clean(points)
    hit = np.nonzero(v >= 1.0 - 1e-12)[0]
    return float(s[hit[0]]) if hit.size else math.nan


def loss_increases(points) -> int:
    _, v = st.clean(points)
    return int((np.diff(v) > 0).sum())


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    per = {}
    for lr in c.lrs:
        rows = data.rows(lr=float(lr))
        fin = [r for r in rows if r.get("status") == "finished"]
        cm.enough({f"lr={lr:g}": [1.0] * len(fin)}, c.min_seeds, "finished runs", notes)
        sep = [steps_to_separation(data.curve(r, "train/acc")) for r in fin]
        inc = [loss_increases(data.curve(r, "train/loss")) for r in fin]
        final_acc = [cm.value(r, "train/acc") for r in fin]
        per[lr] = {"rows": rows, "finished": fin, "sep": sep, "inc": inc, "acc": final_acc}
        numbers[f"lr{lr:g}.steps_to_separation"] = float(np.mean(sep)) if sep else math.nan
        numbers[f"lr{lr:g}.loss_increases"] = float(np.mean(inc)) if inc else math.nan
        numbers[f"lr{lr:g}.final_train_acc"] = float(np.mean(final_acc)) if final_acc else math.nan
    n_runs = sum(len(p["rows"]) for p in per.values())
    n_sep = sum(sum(a >= 1.0 - 1e-12 for a in p["acc"]) for p in per.values())
    lo, hi = min(c.lrs), max(c.lrs)
    crits = [
        Criterion(
            "all_separate",
            f"fraction of the {n_runs} runs (step sizes {list(c.lrs)}) ending with zero training error (full set)",
            n_sep / n_runs if n_runs else math.nan,
            ">=",
            1.0,
        ),
        Criterion(
            "largest_non_monotone",
            f"lr={hi:g}: mean number of loss increases between consecutive steps",
            numbers[f"lr{hi:g}.loss_increases"],
            ">=",
            1.0,
        ),
        Criterion(
            "largest_faster",
            f"mean steps to separation at lr={hi:g} over that at lr={lo:g}",
            numbers[f"lr{hi:g}.steps_to_separation"] / numbers[f"lr{lo:g}.steps_to_separation"],
            "<=",
            c.max_speed_ratio,
        ),
        Criterion(
            "smallest_monotone",
            f"lr={lo:g}: mean number of loss increases (small steps: a monotone loss)",
            numbers[f"lr{lo:g}.loss_increases"],
            "<=",
            0.0,
            gating=False,
        ),
    ]
    return Verdict("large_step_logistic", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 3, width=4.8)
    steps = lambda row: lambda s: s  # noqa: E731
    for lr, color in zip(c.lrs, cm.colors(len(c.lrs))):
        rows = data.finished(lr=float(lr))
        for i, r in enumerate(rows):
            s, v = st.clean(data.curve(r, "train/loss"))
            axes[0, 0].plot(s, np.maximum(v, 1e-30), color=color, lw=1, label=f"lr={lr:g}" if i == 0 else None)
        cm.plot_mean(axes[0, 1], data, rows, "train/acc", steps, color, f"lr={lr:g}", transform=lambda y: 1 - y)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_xscale("log")
    axes[0, 0].set_ylabel("train loss (full batch, log scale)")
    axes[0, 0].set_title("logistic loss: non-monotone at large step sizes")
    axes[0, 1].set_xscale("log")
    axes[0, 1].set_ylabel("training error (full batch)")
    axes[0, 1].set_title("training error")
    for ax in axes[0, :2]:
        ax.set_xlabel("steps (full-batch GD, log scale)")
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    lrs = list(c.lrs)
    ax.plot(lrs, [verdict.numbers.get(f"lr{lr:g}.steps_to_separation", math.nan) for lr in lrs], "o-", color="k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size (lr)")
    ax.set_ylabel("steps to zero training error (mean over seeds)")
    ax.set_title("steps to separation")
    cm.suptitle(fig, "GD with large step sizes on separable data (logistic regression)", verdict)
    return fig


register(Recipe("large_step_logistic", Criteria, check, figure, metrics=("train/loss", "train/acc", "test/acc")))
