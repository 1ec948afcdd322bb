"""Recipes ``linear_scaling`` and ``sqrt_scaling``: SDE scaling rules across batch sizes, curves in epochs.

* ``linear_scaling`` (Goyal et al. 2017; the SGD SDE, Li, Tai, E 2017/2019): SGD with batch kappa x B and
  lr kappa x lr, same epochs. Claim: the curves coincide while kappa x lr is small; beyond, the rule breaks.
  Criteria (``recipes/linear_scaling.yaml``): the kappas with kappa x lr <= ``small_kappa_lr`` coincide within
  seed noise (Tukey studentized range, :mod:`sgdlab.recipes.stats`) on the final train loss, the final test
  error and the train loss averaged over epochs; the largest kappa is apart from kappa = 1 (Tukey HSD pair
  test) on the averaged train loss; the departure from kappa = 1 grows with kappa (Kendall tau). Reported:
  the smallest kappa apart from kappa = 1 ("where the rule breaks") and its kappa x lr.
* ``sqrt_scaling`` (Malladi, Lyu, Panigrahi, Arora 2022): Adam and RMSprop with batch kappa x B under the
  square-root rule (lr x sqrt(kappa), 1 - beta x kappa, eps / sqrt(kappa)) against no rescaling
  (``batch_only``) and the linear rule (``linear_lr``). Criterion, per optimizer, on the final test error
  and on the train loss averaged over epochs: the departure of the square-root runs from the base run (the
  largest |mean[kappa] - mean[1]| over kappa) is at most ``ratio`` x the smaller departure of the two
  baselines.
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

LABELS = {
    "final_train_loss": "final train loss (full training set)",
    "final_test_error": "final test error",
    "mean_train_loss": "train loss averaged over epochs",
}


def rule_of(row: dict[str, Any]) -> str:
    """The variant's rule ("base" for the base run): variant ``sqrtx4`` -> ``sqrt``."""
    v = row.get("variant")
    return "base" if v in (None, "base") else str(v).rsplit("x", 1)[0]


def kappa_of(row: dict[str, Any], base_batch: int) -> int:
    return int(round(float(row["batch_size"]) / base_batch))


def _grid(data: RecipeData, base_rows: list[dict[str, Any]]) -> np.ndarray:
    """Epochs of the base runs' train-loss log points (every variant logs at the same epochs)."""
    for r in base_rows:
        s, _ = st.clean(data.curve(r, "train/loss"))
        if s.size:
            return st.epochs(r)(s)
    return np.zeros(0)


def statistics(data: RecipeData, rows: list[dict[str, Any]], grid: np.ndarray) -> dict[str, list[float]]:
    return {
        "final_train_loss": [cm.value(r, "train/loss") for r in rows],
        "final_test_error": [cm.test_error(r) for r in rows],
        "mean_train_loss": [st.curve_mean(data.curve(r, "train/loss"), st.epochs(r), grid) for r in rows],
    }


def by_kappa(data: RecipeData, optimizer: str, rule: str, base_batch: int, kappas) -> dict[str, dict[int, list]]:
    """``{statistic: {kappa: [value per seed]}}``: the base runs (kappa = 1) and ``rule``'s variants."""
    rows = [r for r in data.runs if r.get("status") == "finished"]
    base = [r for r in rows if rule_of(r) == "base" and r.get("optimizer") == optimizer]
    base = [r for r in base if int(r["batch_size"]) == base_batch]
    base_keys = {r["run_key"] for r in base}
    var = [r for r in rows if rule_of(r) == rule and r.get("base_key") in base_keys]
    grid = _grid(data, base)
    out: dict[str, dict[int, list]] = {k: {} for k in LABELS}
    for kappa in kappas:
        rs = base if kappa == 1 else [r for r in var if kappa_of(r, base_batch) == kappa]
        for stat, vals in statistics(data, rs, grid).items():
            out[stat][kappa] = vals
    return out


# ------------------------------------------------------------------------------------- linear scaling
LINEAR_CLAIM = (
    "SGD with batch kappa*B and lr kappa*lr gives the same curves in epochs while kappa*lr is small; the rule "
    "breaks at large kappa*lr (Goyal et al. 2017; Li, Tai, E 2017)"
)


class LinearCriteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_lr: float = Field(gt=0)
    base_batch: int = Field(ge=1)
    kappas: tuple[int, ...]  # including 1 (the base run); must match sweep.variants
    small_kappa_lr: float = Field(gt=0)  # kappa * base_lr at or below this: the curves must coincide
    min_tau: float = Field(0.6, ge=-1, le=1)  # Kendall tau of (kappa, departure) at least this
    alpha: float = Field(0.05, gt=0, lt=1)
    min_seeds: int = Field(3, ge=2)


def linear_check(data: RecipeData, c: LinearCriteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    crits: list[Criterion] = []
    stats_ = by_kappa(data, "sgd", "linear", c.base_batch, c.kappas)
    small = [k for k in c.kappas if k * c.base_lr <= c.small_kappa_lr * (1 + 1e-9)]
    for stat, groups in stats_.items():
        crits.append(
            cm.coincide(
                f"small.{stat}",
                f"kappa in {small} (kappa*lr <= {c.small_kappa_lr:g}), {LABELS[stat]}",
                {k: groups[k] for k in small},
                c.alpha,
                notes,
                c.min_seeds,
                numbers,
            )
        )
    groups = stats_["mean_train_loss"]
    top = max(c.kappas)
    crits.append(
        cm.apart(
            "largest.mean_train_loss",
            f"kappa={top} (kappa*lr={top * c.base_lr:g}) vs kappa=1, {LABELS['mean_train_loss']}",
            groups,
            1,
            top,
            c.alpha,
            notes,
            c.min_seeds,
            numbers,
        )
    )
    g = st.group_stats(groups)
    dep = {k: abs(g.means[k] - g.means[1]) for k in c.kappas if k != 1}
    for k, v in dep.items():
        numbers[f"departure.{k}"] = v
    from scipy.stats import kendalltau

    ks = sorted(dep)
    tau = float(kendalltau(ks, [dep[k] for k in ks]).statistic) if len(ks) > 1 else math.nan
    crits.append(
        Criterion(
            "departure_grows",
            f"Kendall tau between kappa and |mean train loss[kappa] - [1]| (averaged over epochs) over kappa in {ks}",
            tau,
            ">=",
            c.min_tau,
        )
    )
    crit_q = st.q_critical(g.k, g.dof, c.alpha)
    broken = [k for k in ks if st.studentized_gap(g, k, 1) >= crit_q]
    numbers["breaks_at_kappa"] = float(broken[0]) if broken else math.nan
    numbers["breaks_at_kappa_lr"] = broken[0] * c.base_lr if broken else math.nan
    notes.append(
        f"the rule breaks (Tukey HSD vs kappa=1 on the averaged train loss) first at kappa={broken[0]} "
        f"(kappa*lr={broken[0] * c.base_lr:g})"
        if broken
        else f"no kappa up to {top} is apart from kappa=1 on the averaged train loss"
    )
    return Verdict("linear_scaling", LINEAR_CLAIM, tuple(crits), numbers, tuple(notes))


def linear_figure(data: RecipeData, c: LinearCriteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 3, width=5.0)
    rows = [r for r in data.runs if r.get("status") == "finished" and r.get("optimizer") == "sgd"]
    base_keys = {r["run_key"] for r in rows if rule_of(r) == "base" and int(r["batch_size"]) == c.base_batch}
    for k, color in zip(c.kappas, cm.colors(len(c.kappas))):
        rs = (
            [r for r in rows if r["run_key"] in base_keys]
            if k == 1
            else [
                r
                for r in rows
                if rule_of(r) == "linear" and r.get("base_key") in base_keys and kappa_of(r, c.base_batch) == k
            ]
        )
        label = f"κ={k}: B={k * c.base_batch}, lr={k * c.base_lr:g}"
        cm.plot_mean(axes[0, 0], data, rs, "train/loss", st.epochs, color, label)
        cm.plot_mean(axes[0, 1], data, rs, "test/acc", st.epochs, color, label, transform=lambda y: 1 - y)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_ylabel("train loss (window mean, log scale)")
    axes[0, 1].set_ylabel("test error")
    for ax in axes[0, :2]:
        ax.set_xlabel("epochs (steps × batch size / training examples)")
        ax.legend(fontsize=7)
    g = st.group_stats(by_kappa(data, "sgd", "linear", c.base_batch, c.kappas)["mean_train_loss"])
    ks = [k for k in c.kappas if k != 1]
    qs = [st.studentized_gap(g, k, 1) for k in ks]
    ax = axes[0, 2]
    ax.plot([k * c.base_lr for k in ks], [max(q, 1e-2) for q in qs], "o-", color="k", label="|Δ| / (s/√n) vs κ=1")
    ax.axhline(st.q_critical(g.k, g.dof, c.alpha), color="r", ls="--", label=f"Tukey q_{{{1 - c.alpha:g}}}")
    ax.axvline(c.small_kappa_lr, color="grey", ls=":", label="'small κ·lr' bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("κ × lr (the scaled run's lr)")
    ax.set_ylabel("departure of the averaged train loss (seed-noise units)")
    ax.legend(fontsize=7)
    cm.suptitle(fig, "Linear scaling rule: mean over seeds, band = min..max", verdict)
    return fig


register(Recipe("linear_scaling", LinearCriteria, linear_check, linear_figure))


# ------------------------------------------------------------------------------- square-root scaling
SQRT_CLAIM = (
    "Adam and RMSprop under the square-root scaling rule stay aligned in epochs across batch sizes, markedly "
    "better than with no rescaling or with the linear rule (Malladi, Lyu, Panigrahi, Arora 2022)"
)
BASELINES = ("batch_only", "linear_lr")


class SqrtCriteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizers: tuple[str, ...] = ("adam", "rmsprop")
    base_batch: int = Field(ge=1)
    kappas: tuple[int, ...]  # including 1
    ratio: float = Field(0.5, gt=0, le=1)  # sqrt departure <= ratio x the smaller baseline departure
    min_seeds: int = Field(3, ge=2)


def departure(groups: dict[int, list[float]]) -> float:
    """max over kappa != 1 of |mean[kappa] - mean[1]| (NaN if a group is empty)."""
    g = st.group_stats(groups)
    d = [abs(m - g.means[1]) for k, m in g.means.items() if k != 1]
    return max(d) if d and all(math.isfinite(x) for x in d) and math.isfinite(g.means[1]) else math.nan


def sqrt_check(data: RecipeData, c: SqrtCriteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    crits: list[Criterion] = []
    for opt in c.optimizers:
        per_rule = {rule: by_kappa(data, opt, rule, c.base_batch, c.kappas) for rule in ("sqrt", *BASELINES)}
        for rule, s in per_rule.items():
            cm.enough(s["final_test_error"], c.min_seeds, f"{opt} {rule}", notes)
        for stat in ("final_test_error", "mean_train_loss"):
            d = {rule: departure(s[stat]) for rule, s in per_rule.items()}
            for rule, v in d.items():
                numbers[f"{opt}.{stat}.departure.{rule}"] = v
            g = st.group_stats(per_rule["sqrt"][stat])
            numbers[f"{opt}.{stat}.seed_std"] = g.pooled_std
            best = min(d[b] for b in BASELINES)
            crits.append(
                Criterion(
                    f"{opt}.{stat}",
                    f"{opt}, {LABELS[stat]}: departure of the sqrt-rule runs from kappa=1 (max over kappa in "
                    f"{list(c.kappas[1:])}) over the smaller departure of no rescaling / the linear rule",
                    d["sqrt"] / best if best > 0 else math.nan,
                    "<=",
                    c.ratio,
                )
            )
    return Verdict("sqrt_scaling", SQRT_CLAIM, tuple(crits), numbers, tuple(notes))


def sqrt_figure(data: RecipeData, c: SqrtCriteria, verdict: Verdict):
    rules = ("sqrt", *BASELINES)
    titles = {"sqrt": "square-root rule", "batch_only": "no rescaling", "linear_lr": "linear rule (lr × κ)"}
    fig, axes = cm.new_figure(len(c.optimizers), len(rules), width=4.6)
    for axrow, opt in zip(axes, c.optimizers):
        rows = [r for r in data.runs if r.get("status") == "finished" and r.get("optimizer") == opt]
        base = [r for r in rows if rule_of(r) == "base" and int(r["batch_size"]) == c.base_batch]
        keys = {r["run_key"] for r in base}
        for ax, rule in zip(axrow, rules):
            for k, color in zip(c.kappas, cm.colors(len(c.kappas))):
                rs = (
                    base
                    if k == 1
                    else [
                        r
                        for r in data.runs
                        if r.get("status") == "finished"
                        and rule_of(r) == rule
                        and r.get("base_key") in keys
                        and kappa_of(r, c.base_batch) == k
                    ]
                )
                cm.plot_mean(ax, data, rs, "train/loss", st.epochs, color, f"κ={k} (B={k * c.base_batch})")
            ax.set_yscale("log")
            ax.set_title(f"{opt}: {titles[rule]}")
            ax.set_xlabel("epochs (steps × batch size / training examples)")
            ax.set_ylabel("train loss (window mean, log scale)")
            ax.legend(fontsize=7)
    cm.suptitle(fig, "Square-root scaling vs no rescaling vs linear: mean over seeds, band = min..max", verdict)
    return fig


register(Recipe("sqrt_scaling", SqrtCriteria, sqrt_check, sqrt_figure))
