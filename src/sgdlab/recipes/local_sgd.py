"""Recipe ``local_sgd``: Gu, Lyu, Huang, Arora 2023, "Why (and When) does Local SGD Generalize Better than
SGD?" (ICLR); QSR: Gu, Lyu, Arora, Zhang, Huang 2024, "A Quadratic Synchronization Rule for Distributed Deep
Learning" (ICLR).

Local SGD (K workers, H local steps, then averaging) against SGD with the same total batch K x B. The
baseline is Local SGD with H = 1, which *is* SGD with batch K x B (every step averages the K one-step
updates: params - lr x mean_k g_k), so both use the same sampler streams and the same sample budget.
Sharpness = lambda_max of the training loss on the fixed probe subset, probed along training
(``probe.every``) at the averaged parameters.

Gating criteria (``recipes/local_sgd.yaml``): at the small lr after the full run, Local SGD's lambda_max is at
most ``max_sharpness_ratio`` x SGD's and apart from it beyond seed noise (Tukey HSD), and its test error is
not worse beyond seed noise; in the QSR run (cosine lr), H per round grows at least ``min_qsr_growth``-fold
as the lr decays. Reported without gating (the parts of the claim that may not show at quick scale): after
short training (``short_step``) the sharpness advantage is smaller (ratio at least ``min_short_gap`` closer
to 1); at the large lr the advantage disappears (no test-error advantage beyond seed noise, and a sharpness
ratio at or above ``max_sharpness_ratio``).
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
    "with a small lr and long training, Local SGD reduces sharpness faster than SGD with the same total batch and "
    "does not generalize worse; with a large lr or short training the advantage disappears; under QSR, H grows "
    "as the lr decays (Gu et al. 2023, 2024)"
)
LAMBDA = "hessian/lambda_max"


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    small_lr: float = Field(gt=0)
    large_lr: float = Field(gt=0)
    local_steps: int = Field(ge=2)  # H of the Local SGD runs (the baseline has H = 1)
    short_step: int = Field(ge=1)  # "short training": the probe at this step
    max_sharpness_ratio: float = Field(0.8, gt=0, lt=1)
    min_short_gap: float = Field(0.1, ge=0)
    min_qsr_growth: float = Field(4.0, gt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    min_seeds: int = Field(3, ge=2)


def kind(row: dict[str, Any]) -> str:
    """ "qsr" (qsr_alpha > 0), "local" (H > 1) or "sgd" (H = 1) for a local_sgd run; "" otherwise."""
    if row.get("optimizer") != "local_sgd":
        return ""
    hp = cm.hparams(row)
    if float(hp.get("qsr_alpha", 0.0)) > 0:
        return "qsr"
    return "local" if int(hp.get("local_steps", 1)) > 1 else "sgd"


def at_step(points, step: int) -> float:
    s, v = st.clean(points)
    hit = np.nonzero(s == step)[0]
    return float(v[hit[0]]) if hit.size else math.nan


def final(points) -> float:
    _, v = st.clean(points)
    return float(v[-1]) if v.size else math.nan


def _ratio(num: list[float], den: list[float]) -> float:
    a, b = np.nanmean(num) if num else math.nan, np.nanmean(den) if den else math.nan
    return float(a / b) if b and math.isfinite(a) and math.isfinite(b) else math.nan


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    crits: list[Criterion] = []
    lam: dict[tuple[float, str], dict[str, list[float]]] = {}
    err: dict[tuple[float, str], list[float]] = {}
    for lr in (c.small_lr, c.large_lr):
        for k in ("local", "sgd"):
            rows = [r for r in data.finished(lr=float(lr)) if kind(r) == k]
            if k == "local":
                rows = [r for r in rows if int(cm.hparams(r)["local_steps"]) == c.local_steps]
            lam[lr, k] = {
                "final": [final(data.curve(r, LAMBDA)) for r in rows],
                "short": [at_step(data.curve(r, LAMBDA), c.short_step) for r in rows],
            }
            err[lr, k] = [cm.test_error(r) for r in rows]
            numbers[f"lr{lr:g}.{k}.lambda_max"] = float(np.nanmean(lam[lr, k]["final"])) if rows else math.nan
            numbers[f"lr{lr:g}.{k}.lambda_max_short"] = float(np.nanmean(lam[lr, k]["short"])) if rows else math.nan
            numbers[f"lr{lr:g}.{k}.test_error"] = float(np.nanmean(err[lr, k])) if rows else math.nan
    s = c.small_lr
    ratio_long = _ratio(lam[s, "local"]["final"], lam[s, "sgd"]["final"])
    numbers["small_lr.sharpness_ratio"] = ratio_long
    crits.append(
        Criterion(
            "small_lr.sharpness_ratio",
            f"lr={s:g}, end of training: mean lambda_max of Local SGD (H={c.local_steps}) over SGD's (same total batch)",
            ratio_long,
            "<=",
            c.max_sharpness_ratio,
        )
    )
    crits.append(
        cm.apart(
            "small_lr.sharpness_apart",
            f"lr={s:g}, final lambda_max, Local SGD vs SGD",
            {"local": lam[s, "local"]["final"], "sgd": lam[s, "sgd"]["final"]},
            "local",
            "sgd",
            c.alpha,
            notes,
            c.min_seeds,
            numbers,
        )
    )
    g = st.group_stats({"local": err[s, "local"], "sgd": err[s, "sgd"]})
    worse = (g.means["local"] - g.means["sgd"]) / g.se if g.se > 0 else math.nan
    crits.append(
        Criterion(
            "small_lr.not_worse",
            f"lr={s:g}: (test error of Local SGD - SGD's) / (s/sqrt(n)) stays below the Tukey HSD quantile "
            f"q_{{{1 - c.alpha:g}}}(2, dof={g.dof}) (Local SGD does not generalize worse beyond seed noise)",
            worse,
            "<",
            st.q_critical(2, g.dof, c.alpha),
        )
    )
    ratio_short = _ratio(lam[s, "local"]["short"], lam[s, "sgd"]["short"])
    numbers["small_lr.sharpness_ratio_short"] = ratio_short
    crits.append(
        Criterion(
            "short_training.advantage_smaller",
            f"lr={s:g}: lambda_max ratio (Local SGD / SGD) at step {c.short_step} minus the ratio at the end "
            "(short training: a smaller advantage)",
            ratio_short - ratio_long,
            ">=",
            c.min_short_gap,
            gating=False,
        )
    )
    big = c.large_lr
    g = st.group_stats({"local": err[big, "local"], "sgd": err[big, "sgd"]})
    better = (g.means["sgd"] - g.means["local"]) / g.se if g.se > 0 else math.nan
    crits.append(
        Criterion(
            "large_lr.no_test_advantage",
            f"lr={big:g}: (SGD's test error - Local SGD's) / (s/sqrt(n)) below q_{{{1 - c.alpha:g}}}(2, dof={g.dof}) "
            "(no generalization advantage of Local SGD beyond seed noise)",
            better,
            "<",
            st.q_critical(2, g.dof, c.alpha),
            gating=False,
        )
    )
    ratio_big = _ratio(lam[big, "local"]["final"], lam[big, "sgd"]["final"])
    numbers["large_lr.sharpness_ratio"] = ratio_big
    crits.append(
        Criterion(
            "large_lr.no_sharpness_advantage",
            f"lr={big:g}: final lambda_max ratio Local SGD / SGD (no sharpness advantage)",
            ratio_big,
            ">",
            c.max_sharpness_ratio,
            gating=False,
        )
    )
    growth = []
    for r in [r for r in data.finished() if kind(r) == "qsr"]:
        _, h = st.clean(data.curve(r, "local_sgd/H"))
        if h.size:
            growth.append(float(h.max() / h[0]))
            numbers[f"qsr.seed{r.get('seed')}.H_first"] = float(h[0])
            numbers[f"qsr.seed{r.get('seed')}.H_last"] = float(h[-1])
    if not growth:
        notes.append("no QSR run with a local_sgd/H curve")
    crits.append(
        Criterion(
            "qsr.H_grows",
            "QSR run (cosine lr): largest H per round over the first (min over seeds)",
            min(growth) if growth else math.nan,
            ">=",
            c.min_qsr_growth,
        )
    )
    return Verdict("local_sgd", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 4, width=4.2)
    steps = lambda row: lambda s: s  # noqa: E731
    styles = {"local": ("tab:blue", f"Local SGD H={c.local_steps}"), "sgd": ("tab:orange", "SGD (H=1, same batch)")}
    for ax, lr in zip(axes[0][:2], (c.small_lr, c.large_lr)):
        for k, (color, label) in styles.items():
            rows = [r for r in data.finished(lr=float(lr)) if kind(r) == k]
            cm.plot_mean(ax, data, rows, LAMBDA, steps, color, label)
        ax.axvline(c.short_step, color="grey", ls=":", lw=1)
        ax.set_title(f"sharpness, lr = {lr:g}")
        ax.set_xlabel("steps (each: K workers x one minibatch)")
        ax.set_ylabel("λ_max of the training loss (probe subset)")
        ax.legend(fontsize=8)
    ax = axes[0][2]
    for lr, ls in ((c.small_lr, "-"), (c.large_lr, "--")):
        for k, (color, label) in styles.items():
            rows = [r for r in data.finished(lr=float(lr)) if kind(r) == k]
            got = cm.mean_curve(data, rows, "test/acc", steps, transform=lambda y: 1 - y)
            if got is not None:
                ax.plot(got[0], got[1], ls, color=color, label=f"{label}, lr={lr:g}")
    ax.set_title("test error")
    ax.set_xlabel("steps")
    ax.set_ylabel("test error")
    ax.legend(fontsize=7)
    ax = axes[0][3]
    for r in [r for r in data.finished() if kind(r) == "qsr"]:
        s, h = st.clean(data.curve(r, "local_sgd/H"))
        ax.step(s, h, where="post", label=f"seed {r.get('seed')}")
    ax.set_yscale("log")
    ax.set_title("QSR: local steps H per round (cosine lr)")
    ax.set_xlabel("steps")
    ax.set_ylabel("H (log scale)")
    ax.legend(fontsize=8)
    cm.suptitle(fig, "Local SGD vs SGD with the same total batch; QSR", verdict)
    return fig


register(Recipe("local_sgd", Criteria, check, figure, metrics=("train/loss", "test/acc", LAMBDA, "local_sgd/H")))
