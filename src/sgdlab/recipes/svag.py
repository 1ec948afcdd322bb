"""Recipe ``svag``: Li, Malladi, Arora 2021, "On the Validity of Modeling SGD with Stochastic Differential
Equations" (NeurIPS). SVAG with variance amplification l runs l x the steps at lr / l with the gradient
noise covariance kept (``sgdlab.optim.own.svag``); as l grows it converges to the SGD SDE. Claim: at a small
lr the curves for l = 1, 2, 4, 8 coincide in SDE time t = steps x lr / l (SGD is already close to its SDE);
at a large lr, l = 1 (SGD itself) departs from the others (the SDE approximation fails for SGD).

Per run, three statistics: the final full-training-set loss, the final test error, and the mean of the
windowed train loss over the SDE-time points of the base run's log (every variant logs at the same SDE
times: the sweep scales the cadences). The criteria (``recipes/svag.yaml``):

* small lr: for each statistic, the l groups coincide within seed noise (Tukey's studentized range below
  its 1 - alpha quantile; :mod:`sgdlab.recipes.stats`);
* large lr: l = 1 and l = max are apart (Tukey HSD pair test) on the mean train loss and on the final test
  error, and l = 1 is the farthest of all l from l = max on the mean train loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sgdlab.recipes import Recipe, RecipeData, register
from sgdlab.recipes import common as cm
from sgdlab.recipes import stats as st
from sgdlab.recipes.verdict import Criterion, Verdict

CLAIM = (
    "SVAG curves for l = 1, 2, 4, 8 coincide in SDE time at a small lr; at a large lr, l = 1 (SGD) departs "
    "from the others (Li, Malladi, Arora 2021)"
)


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    small_lr: float = Field(gt=0)  # base lr where SGD is close to its SDE
    large_lr: float = Field(gt=0)  # base lr where it is not
    ls: tuple[int, ...] = (1, 2, 4, 8)  # l values (1 = the base SGD run); must match sweep.variants
    alpha: float = Field(0.05, gt=0, lt=1)  # Tukey HSD level
    min_seeds: int = Field(3, ge=2)


def l_of(row: dict[str, Any]) -> int:
    """1 for the base SGD run, ``hparams.l`` for an SVAG variant."""
    if str(row.get("optimizer")) == "svag":
        return int(round(float(cm.hparams(row)["l"])))
    return 1


def _grid(data: RecipeData, base_rows: list[dict[str, Any]]) -> np.ndarray:
    """SDE times of the base runs' train-loss log points (the points every variant also logs at)."""
    for r in base_rows:
        s, _ = st.clean(data.curve(r, "train/loss"))
        if s.size:
            return st.sde_time(r)(s)
    return np.zeros(0)


def statistics(data: RecipeData, lr: float, ls: tuple[int, ...]) -> dict[str, dict[int, list[float]]]:
    """``{statistic: {l: [value per seed]}}`` of the finished runs at base lr ``lr``."""
    rows = [r for r in data.finished(lr=float(lr)) if str(r.get("optimizer")) in ("sgd", "svag")]
    rows = [r for r in rows if l_of(r) in ls]
    grid = _grid(data, [r for r in rows if l_of(r) == 1])
    out: dict[str, dict[int, list[float]]] = {"final_train_loss": {}, "final_test_error": {}, "mean_train_loss": {}}
    for l in ls:  # noqa: E741 (the paper's symbol)
        rs = [r for r in rows if l_of(r) == l]
        out["final_train_loss"][l] = [cm.value(r, "train/loss") for r in rs]
        out["final_test_error"][l] = [cm.test_error(r) for r in rs]
        out["mean_train_loss"][l] = [st.curve_mean(data.curve(r, "train/loss"), st.sde_time(r), grid) for r in rs]
    return out


LABELS = {
    "final_train_loss": "final train loss (full training set)",
    "final_test_error": "final test error",
    "mean_train_loss": "train loss averaged over SDE time",
}


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    crits: list[Criterion] = []
    small = statistics(data, c.small_lr, c.ls)
    for stat, groups in small.items():
        crits.append(
            cm.coincide(
                f"small_lr.{stat}",
                f"lr={c.small_lr:g}, {LABELS[stat]} over l={list(c.ls)}",
                groups,
                c.alpha,
                notes,
                c.min_seeds,
                numbers,
            )
        )
    large = statistics(data, c.large_lr, c.ls)
    top = max(c.ls)
    for stat in ("mean_train_loss", "final_test_error"):
        crits.append(
            cm.apart(
                f"large_lr.{stat}",
                f"lr={c.large_lr:g}, {LABELS[stat]}, l=1 vs l={top}",
                large[stat],
                1,
                top,
                c.alpha,
                notes,
                c.min_seeds,
                numbers,
            )
        )
    g = st.group_stats(large["mean_train_loss"])
    d = {l: abs(g.means[l] - g.means[top]) for l in c.ls if l != top}  # noqa: E741
    others = [v for l, v in d.items() if l != 1]  # noqa: E741
    ratio = d.get(1, math.nan) / max(others) if others and max(others) > 0 else math.nan
    for l, v in d.items():  # noqa: E741
        numbers[f"large_lr.departure.{l}"] = v
    crits.append(
        Criterion(
            "large_lr.l1_farthest",
            f"lr={c.large_lr:g}: |mean train loss[l=1] - [l={top}]| over the largest such departure of the "
            f"other l (l = 1 departs most: SGD is the worst approximation of the SDE)",
            ratio,
            ">",
            1.0,
        )
    )
    return Verdict("svag", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(2, 2)
    cols = cm.colors(len(c.ls))
    for row_axes, lr in zip(axes, (c.small_lr, c.large_lr)):
        rows = [r for r in data.finished(lr=float(lr)) if str(r.get("optimizer")) in ("sgd", "svag")]
        for l, color in zip(c.ls, cols):  # noqa: E741
            rs = [r for r in rows if l_of(r) == l]
            cm.plot_mean(row_axes[0], data, rs, "train/loss", st.sde_time, color, f"l={l}")
            cm.plot_mean(row_axes[1], data, rs, "test/acc", st.sde_time, color, f"l={l}", transform=lambda y: 1 - y)
        kind = "small" if lr == c.small_lr else "large"
        row_axes[0].set_title(f"{kind} lr = {lr:g}: train loss")
        row_axes[1].set_title(f"{kind} lr = {lr:g}: test error")
        row_axes[0].set_yscale("log")
        row_axes[0].set_ylabel("train loss (window mean, log scale)")
        row_axes[1].set_ylabel("test error")
        for ax in row_axes:
            ax.set_xlabel("SDE time t = steps × lr / l")
            ax.legend(fontsize=8)
    cm.suptitle(fig, "SVAG (Li, Malladi, Arora 2021): mean over seeds, band = min..max", verdict)
    return fig


register(Recipe("svag", Criteria, check, figure))
