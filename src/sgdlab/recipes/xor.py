"""Recipe ``xor``: Glasgow 2023, "SGD Finds then Tunes Features in Two-Layer Neural Networks with near-Optimal
Sample Complexity: A Case Study in the XOR problem" (ICLR 2024). Minibatch SGD on a two-layer ReLU net learns
XOR on the Boolean hypercube (x uniform on {-1, +1}^d, y = -x_i x_j) from n of order d polylog d samples: it
first *finds* the two relevant coordinates (the first-layer weights concentrate on x_i, x_j) and then tunes.

The sweep trains one net per training-set size (``sweep.train_fractions`` of one XOR training set) and seed.
Per run: the final test accuracy, the fraction of the first layer's squared norm on coordinates i and j at
the final checkpoint (:func:`measures`; 2/d at an isotropic init), and along training the model-logged
``features/top2_fraction`` (the share on the two largest input coordinates, whichever they are). Criteria
(``recipes/xor.yaml``): at the largest n the net generalizes (mean test accuracy >= ``min_acc``) and its
first layer concentrates on (i, j) (mean fraction >= ``min_fraction``); at the smallest n it does not
generalize (mean test accuracy <= ``max_acc_small``), so the sweep shows the transition. Reported: the
smallest n with mean test accuracy >= 0.9 and that n over d log d.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sgdlab.recipes import Recipe, RecipeData, register
from sgdlab.recipes import common as cm
from sgdlab.recipes.verdict import Criterion, Verdict

CLAIM = (
    "a two-layer ReLU net trained by SGD learns XOR on the hypercube from order d polylog d samples, its "
    "first-layer weights concentrating on the two relevant coordinates; a sample-size sweep shows the "
    "transition (Glasgow 2023)"
)


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_acc: float = Field(0.95, gt=0.5, le=1)  # largest n: mean test accuracy at least
    min_fraction: float = Field(0.5, gt=0, le=1)  # largest n: mean share of first-layer norm on (i, j)
    max_acc_small: float = Field(0.7, gt=0.5, lt=1)  # smallest n: mean test accuracy at most
    min_seeds: int = Field(3, ge=1)


def measures(study, rows):
    """``{run_key: {ij_fraction}}``: the share of ||W||_F^2 on columns i, j at each run's final checkpoint."""
    from sgdlab.train.checkpoint import load_checkpoint

    xor = study.cfg.data.xor
    out = {}
    for r in rows:
        if r.get("status") != "finished" or not r.get("checkpoint"):
            continue
        w = load_checkpoint(study.resolve(r["checkpoint"]))["model"]["w"].double()  # (m, d)
        col = (w**2).sum(0)
        out[r["run_key"]] = {"ij_fraction": float((col[xor.i] + col[xor.j]) / col.sum()), "d": float(w.shape[1])}
    return out


def by_n(data: RecipeData):
    groups: dict[int, list[dict]] = {}
    for r in data.finished():
        groups.setdefault(int(r["n_train"]), []).append(r)
    return dict(sorted(groups.items()))


def check(data: RecipeData, c: Criteria) -> Verdict:
    notes: list[str] = []
    numbers: dict[str, float] = {}
    groups = by_n(data)
    cm.enough({f"n={n}": [1.0] * len(rs) for n, rs in groups.items()}, c.min_seeds, "finished runs", notes)
    acc, frac = {}, {}
    for n, rs in groups.items():
        acc[n] = float(np.mean([cm.value(r, "test/acc") for r in rs]))
        frac[n] = float(np.mean([data.measures.get(r["run_key"], {}).get("ij_fraction", math.nan) for r in rs]))
        numbers[f"n{n}.test_acc"] = acc[n]
        numbers[f"n{n}.ij_fraction"] = frac[n]
    d = next((m["d"] for m in data.measures.values() if "d" in m), math.nan)
    ok = [n for n in groups if acc[n] >= 0.9]
    n90 = float(min(ok)) if ok else math.nan
    numbers["n_at_acc_0.9"] = n90
    numbers["n_at_acc_0.9_over_d_log_d"] = n90 / (d * math.log(d)) if d and math.isfinite(d) else math.nan
    numbers["init_fraction_2_over_d"] = 2.0 / d if d else math.nan
    lo, hi = (min(groups), max(groups)) if groups else (None, None)
    crits = [
        Criterion("largest_n.test_acc", f"n={hi}: mean test accuracy", acc.get(hi, math.nan), ">=", c.min_acc),
        Criterion(
            "largest_n.ij_fraction",
            f"n={hi}: mean share of the first layer's squared norm on coordinates (i, j) (2/d = {2 / d:.3g} at init)"
            if d == d
            else f"n={hi}: share on (i, j)",
            frac.get(hi, math.nan),
            ">=",
            c.min_fraction,
        ),
        Criterion(
            "smallest_n.fails",
            f"n={lo}: mean test accuracy (too few samples: no generalization)",
            acc.get(lo, math.nan),
            "<=",
            c.max_acc_small,
        ),
    ]
    return Verdict("xor", CLAIM, tuple(crits), numbers, tuple(notes))


def figure(data: RecipeData, c: Criteria, verdict: Verdict):
    fig, axes = cm.new_figure(1, 3, width=4.8)
    groups = by_n(data)
    ns = list(groups)
    ax = axes[0, 0]
    accs = [[cm.value(r, "test/acc") for r in groups[n]] for n in ns]
    fr = [[data.measures.get(r["run_key"], {}).get("ij_fraction", math.nan) for r in groups[n]] for n in ns]
    ax.errorbar(ns, [np.mean(a) for a in accs], yerr=[np.std(a) for a in accs], fmt="o-", capsize=3, color="k")
    ax.axhline(c.min_acc, color="g", ls="--", lw=1, label=f"criterion at the largest n: {c.min_acc:g}")
    ax.axhline(c.max_acc_small, color="r", ls="--", lw=1, label=f"criterion at the smallest n: {c.max_acc_small:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training examples n (log scale)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("sample-size sweep")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.errorbar(ns, [np.nanmean(f) for f in fr], yerr=[np.nanstd(f) for f in fr], fmt="o-", capsize=3, color="k")
    d = next((m["d"] for m in data.measures.values() if "d" in m), None)
    if d:
        ax.axhline(2 / d, color="grey", ls=":", label=f"2/d = {2 / d:.3g} (isotropic init)")
    ax.set_xscale("log")
    ax.set_xlabel("training examples n (log scale)")
    ax.set_ylabel("share of first-layer ||W||² on (x_i, x_j), final")
    ax.set_title("features found")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    steps = lambda row: lambda s: s  # noqa: E731
    for n, color in zip(ns, cm.colors(len(ns))):
        cm.plot_mean(ax, data, groups[n], "features/top2_fraction", steps, color, f"n={n}")
    ax.set_xlabel("steps")
    ax.set_ylabel("share of ||W||² on the top-2 input coordinates")
    ax.set_title("finding the features along training")
    ax.legend(fontsize=7)
    cm.suptitle(fig, "XOR on the hypercube with a two-layer ReLU net (SGD)", verdict)
    return fig


register(
    Recipe(
        "xor", Criteria, check, figure, measures=measures, metrics=("train/loss", "test/acc", "features/top2_fraction")
    )
)
