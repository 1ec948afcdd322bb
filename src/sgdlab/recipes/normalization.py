"""Recipe ``normalization``: Lyu, Li, Arora 2022, "Understanding the Generalization Benefit of Normalization
Layers: Sharpness Reduction" (NeurIPS). Full-batch GD with weight decay on a scale-invariant net reduces the
*spherical* sharpness along its trajectory, and its weight norm settles at an equilibrium; the same net without
normalization does not reduce its sharpness.

The nets: ``mlp`` with LayerNorm (no affine) after every hidden layer and a fixed random output layer
(``norm: layer, train_last_layer: false``), so that ``L(c w) = L(w)`` for every ``c > 0`` in all trainable
parameters, as the paper builds its scale-invariant nets; the control is the same MLP without the LayerNorms
(and its hidden biases). Each is trained by full-batch GD (``sgd``) with and without weight decay.

Spherical sharpness, as the paper defines it: lambda_max of the Hessian of the loss at the normalised weights
``w / ||w||`` -- scale-invariant, so it measures the point on the sphere and not the radius. The probe logs it as
``hessian/spherical_lambda_max`` = ``||w||^2 lambda_max(H(w))`` (exact for a scale-invariant loss; see
:func:`sgdlab.hessian.spherical_factor`). The net without normalization has no sphere (its loss changes with
the radius), so its sharpness is the plain ``hessian/lambda_max``. The Hessian is the loss's, without the
weight-decay term (which adds ``wd`` to every eigenvalue).

Per run, with the probes split into ``windows`` equal consecutive windows (by probe count): *reduction* = the
last window's mean sharpness / the largest window mean (1 = never below its peak). From the loop's
``weights/norm`` curve: the *late range* = (max - min) / mean of ``||w||`` over the last quarter of the run's
log points, and the *early change* = relative change of ``||w||`` over the first quarter.

Criteria (``recipes/normalization.yaml``), for every seed: the normalized net with weight decay reduces its
spherical sharpness (reduction <= ``max_reduction``) and its weight norm equilibrates (late range <=
``max_late_range``); the net without normalization, with the same weight decay and lr, does not reduce its
sharpness (reduction >= ``min_plain_reduction``). Reported, not gating: the normalized net *without* weight decay
does not reduce its spherical sharpness either (reduction >= ``min_plain_reduction``) and its norm only grows;
the normalized net with weight decay trains at the edge of stability, ``lr lambda_max(H(w)) / 2`` over its last
window within ``edge_tolerance`` of 1 (the mechanism of the paper's analysis).
"""

from __future__ import annotations

import json
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sgdlab.recipes import Recipe, RecipeData, register
from sgdlab.recipes import common as cm
from sgdlab.recipes import stats as st
from sgdlab.recipes.verdict import Criterion, Verdict

CLAIM = (
    "full-batch GD with weight decay on a scale-invariant (normalized) net reduces the spherical sharpness "
    "lambda_max(H(w/||w||)) along training and its weight norm equilibrates; without normalization the "
    "sharpness is not reduced (Lyu, Li, Arora 2022)"
)
GROUPS = {
    "normalized_wd": (True, True),
    "normalized_no_wd": (True, False),
    "plain_wd": (False, True),
    "plain_no_wd": (False, False),
}


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: int = Field(5, ge=2)
    max_reduction: float = Field(0.7, gt=0, lt=1)
    min_plain_reduction: float = Field(0.9, gt=0, le=1)
    max_late_range: float = Field(0.1, gt=0, lt=1)
    edge_tolerance: float = Field(0.2, gt=0, lt=1)


def normalized(row) -> bool:
    kw = row.get("model_kwargs")
    kw = json.loads(kw) if isinstance(kw, str) else (kw or {})
    return kw.get("norm") is not None


def decayed(row) -> bool:
    return float(cm.hparams(row).get("weight_decay", 0.0) or 0.0) > 0


def group_rows(data: RecipeData) -> dict[str, list[dict]]:
    rows = data.finished(optimizer="sgd")
    return {g: [r for r in rows if (normalized(r), decayed(r)) == key] for g, key in GROUPS.items()}


def sharpness_curve(data: RecipeData, row) -> tuple[np.ndarray, np.ndarray]:
    """(probe steps, sharpness): spherical for a normalized net, plain lambda_max otherwise."""
    key = "hessian/spherical_lambda_max" if normalized(row) else "hessian/lambda_max"
    return st.clean(data.curve(row, key))


def reduction(values: np.ndarray, windows: int) -> float:
    """Last window mean / largest window mean, the probes split into ``windows`` equal consecutive windows."""
    if values.size < windows:
        return math.nan
    means = [float(w.mean()) for w in np.array_split(values, windows)]
    return means[-1] / max(means) if max(means) > 0 else math.nan


def norm_stats(data: RecipeData, row) -> tuple[float, float]:
    """(late range, early change) of ||w|| over the last / first quarter of the run's log points."""
    _, v = st.clean(data.curve(row, "weights/norm"))
    if v.size < 8:
        return math.nan, math.nan
    q = v.size // 4
    late, early = v[-q:], v[: q + 1]
    return float((late.max() - late.min()) / late.mean()), float((early[-1] - early[0]) / early[0])


def edge_ratio(data: RecipeData, row, windows: int) -> float:
    """Median over the last window of lambda_max(H(w)) / threshold (2/lr for GD)."""
    s1, lam = st.clean(data.curve(row, "hessian/lambda_max"))
    s2, thr = st.clean(data.curve(row, "hessian/threshold"))
    common = np.intersect1d(s1, s2)
    if common.size < windows:
        return math.nan
    r = lam[np.isin(s1, common)] / thr[np.isin(s2, common)]
    return float(np.median(np.array_split(r, windows)[-1]))


def per_run(data: RecipeData, c: Criteria) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for g, rows in group_rows(data).items():
        out[g] = []
        for row in rows:
            steps, sharp = sharpness_curve(data, row)
            late_range, early_change = norm_stats(data, row)
            _, norm = st.clean(data.curve(row, "weights/norm"))
            out[g].append(
                {
                    "seed": float(row.get("seed", math.nan)),
                    "reduction": reduction(sharp, c.windows),
                    "sharpness.first": float(sharp[0]) if sharp.size else math.nan,
                    "sharpness.last": float(sharp[-1]) if sharp.size else math.nan,
                    "norm.first": float(norm[0]) if norm.size else math.nan,
                    "norm.last": float(norm[-1]) if norm.size else math.nan,
                    "norm.late_range": late_range,
                    "norm.early_change": early_change,
                    "edge_ratio": edge_ratio(data, row, c.windows),
                }
            )
    return out


def _worst(runs: list[dict[str, float]], key: str, fn) -> float:
    vals = [r[key] for r in runs]
    if not vals or any(not math.isfinite(v) for v in vals):
        return math.nan  # a missing group or an unmeasured run fails
    return float(fn(vals))


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    runs = per_run(data, c)
    for g, rs in runs.items():
        if not rs:
            notes.append(f"{g}: no finished run")
        for r in rs:
            for k, v in r.items():
                if k != "seed":
                    numbers[f"{g}.seed{int(r['seed']) if math.isfinite(r['seed']) else '?'}.{k}"] = v
    nwd, nno, pwd = runs["normalized_wd"], runs["normalized_no_wd"], runs["plain_wd"]
    crits = [
        Criterion(
            "normalized_wd.spherical_reduced",
            f"normalized net + weight decay: spherical sharpness, last window mean / peak window mean "
            f"({c.windows} windows), worst seed",
            _worst(nwd, "reduction", max),
            "<=",
            c.max_reduction,
        ),
        Criterion(
            "normalized_wd.norm_equilibrates",
            "normalized net + weight decay: (max - min) / mean of ||w|| over the last quarter, worst seed",
            _worst(nwd, "norm.late_range", max),
            "<=",
            c.max_late_range,
        ),
        Criterion(
            "plain_wd.sharpness_not_reduced",
            "same net without normalization, same lr and weight decay: lambda_max, last window mean / peak "
            "window mean, worst seed",
            _worst(pwd, "reduction", min),
            ">=",
            c.min_plain_reduction,
        ),
        Criterion(
            "normalized_no_wd.spherical_not_reduced",
            "normalized net without weight decay: spherical sharpness, last window / peak window, worst seed",
            _worst(nno, "reduction", min),
            ">=",
            c.min_plain_reduction,
            gating=False,
        ),
        Criterion(
            "normalized_wd.at_edge",
            "normalized net + weight decay: |median of lambda_max(H(w)) / (2/lr) over the last window - 1|, worst seed",
            _worst(nwd, "edge_ratio", lambda v: max(abs(x - 1) for x in v)),
            "<=",
            c.edge_tolerance,
            gating=False,
        ),
    ]
    growth = [r["norm.last"] / r["norm.first"] for r in nno if r["norm.first"] > 0]
    if growth:
        numbers["normalized_no_wd.norm_growth"] = float(min(growth))
    return Verdict("normalization", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(2, 2, width=5.4)
    rows = group_rows(data)
    steps = lambda row: lambda s: s  # noqa: E731
    style = {
        "normalized_wd": ("tab:blue", "LayerNorm, wd"),
        "normalized_no_wd": ("tab:cyan", "LayerNorm, no wd"),
        "plain_wd": ("tab:red", "no norm, wd"),
        "plain_no_wd": ("tab:orange", "no norm, no wd"),
    }
    panels = (
        (axes[0][0], ("normalized_wd", "normalized_no_wd"), "hessian/spherical_lambda_max", "spherical sharpness"),
        (axes[0][1], ("plain_wd", "plain_no_wd"), "hessian/lambda_max", "lambda_max"),
    )
    for ax, groups, metric, label in panels:
        for g in groups:
            cm.plot_mean(ax, data, rows[g], metric, steps, style[g][0], style[g][1])
        ax.set_yscale("log")
        ax.set_xlabel("steps (full-batch GD)")
        ax.set_ylabel(f"{label} (log scale)")
        ax.legend(fontsize=8)
    axes[0][0].set_title("normalized net: lambda_max of H at w/||w||")
    axes[0][1].set_title("net without normalization: lambda_max of H at w")
    thr = [r for r in rows["plain_wd"] + rows["plain_no_wd"]]
    if thr:
        _, t = st.clean(data.curve(thr[0], "hessian/threshold"))
        if t.size:
            axes[0][1].axhline(float(t[0]), color="grey", ls="--", lw=1, label="2/lr")
            axes[0][1].legend(fontsize=8)
    for ax, metric, label in (
        (axes[1][0], "weights/norm", "||w|| (trainable parameters)"),
        (axes[1][1], "train/loss", "train loss (log scale)"),
    ):
        for g, (color, name) in style.items():
            cm.plot_mean(ax, data, rows[g], metric, steps, color, name)
        ax.set_xlabel("steps (full-batch GD)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[1][1].set_yscale("log")
    axes[1][0].set_title("weight norm")
    axes[1][1].set_title("training loss")
    cm.suptitle(fig, "Normalization + weight decay reduce spherical sharpness (Fashion-MNIST subset)", verdict)
    return fig


register(
    Recipe(
        "normalization",
        Criteria,
        check,
        figure,
        metrics=(
            "train/loss",
            "weights/norm",
            "hessian/lambda_max",
            "hessian/spherical_lambda_max",
            "hessian/threshold",
            "test/acc",
        ),
    )
)
