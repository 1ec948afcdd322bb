"""Recipe ``adam_geometry``: Xie, Li et al. 2024, "Adam Exploits l_inf-geometry of Loss Landscape via
Coordinate-wise Adaptivity". Adam's advantage over SGD comes from the coordinate system: in a random rotation
of the same problem it shrinks or disappears, while SGD is rotation-equivariant and does not change.

The problem: a linear classifier (``mlp`` with no hidden layer, zero init) on Fashion-MNIST pixels, whose
coordinates differ strongly in scale (border pixels are nearly constant), against the same classifier on
``Q x`` for a fixed random orthogonal ``Q`` (``rotate_inputs``). From the zero init, SGD on ``Q x`` follows
``W_t Q^T`` exactly (same losses up to rounding); Adam does not. Per run: the train loss averaged over the
run (window means at the log points) and the final full-training-set loss.

Criteria (``recipes/adam_geometry.yaml``): SGD's averaged train loss coincides between the two geometries
(Tukey studentized range, :mod:`sgdlab.recipes.stats`); in the original coordinates Adam is ahead of SGD
beyond seed noise (Tukey HSD); in the rotated coordinates Adam's advantage (SGD's averaged loss minus Adam's)
is at most ``max_rotated_advantage`` x the original one.
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
    "Adam's advantage over SGD shrinks when the same problem is randomly rotated, while SGD is unchanged "
    "(Xie, Li et al. 2024)"
)


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rotated_advantage: float = Field(0.5, ge=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    min_seeds: int = Field(3, ge=2)


def rotated(row) -> bool:
    import json

    kw = row.get("model_kwargs")
    kw = json.loads(kw) if isinstance(kw, str) else (kw or {})
    return kw.get("rotate_inputs") is not None


def mean_loss(data: RecipeData, row) -> float:
    _, v = st.clean(data.curve(row, "train/loss"))
    return float(v.mean()) if v.size else math.nan


def groups(data: RecipeData) -> dict[tuple[str, bool], list[float]]:
    out: dict[tuple[str, bool], list[float]] = {}
    for opt in ("sgd", "adam"):
        for rot in (False, True):
            rows = [r for r in data.finished(optimizer=opt) if rotated(r) == rot]
            out[opt, rot] = [mean_loss(data, r) for r in rows]
    return out


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    g = groups(data)
    for (opt, rot), vals in g.items():
        numbers[f"{opt}.{'rotated' if rot else 'original'}.mean_train_loss"] = (
            float(np.mean(vals)) if vals else math.nan
        )
    crits = [
        cm.coincide(
            "sgd.rotation_invariant",
            "SGD, train loss averaged over the run, original vs rotated inputs",
            {"original": g["sgd", False], "rotated": g["sgd", True]},
            c.alpha,
            notes,
            c.min_seeds,
            numbers,
        ),
        cm.apart(
            "adam.ahead_in_original",
            "original coordinates, train loss averaged over the run, Adam vs SGD",
            {"adam": g["adam", False], "sgd": g["sgd", False]},
            "adam",
            "sgd",
            c.alpha,
            notes,
            c.min_seeds,
            numbers,
        ),
    ]
    adv_o = numbers["sgd.original.mean_train_loss"] - numbers["adam.original.mean_train_loss"]
    adv_r = numbers["sgd.rotated.mean_train_loss"] - numbers["adam.rotated.mean_train_loss"]
    numbers["advantage.original"], numbers["advantage.rotated"] = adv_o, adv_r
    if adv_o <= 0:
        notes.append(f"Adam is not ahead in the original coordinates (advantage {adv_o:.4g})")
    crits.append(
        Criterion(
            "advantage_shrinks",
            "Adam's advantage (SGD's averaged train loss minus Adam's) rotated over original",
            adv_r / adv_o if adv_o > 0 else math.nan,
            "<=",
            c.max_rotated_advantage,
        )
    )
    return Verdict("adam_geometry", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 2, width=5.6)
    steps = lambda row: lambda s: s  # noqa: E731
    styles = {"sgd": "tab:orange", "adam": "tab:blue"}
    for ax, rot in zip(axes[0], (False, True)):
        for opt, color in styles.items():
            rows = [r for r in data.finished(optimizer=opt) if rotated(r) == rot]
            cm.plot_mean(ax, data, rows, "train/loss", steps, color, opt)
        ax.set_yscale("log")
        ax.set_title("rotated inputs Q x" if rot else "original pixel coordinates")
        ax.set_xlabel("steps")
        ax.set_ylabel("train loss (window mean, log scale)")
        ax.legend(fontsize=8)
    cm.suptitle(fig, "Adam vs SGD before and after a random rotation (linear classifier, Fashion-MNIST)", verdict)
    return fig


register(Recipe("adam_geometry", Criteria, check, figure, metrics=("train/loss", "test/acc")))
