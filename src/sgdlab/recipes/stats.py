"""Seed statistics and curve alignment shared by the recipe checks (plain numpy/scipy on tables).

"Within seed noise" is measured one way in every recipe: Tukey's studentized range. For k groups (e.g.
the SVAG l's) of n seeds each, with pooled within-group standard deviation s (``dof = sum(n_i - 1)``),

    q = (max_i mean_i - min_i mean_i) / (s / sqrt(n)),

and the groups *coincide within seed noise* when q is below the studentized-range quantile
``q_{1-alpha}(k, dof)`` (scipy.stats.studentized_range), i.e. Tukey's HSD finds no pair of groups apart.
Unequal group sizes use the harmonic mean of the n_i (Tukey-Kramer). Two groups are *apart* when
``|mean_a - mean_b| / (s / sqrt(n)) >= q_{1-alpha}(k, dof)`` with the same s and k (the HSD pair test).
Note the low power with 3 seeds: "coincide" means "no difference the seeds can resolve", and the
recipes also report the spread in units of s so a reader can judge the size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Curve = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class Groups:
    """Per-group seed statistics of one scalar."""

    means: dict[Any, float]
    stds: dict[Any, float]
    counts: dict[Any, int]
    pooled_std: float  # sqrt of the dof-weighted mean within-group variance (NaN when dof = 0)
    dof: int

    @property
    def k(self) -> int:
        return len(self.means)

    @property
    def n_eff(self) -> float:
        """Harmonic mean group size (Tukey-Kramer)."""
        c = [n for n in self.counts.values() if n > 0]
        return len(c) / sum(1.0 / n for n in c) if c else float("nan")

    @property
    def se(self) -> float:
        """Standard error of one group mean: s / sqrt(n_eff)."""
        return self.pooled_std / math.sqrt(self.n_eff) if self.n_eff > 0 else float("nan")


def group_stats(values: Mapping[Any, Sequence[float]]) -> Groups:
    """Means, stds and the pooled std of ``{group: [value per seed]}`` (NaNs dropped)."""
    means, stds, counts = {}, {}, {}
    ss, dof = 0.0, 0
    for g, vs in values.items():
        v = np.asarray([x for x in vs if x is not None and math.isfinite(x)], dtype=np.float64)
        counts[g] = int(v.size)
        means[g] = float(v.mean()) if v.size else float("nan")
        stds[g] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        if v.size > 1:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += v.size - 1
    pooled = math.sqrt(ss / dof) if dof else float("nan")
    return Groups(means, stds, counts, pooled, dof)


def q_critical(k: int, dof: int, alpha: float) -> float:
    """The studentized-range quantile q_{1-alpha}(k, dof)."""
    from scipy.stats import studentized_range

    if k < 2 or dof < 1:
        return float("nan")
    return float(studentized_range.ppf(1.0 - alpha, k, dof))


def studentized_spread(g: Groups) -> float:
    """(max mean - min mean) / (s / sqrt(n)): Tukey's q statistic of the groups."""
    m = [v for v in g.means.values() if math.isfinite(v)]
    if len(m) < 2 or not (g.se > 0):
        return float("nan")
    return (max(m) - min(m)) / g.se


def studentized_gap(g: Groups, a: Any, b: Any) -> float:
    """|mean_a - mean_b| / (s / sqrt(n)): the HSD statistic of one pair."""
    if not (g.se > 0):
        return float("nan")
    return abs(g.means[a] - g.means[b]) / g.se


def spread_in_std(g: Groups) -> float:
    """(max mean - min mean) / pooled std: the spread between groups in units of the seed noise."""
    m = [v for v in g.means.values() if math.isfinite(v)]
    if len(m) < 2 or not (g.pooled_std > 0):
        return float("nan")
    return (max(m) - min(m)) / g.pooled_std


# ------------------------------------------------------------------------------------------- curves
def clean(points: Curve | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) sorted by step, non-finite values dropped, the last value of a repeated step kept."""
    if not points:
        return np.zeros(0), np.zeros(0)
    d: dict[int, float] = {}
    for s, v in points:
        d[int(s)] = float(v)
    s = np.asarray(sorted(d), dtype=np.float64)
    v = np.asarray([d[int(k)] for k in s], dtype=np.float64)
    keep = np.isfinite(v)
    return s[keep], v[keep]


def on_grid(points: Curve | None, to_x: Callable[[np.ndarray], np.ndarray], grid: np.ndarray) -> np.ndarray:
    """The curve's values at the x positions ``grid`` (x = ``to_x(step)``), linear interpolation; NaN
    outside the logged range (never extrapolated)."""
    s, v = clean(points)
    out = np.full(len(grid), np.nan)
    if s.size == 0:
        return out
    x = to_x(s)
    inside = (grid >= x[0] - 1e-9 * max(1.0, abs(x[0]))) & (grid <= x[-1] + 1e-9 * max(1.0, abs(x[-1])))
    out[inside] = np.interp(grid[inside], x, v)
    return out


def curve_mean(points: Curve | None, to_x: Callable[[np.ndarray], np.ndarray], grid: np.ndarray) -> float:
    """Mean of the curve over ``grid`` (NaN if any grid point is outside the logged range)."""
    v = on_grid(points, to_x, grid)
    return float(v.mean()) if v.size and np.isfinite(v).all() else float("nan")


def epochs(row: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """steps -> epochs of this run (steps x batch size / the run's training examples)."""
    b, n = float(row["batch_size"]), float(row["n_train"])
    return lambda s: s * b / n


def effective_lr(row: Mapping[str, Any]) -> float:
    """The lr of one step: SVAG runs step lr / l (``lr`` holds the base lr, ``hparams.l`` the l)."""
    import json

    hp = row.get("hparams")
    hp = json.loads(hp) if isinstance(hp, str) else (hp or {})
    lr = float(row["lr"])
    return lr / float(hp["l"]) if str(row.get("optimizer", "")).startswith("svag") and "l" in hp else lr


def sde_time(row: Mapping[str, Any], adaptive: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """steps -> SDE time: t = steps x eta (SGD; Li, Malladi, Arora 2021) or steps x eta^2 (Adam/RMSprop;
    Malladi et al. 2022), eta the per-step lr."""
    eta = effective_lr(row)
    return (lambda s: s * eta * eta) if adaptive else (lambda s: s * eta)
