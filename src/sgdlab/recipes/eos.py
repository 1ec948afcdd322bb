"""Recipe ``eos``: Cohen, Kaur, Li, Kolter, Talwalkar 2021, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability" (ICLR); Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability"; Arora, Li, Panigrahi 2022, "Understanding Gradient Descent on Edge of Stability in Deep Learning".

Full-batch runs on a Fashion-MNIST subset, the Hessian probed along training on the whole training set
(``probe.every``). Each optimizer's sharpness is compared with its own stability threshold, as the probe logs
it (``hessian/threshold``): 2/lr for GD, (2 + 2 beta)/lr for heavy-ball momentum, (2 + 2 beta1)/((1 - beta1) lr)
for Adam against its *preconditioned* sharpness (``hessian/precond_lambda_max``), 2 ||g|| / lr for normalized
GD (the GD threshold at its effective lr lr / ||g||). Per optimizer, r = sharpness / threshold at each probe.

Criteria (``recipes/eos.yaml``), for every optimizer: r reaches ``reach`` (it gets to the edge) and, over the
probes after that, the median r is within ``tolerance`` of 1 (it hovers at the edge). For GD also: r at the
first probe is at most ``start_max`` (progressive sharpening: it starts well below the edge), the training
loss keeps falling after the edge (last logged loss below ``fall`` x the loss when the edge is reached) and
non-monotonically (at least one increase between consecutive full-batch steps after the edge).
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
    "full-batch GD sharpens progressively until lambda_max reaches 2/lr and then hovers there while the loss "
    "keeps falling non-monotonically; momentum, Adam (preconditioned sharpness) and normalized GD hover at "
    "their own thresholds (Cohen et al. 2021, 2022; Arora, Li, Panigrahi 2022)"
)
PRECONDITIONED = ("adam", "adamw")


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam", "normalized_gd")
    reach: float = Field(0.9, gt=0, le=1)  # r = sharpness / threshold reaches this: "at the edge"
    tolerance: float = Field(0.1, gt=0, lt=1)  # median r after the edge within 1 +- this
    start_max: float = Field(0.7, gt=0, lt=1)  # GD: r at the first probe at most this (sharpening)
    fall: float = Field(0.9, gt=0, le=1)  # GD: last loss below this x the loss at the edge


def ratio_curve(data: RecipeData, row) -> tuple[np.ndarray, np.ndarray]:
    """(probe steps, sharpness / threshold); the preconditioned sharpness for Adam."""
    key = "hessian/precond_lambda_max" if row.get("optimizer") in PRECONDITIONED else "hessian/lambda_max"
    s1, lam = st.clean(data.curve(row, key))
    s2, thr = st.clean(data.curve(row, "hessian/threshold"))
    common = np.intersect1d(s1, s2)
    lam = lam[np.isin(s1, common)]
    thr = thr[np.isin(s2, common)]
    ok = thr > 0
    return common[ok], lam[ok] / thr[ok]


def edge(steps: np.ndarray, r: np.ndarray, reach: float) -> tuple[float, np.ndarray]:
    """(first probe step with r >= reach or NaN, r at the probes after it)."""
    hit = np.nonzero(r >= reach)[0]
    if not hit.size:
        return math.nan, np.zeros(0)
    return float(steps[hit[0]]), r[hit[0] + 1 :]


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    crits: list[Criterion] = []
    for opt in c.optimizers:
        rows = data.finished(optimizer=opt)
        if not rows:
            notes.append(f"{opt}: no finished run")
        row = rows[0] if rows else None
        steps, r = ratio_curve(data, row) if row else (np.zeros(0), np.zeros(0))
        at, after = edge(steps, r, c.reach)
        med = float(np.median(after)) if after.size else math.nan
        numbers[f"{opt}.edge_step"] = at
        numbers[f"{opt}.median_ratio_after_edge"] = med
        numbers[f"{opt}.within_tolerance_fraction"] = (
            float(np.mean(np.abs(after - 1) <= c.tolerance)) if after.size else math.nan
        )
        numbers[f"{opt}.max_ratio"] = float(r.max()) if r.size else math.nan
        crits.append(
            Criterion(
                f"{opt}.reaches_edge",
                f"{opt}: largest sharpness / threshold over the probes (it reaches the edge)",
                float(r.max()) if r.size else math.nan,
                ">=",
                c.reach,
            )
        )
        crits.append(
            Criterion(
                f"{opt}.hovers",
                f"{opt}: |median of sharpness / threshold over the probes after the edge - 1|",
                abs(med - 1) if math.isfinite(med) else math.nan,
                "<=",
                c.tolerance,
            )
        )
        if opt == "sgd" and row is not None:
            numbers["sgd.start_ratio"] = float(r[0]) if r.size else math.nan
            crits.append(
                Criterion(
                    "sgd.sharpens",
                    "GD: sharpness / (2/lr) at the first probe (progressive sharpening starts below the edge)",
                    numbers["sgd.start_ratio"],
                    "<=",
                    c.start_max,
                )
            )
            s, loss = st.clean(data.curve(row, "train/loss"))
            past = loss[s >= at] if math.isfinite(at) else np.zeros(0)
            numbers["sgd.loss_at_edge"] = float(past[0]) if past.size else math.nan
            numbers["sgd.loss_end"] = float(loss[-1]) if loss.size else math.nan
            numbers["sgd.loss_increases_after_edge"] = float((np.diff(past) > 0).sum()) if past.size else math.nan
            crits.append(
                Criterion(
                    "sgd.loss_keeps_falling",
                    "GD: last train loss over the loss when the edge is reached",
                    numbers["sgd.loss_end"] / numbers["sgd.loss_at_edge"] if past.size else math.nan,
                    "<=",
                    c.fall,
                )
            )
            crits.append(
                Criterion(
                    "sgd.non_monotone",
                    "GD: increases of the full-batch train loss between consecutive steps after the edge",
                    numbers["sgd.loss_increases_after_edge"],
                    ">=",
                    1.0,
                )
            )
    return Verdict("eos", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(2, len(c.optimizers), width=4.2, height=3.2)
    for j, opt in enumerate(c.optimizers):
        ax, axl = axes[0, j], axes[1, j]
        rows = data.finished(optimizer=opt)
        if not rows:
            ax.set_title(f"{opt}: no finished run")
            continue
        row = rows[0]
        key = "hessian/precond_lambda_max" if opt in PRECONDITIONED else "hessian/lambda_max"
        s, lam = st.clean(data.curve(row, key))
        ts, thr = st.clean(data.curve(row, "hessian/threshold"))
        ax.plot(
            s, lam, "o-", ms=3, color="tab:blue", label="preconditioned λ_max" if opt in PRECONDITIONED else "λ_max"
        )
        ax.plot(ts, thr, "--", color="k", label="threshold")
        ax.fill_between(ts, thr * (1 - c.tolerance), thr * (1 + c.tolerance), color="k", alpha=0.08, lw=0)
        ax.set_title(f"{opt}, lr={row.get('lr'):g}")
        ax.set_xlabel("steps (full batch)")
        ax.set_ylabel("sharpness (training loss Hessian)")
        ax.legend(fontsize=7)
        s, loss = st.clean(data.curve(row, "train/loss"))
        axl.plot(s, loss, color="tab:red", lw=1)
        axl.set_yscale("log")
        axl.set_xlabel("steps (full batch)")
        axl.set_ylabel("train loss (log scale)")
    cm.suptitle(fig, "Edge of Stability: sharpness against each optimizer's threshold (band = ±tolerance)", verdict)
    return fig


register(
    Recipe(
        "eos",
        Criteria,
        check,
        figure,
        metrics=("train/loss", "hessian/lambda_max", "hessian/threshold", "hessian/precond_lambda_max"),
    )
)
