"""Scores of the optimizer benchmark: time to target, the external-tuning protocol, performance profiles and
confidence intervals over seeds.

Definitions (MLCommons AlgoPerf rules, external tuning ruleset; Dolan & More 2002 for profiles):

- **time to target** of one trial: the first evaluation (in steps, or seconds) at which the validation metric
  reaches the workload's fixed target (``<=`` for a metric to minimise, ``>=`` to maximise); ``inf`` if never.
- **external tuning**: a submission (an optimizer with its search space) runs S independent studies of T
  trials each on a workload; a study's time is its fastest trial's; the submission's time on the workload is
  the median over the S studies (``inf`` when more than half of them never reach the target).
- **performance ratio** ``r[s, w] = t[s, w] / min_s' t[s', w]`` (``inf`` if ``t`` is); ratios above ``r_max``
  count as not reached.
- **performance profile** ``rho_s(tau) = |{w : r[s, w] <= tau}| / |W|`` for ``tau`` in ``[1, r_max]``.
- **benchmark score** ``B_s = 1 / (r_max - 1) * integral_1^r_max rho_s(tau) dtau`` (AlgoPerf: ``r_max = 4``);
  it lies in [0, 1], 1 meaning fastest on every workload. ``rho_s`` is a step function, so the integral is
  exact: each workload adds ``max(0, r_max - r[s, w]) / ((r_max - 1) |W|)``. (AlgoPerf's scoring script
  evaluates ``rho`` on a grid of ``tau`` and integrates with the trapezoidal rule, which approaches this value
  as the grid gets finer; the tests check both.)
- **confidence interval** of a mean over seeds: Student's t interval ``mean +- t_{0.975, n-1} s / sqrt(n)``
  (two-sided 95%; ``s`` the sample standard deviation), undefined (``nan``) for fewer than 2 seeds.

Written here because the quantities are a few lines each on top of numpy/scipy and the organisers' script is
tied to their log format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

R_MAX = 4.0  # AlgoPerf's maximum performance ratio


def time_to_target(times: Sequence[float], values: Sequence[float], target: float, minimize: bool = True) -> float:
    """The first of ``times`` whose value reaches ``target`` (NaN values never do); ``inf`` if none does.

    ``times`` are the evaluation points in the run's unit (steps or seconds), increasing."""
    if len(times) != len(values):
        raise ValueError(f"{len(times)} times but {len(values)} values")
    t = np.asarray(times, dtype=float)
    if np.any(np.diff(t) < 0):
        raise ValueError("times must be increasing")
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = (v <= target) if minimize else (v >= target)
    idx = np.flatnonzero(hit & ~np.isnan(v))
    return float(t[idx[0]]) if idx.size else math.inf


def study_time(trial_times: Iterable[float]) -> float:
    """One study's time to target: its fastest trial's (``inf`` if no trial reaches the target)."""
    ts = [float(t) for t in trial_times]
    if not ts:
        raise ValueError("a study needs at least one trial")
    return min(ts)


def external_tuning_time(studies: Sequence[Iterable[float]]) -> float:
    """A submission's time on a workload: the median over studies of each study's fastest trial.

    ``inf`` entries sort last, so the median is ``inf`` exactly when more than half of the studies (for an
    even count: at least half) never reach the target."""
    per_study = sorted(study_time(s) for s in studies)
    if not per_study:
        raise ValueError("at least one study is needed")
    n = len(per_study)
    if n % 2:
        return per_study[n // 2]
    lo, hi = per_study[n // 2 - 1], per_study[n // 2]
    return math.inf if math.isinf(hi) else (lo + hi) / 2


def performance_ratios(
    times: Mapping[Hashable, Mapping[Hashable, float]], r_max: float = R_MAX
) -> dict[Hashable, dict[Hashable, float]]:
    """``{submission: {workload: r}}`` from ``{submission: {workload: time}}``; every submission must have a
    time for every workload (``inf`` for not reached). Ratios above ``r_max`` become ``inf``."""
    subs = list(times)
    if not subs:
        raise ValueError("no submissions")
    workloads = list(times[subs[0]])
    for s in subs:
        if set(times[s]) != set(workloads):
            raise ValueError(f"submission {s!r} has workloads {sorted(times[s])}, expected {sorted(workloads)}")
    out: dict = {s: {} for s in subs}
    for w in workloads:
        for s in subs:
            if times[s][w] < 0 or math.isnan(times[s][w]):
                raise ValueError(f"time of {s!r} on {w!r} is {times[s][w]}: expected >= 0 or inf")
        best = min(times[s][w] for s in subs)
        for s in subs:
            t = times[s][w]
            if math.isinf(t):
                r = math.inf
            elif best == 0:
                r = 1.0 if t == 0 else math.inf
            else:
                r = t / best
            out[s][w] = r if r <= r_max else math.inf
    return out


def profile(ratios: Mapping[Hashable, float], taus: Sequence[float]) -> np.ndarray:
    """``rho(tau)``: the fraction of workloads whose ratio is ``<= tau``, at each of ``taus``."""
    r = np.asarray(list(ratios.values()), dtype=float)
    return np.array([(r <= tau).mean() for tau in taus])


def benchmark_score(ratios: Mapping[Hashable, float], r_max: float = R_MAX) -> float:
    """``1/(r_max - 1) * integral_1^r_max rho(tau) dtau``, exactly (see the module docstring)."""
    if r_max <= 1:
        raise ValueError(f"r_max={r_max}: must be > 1")
    r = np.asarray(list(ratios.values()), dtype=float)
    if r.size == 0:
        raise ValueError("no workloads")
    return float(np.mean(np.clip(r_max - np.where(np.isinf(r), r_max, r), 0.0, None)) / (r_max - 1))


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with a two-sided t confidence interval ``[lo, hi]`` at ``level``."""

    mean: float
    lo: float
    hi: float
    n: int
    std: float
    level: float = 0.95
    method: str = "t"

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def format(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}g} (n={self.n}, no CI)"
        return f"{self.mean:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}] (n={self.n})"


def mean_ci(values: Iterable[float], level: float = 0.95) -> MeanCI:
    """Mean and Student's t interval; NaN values are refused (a diverged seed must be handled by the caller,
    e.g. as the error it reached, not silently dropped)."""
    from scipy import stats

    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    if np.isnan(x).any():
        raise ValueError(f"{int(np.isnan(x).sum())} NaN value(s): decide what a diverged run scores first")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: must be in (0, 1)")
    m = float(x.mean())
    if x.size < 2:
        return MeanCI(m, math.nan, math.nan, 1, math.nan, level)
    s = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1)) * s / math.sqrt(x.size)
    return MeanCI(m, m - half, m + half, int(x.size), s, level)


def group_mean_ci(
    rows: Iterable[Mapping[str, Any]],
    value: str | Callable[[Mapping[str, Any]], float],
    ignore: Sequence[str] = ("seed",),
    by: Sequence[str] | None = None,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Group rows by every column except ``ignore`` (or by ``by``) and give each group's mean with its CI.

    Columns that are per-run outcomes rather than settings must be listed in ``ignore`` too (or use ``by``):
    MLflow cannot group runs this way, which is why the benchmark reports do it here."""
    get = value if callable(value) else (lambda r: r[value])
    groups: dict[tuple, list[float]] = {}
    keys_of: dict[tuple, dict] = {}
    for r in rows:
        cols = list(by) if by is not None else sorted(k for k in r if k not in ignore and k != value)
        key = tuple((c, _hashable(r.get(c))) for c in cols)
        groups.setdefault(key, []).append(float(get(r)))
        keys_of[key] = {c: r.get(c) for c in cols}
    out = []
    for key, vals in groups.items():
        ci = mean_ci(vals, level)
        out.append({**keys_of[key], "mean": ci.mean, "ci_lo": ci.lo, "ci_hi": ci.hi, "n": ci.n, "std": ci.std})
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v
