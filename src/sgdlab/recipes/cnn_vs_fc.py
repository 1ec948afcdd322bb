"""Recipe ``cnn_vs_fc``: Li, Zhang, Arora 2021, "Why Are Convolutional Nets More Sample-Efficient than
Fully-Connected Nets?" (ICLR). The paper proves a separation for equivariant algorithms (an FC net trained by
SGD from a rotation-invariant initialisation needs Omega(d^2) samples on a task a CNN learns with O(1));
empirically, on image data a CNN reaches a given test error with markedly fewer samples than an FC net of
similar size.

The sweep trains a CNN (DeepOBS 2c2d at ``width`` 0.25: 207k parameters) and an MLP 784-256-10 (204k) on
seeded subsets of one Fashion-MNIST training set (``sweep.train_fractions``), same optimizer and steps. For
each model, the learning curve is the mean test error over seeds against the number of training examples;
n at the target error is read off it by linear interpolation in log n between the two sizes around the
target. Criteria (``recipes/cnn_vs_fc.yaml``): the CNN reaches the target error within the sweep; it needs
at most ``max_sample_ratio`` x the MLP's samples (if the MLP never reaches the target, its n is taken as
larger than the largest size, which bounds the ratio). Reported: the CNN's error is below the MLP's at every
size.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sgdlab.recipes import Recipe, RecipeData, register
from sgdlab.recipes import common as cm
from sgdlab.recipes.verdict import Criterion, Verdict

CLAIM = (
    "a CNN reaches a target test error with markedly fewer training samples than a fully-connected net of "
    "similar size (Li, Zhang, Arora 2021)"
)


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target_error: float = Field(gt=0, lt=1)
    max_sample_ratio: float = Field(0.5, gt=0, le=1)
    cnn: str = "cnn"
    fc: str = "mlp"
    min_seeds: int = Field(3, ge=1)


def learning_curve(data: RecipeData, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean test error, std) over the finished runs of ``model``, sorted by n."""
    by_n: dict[int, list[float]] = {}
    for r in data.finished(model=model):
        by_n.setdefault(int(r["n_train"]), []).append(cm.test_error(r))
    ns = np.asarray(sorted(by_n), dtype=np.float64)
    mean = np.asarray([np.mean(by_n[int(n)]) for n in ns])
    std = np.asarray([np.std(by_n[int(n)], ddof=1) if len(by_n[int(n)]) > 1 else math.nan for n in ns])
    return ns, mean, std


def n_at(ns: np.ndarray, err: np.ndarray, target: float) -> float:
    """The smallest n where the curve reaches ``target`` (log-linear interpolation); NaN if it never does."""
    for k in range(len(ns)):
        if err[k] <= target:
            if k == 0:
                return float(ns[0])
            a, b = err[k - 1], err[k]
            f = (a - target) / (a - b) if a != b else 1.0
            return float(np.exp(np.log(ns[k - 1]) + f * (np.log(ns[k]) - np.log(ns[k - 1]))))
    return math.nan


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    curves = {}
    for m in (c.cnn, c.fc):
        ns, err, _ = learning_curve(data, m)
        curves[m] = (ns, err)
        counts = {}
        for r in data.finished(model=m):
            counts.setdefault(int(r["n_train"]), []).append(1.0)
        cm.enough({f"{m} n={n}": v for n, v in counts.items()}, c.min_seeds, m, notes)
        for n, e in zip(ns, err):
            numbers[f"{m}.test_error.n{int(n)}"] = float(e)
        numbers[f"{m}.n_at_target"] = n_at(ns, err, c.target_error)
    n_cnn, n_fc = numbers[f"{c.cnn}.n_at_target"], numbers[f"{c.fc}.n_at_target"]
    n_max = float(max(curves[c.fc][0])) if len(curves[c.fc][0]) else math.nan
    if math.isnan(n_fc) and not math.isnan(n_cnn):
        ratio = n_cnn / n_max
        notes.append(
            f"the {c.fc} never reaches test error {c.target_error:g} up to n={n_max:g}: "
            f"the ratio is an upper bound (n_cnn / the largest n)"
        )
    else:
        ratio = n_cnn / n_fc if n_fc else math.nan
    numbers["sample_ratio"] = ratio
    common = sorted(set(curves[c.cnn][0]) & set(curves[c.fc][0]))
    below = [
        curves[c.cnn][1][list(curves[c.cnn][0]).index(n)] < curves[c.fc][1][list(curves[c.fc][0]).index(n)]
        for n in common
    ]
    crits = [
        Criterion(
            "cnn_reaches_target",
            f"the {c.cnn}'s smallest n at mean test error <= {c.target_error:g} (it reaches it within the sweep)",
            n_cnn,
            "<=",
            n_max,
        ),
        Criterion(
            "sample_ratio",
            f"n at test error {c.target_error:g}: {c.cnn} over {c.fc} (markedly fewer samples)",
            ratio,
            "<=",
            c.max_sample_ratio,
        ),
        Criterion(
            "cnn_better_everywhere",
            f"fraction of the {len(common)} sizes where the {c.cnn}'s mean test error is below the {c.fc}'s",
            float(np.mean(below)) if below else math.nan,
            ">=",
            1.0,
            gating=False,
        ),
    ]
    return Verdict("cnn_vs_fc", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 1, width=6.5, height=4.6)
    ax = axes[0, 0]
    for m, color in ((c.cnn, "tab:blue"), (c.fc, "tab:red")):
        ns, err, std = learning_curve(data, m)
        ax.errorbar(ns, err, yerr=np.nan_to_num(std), fmt="o-", color=color, capsize=3, label=f"{m} (mean ± std)")
        n_t = verdict.numbers.get(f"{m}.n_at_target", math.nan)
        if math.isfinite(n_t):
            ax.axvline(n_t, color=color, ls=":", lw=1)
    ax.axhline(c.target_error, color="k", ls="--", lw=1, label=f"target test error {c.target_error:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training examples n (log scale)")
    ax.set_ylabel("test error (Fashion-MNIST test subset)")
    ax.legend(fontsize=8)
    cm.suptitle(fig, "CNN vs fully-connected net: learning curves", verdict)
    return fig


register(Recipe("cnn_vs_fc", Criteria, check, figure, metrics=("train/loss", "test/acc")))
