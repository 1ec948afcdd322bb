"""Pieces the recipe checks and figures share: per-run statistics, criteria built from seed groups, and
mean-over-seeds curves with a band."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sgdlab.recipes import RecipeData
from sgdlab.recipes import stats as st
from sgdlab.recipes.verdict import Criterion


def hparams(row: Mapping[str, Any]) -> dict[str, Any]:
    hp = row.get("hparams")
    return json.loads(hp) if isinstance(hp, str) else dict(hp or {})


def test_error(row: Mapping[str, Any]) -> float:
    acc = row.get("test/acc")
    return 1.0 - float(acc) if acc is not None else float("nan")


def value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def groups_of(rows: Iterable[Mapping[str, Any]], key: Callable, stat: Callable) -> dict[Any, list[float]]:
    """``{key(row): [stat(row) per run]}`` in first-seen order."""
    out: dict[Any, list[float]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(stat(r))
    return out


def enough(groups: Mapping[Any, Sequence[float]], min_seeds: int, what: str, notes: list[str]) -> bool:
    """True when every group has >= min_seeds finite values; otherwise a note says which do not."""
    short = {g: sum(math.isfinite(v) for v in vs) for g, vs in groups.items()}
    short = {g: n for g, n in short.items() if n < min_seeds}
    if short:
        notes.append(
            f"{what}: groups with fewer than {min_seeds} finished runs: "
            + ", ".join(f"{g} ({n})" for g, n in short.items())
        )
    return not short and bool(groups)


def coincide(
    name: str,
    what: str,
    groups: Mapping[Any, Sequence[float]],
    alpha: float,
    notes: list[str],
    min_seeds: int,
    numbers: dict[str, float],
) -> Criterion:
    """Criterion: the groups' means coincide within seed noise (Tukey q below its 1 - alpha quantile)."""
    ok = enough(groups, min_seeds, name, notes)
    g = st.group_stats(groups)
    q = st.studentized_spread(g) if ok else float("nan")
    crit = st.q_critical(g.k, g.dof, alpha) if ok else float("nan")
    numbers[f"{name}.spread"] = _spread(g)
    numbers[f"{name}.spread_in_std"] = st.spread_in_std(g)
    for k, m in g.means.items():
        numbers[f"{name}.mean.{k}"] = m
    return Criterion(
        name,
        f"{what}: Tukey studentized range q = spread / (s/sqrt(n)) over {g.k} groups stays below "
        f"q_{{{1 - alpha:g}}}({g.k}, dof={g.dof}) (the groups coincide within seed noise)",
        q,
        "<",
        crit,
    )


def apart(
    name: str,
    what: str,
    groups: Mapping[Any, Sequence[float]],
    a: Any,
    b: Any,
    alpha: float,
    notes: list[str],
    min_seeds: int,
    numbers: dict[str, float],
) -> Criterion:
    """Criterion: groups ``a`` and ``b`` are apart (Tukey HSD pair statistic at or above its quantile)."""
    ok = enough(groups, min_seeds, name, notes) and a in groups and b in groups
    g = st.group_stats(groups)
    q = st.studentized_gap(g, a, b) if ok else float("nan")
    crit = st.q_critical(g.k, g.dof, alpha) if ok else float("nan")
    if ok:
        numbers[f"{name}.gap"] = abs(g.means[a] - g.means[b])
        numbers[f"{name}.gap_in_std"] = abs(g.means[a] - g.means[b]) / g.pooled_std if g.pooled_std > 0 else math.nan
    return Criterion(
        name,
        f"{what}: |mean[{a}] - mean[{b}]| / (s/sqrt(n)) reaches q_{{{1 - alpha:g}}}({g.k}, dof={g.dof}) "
        f"(Tukey HSD: the two differ beyond seed noise)",
        q,
        ">=",
        crit,
    )


def _spread(g: st.Groups) -> float:
    m = [v for v in g.means.values() if math.isfinite(v)]
    return max(m) - min(m) if len(m) > 1 else float("nan")


# ------------------------------------------------------------------------------------------ figures
def mean_curve(
    data: RecipeData,
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    to_x: Callable[[Mapping[str, Any]], Callable],
    n_points: int = 60,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """(x, mean, lo, hi) over the runs' common x range; lo/hi = min/max over seeds (None if no curves)."""
    curves = [(r, data.curve(r, metric)) for r in rows]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return None
    spans = []
    for r, c in curves:
        s, _ = st.clean(c)
        x = to_x(r)(s)
        spans.append((x.min(), x.max()))
    lo_x, hi_x = max(a for a, _ in spans), min(b for _, b in spans)
    if not hi_x > lo_x:
        return None
    grid = np.linspace(lo_x, hi_x, n_points)
    ys = np.stack([st.on_grid(c, to_x(r), grid) for r, c in curves])
    if transform is not None:
        ys = transform(ys)
    return grid, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)


def plot_mean(ax, data, rows, metric, to_x, color, label, transform=None) -> bool:
    got = mean_curve(data, rows, metric, to_x, transform=transform)
    if got is None:
        return False
    x, m, lo, hi = got
    ax.plot(x, m, color=color, lw=1.6, label=f"{label} (n={len(rows)})")
    if len(rows) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
    return True


def colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]


def new_figure(rows: int, cols: int, width: float = 5.2, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows + 0.8), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def suptitle(fig, title: str, verdict) -> None:
    fig.suptitle(
        f"{title}\ncheck: {verdict.label} ({sum(c.passed for c in verdict.criteria)}/{len(verdict.criteria)} criteria)",
        fontsize=11,
    )
