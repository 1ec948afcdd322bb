"""Inputs of the study report: the phase tables, grouping of runs over seeds, and curve statistics.

Everything here is plain data (lists of dicts, numpy arrays); the figures and the HTML build on it.
Optional tables (``densities.json``, ``predictions.parquet``, ``scores.parquet``) that are missing or
unreadable become a reason string instead of an error, so a report of a partial study still builds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sgdlab.results import GROUP_KEYS, load_runs, read_table

Curve = list[tuple[int, float]]
Curves = dict[str, dict[str, Curve]]


class SkipFigure(Exception):
    """A figure has nothing to show with the given data; the message says why (shown in the HTML)."""


@dataclass(frozen=True)
class StudyData:
    """The tables of one study. ``missing`` maps an optional file name to why it is absent."""

    runs: list[dict[str, Any]]
    densities: dict[str, dict[str, list[float]]] | None = None
    predictions: list[dict[str, Any]] | None = None
    scores: list[dict[str, Any]] | None = None
    missing: dict[str, str] = field(default_factory=dict)
    gan_curve: list[dict[str, Any]] | None = None


def load_study(results_dir: Path | str) -> StudyData:
    """Read ``runs.parquet`` (joined with the later phases' tables) and the optional files.

    Raises:
        FileNotFoundError: ``runs.parquet`` is missing (the message names the path).
        ValueError: ``runs.parquet`` has no rows, or rows without ``run_key``.
    """
    from sgdlab.study import result_paths

    paths = result_paths(results_dir)
    runs_path = paths["sweep.runs"]
    if not runs_path.is_file():
        raise FileNotFoundError(f"{runs_path}: no runs table, so no report; run the sweep first (`sgdlab sweep`)")
    runs = load_runs(results_dir)
    if not runs:
        raise ValueError(f"{runs_path}: the runs table has no rows; nothing to report")
    if any(r.get("run_key") is None for r in runs):
        raise ValueError(f"{runs_path}: every row needs a 'run_key'; found a row without one")
    missing: dict[str, str] = {}

    densities = None
    p = paths["probe.densities"]
    if not p.is_file():
        missing[p.name] = f"{p.name} not found in the results directory (the Hessian probe computed no densities)"
    else:
        try:
            densities = json.loads(p.read_text())
            if not isinstance(densities, dict):
                raise ValueError(f"expected an object {{run_key: {{grid, density}}}}, got {type(densities).__name__}")
        except ValueError as exc:
            densities, missing[p.name] = None, f"{p.name} is unreadable: {exc}"

    tables: dict[str, list[dict[str, Any]] | None] = {}
    for key, phase in (
        ("predict.predictions", "the predict phase"),
        ("predict.scores", "the scoring phase"),
        ("predict.gan_curve", "the predict phase, with gan.snapshots > 0,"),
    ):
        p = paths[key]
        name = p.name
        tables[name] = None
        if not p.is_file():
            missing[name] = f"{name} not found in the results directory ({phase} did not run)"
            continue
        try:
            tables[name] = read_table(p) or None
        except Exception as exc:  # a corrupt optional table must not sink the whole report
            missing[name] = f"{name} is unreadable: {type(exc).__name__}: {exc}"
            continue
        if tables[name] is None:
            missing[name] = f"{name} has no rows"
    return StudyData(
        runs,
        densities,
        tables[paths["predict.predictions"].name],
        tables[paths["predict.scores"].name],
        missing,
        tables[paths["predict.gan_curve"].name],
    )


def check_curves(curves: Any) -> Curves:
    """Validate the ``{run_key: {metric: [(step, value), ...]}}`` mapping passed by the caller."""
    if not isinstance(curves, dict):
        raise TypeError(
            f"curves must be a dict {{run_key: {{metric: [(step, value), ...]}}}}, got {type(curves).__name__}"
        )
    for key, metrics in curves.items():
        if not isinstance(metrics, dict):
            raise TypeError(
                f"curves[{key!r}] must be a dict {{metric: [(step, value), ...]}}, got {type(metrics).__name__}"
            )
        for m, pts in metrics.items():
            if not isinstance(pts, (list, tuple)) or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in pts):
                raise TypeError(f"curves[{key!r}][{m!r}] must be a list of (step, value) pairs")
    return curves


# ------------------------------------------------------------------------------------------ groups
def is_num(v: Any) -> bool:
    """True for a finite int/float (not bool, not None, not NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def group_key(row: dict[str, Any]) -> tuple:
    """The run's group over seeds: (model, optimizer, lr, batch size, variant) as in ``results.summarize``."""
    return tuple(row.get(k) for k in GROUP_KEYS)


def group_label(row: dict[str, Any], *, with_model: bool = False, with_optimizer: bool = True) -> str:
    """Short human label of a run's group, e.g. ``sgd lr=0.1 B=128 [linearx2]``."""
    parts = [str(row.get("optimizer"))] if with_optimizer else []
    if is_num(row.get("lr")):
        parts.append(f"lr={row['lr']:g}")
    if row.get("batch_size") is not None:
        parts.append(f"B={row['batch_size']}")
    if with_model:
        parts.append(str(row.get("model")))
    if row.get("variant") not in (None, "", "base"):
        parts.append(f"[{row['variant']}]")
    return " ".join(parts)


def several_models(rows: list[dict[str, Any]]) -> bool:
    return len({r.get("model") for r in rows}) > 1


def _sort_key(k: tuple) -> tuple:
    return tuple((0, v, "") if is_num(v) else (1, 0, str(v)) for v in k)


def groups_by_optimizer(rows: list[dict[str, Any]]) -> dict[str, dict[tuple, list[dict[str, Any]]]]:
    """``{optimizer: {group key: [rows sorted by seed]}}``, optimizers and groups in a stable order."""
    out: dict[str, dict[tuple, list[dict]]] = {}
    for r in sorted(rows, key=lambda r: (_sort_key(group_key(r)), r.get("seed") or 0)):
        out.setdefault(str(r.get("optimizer")), {}).setdefault(group_key(r), []).append(r)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------ curves
def clean_curve(points: Curve | None) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of a curve, sorted by step, without non-finite values. Shapes (n,), (n,)."""
    pts = sorted((float(s), float(v)) for s, v in (points or []) if is_num(s) and is_num(v))
    if not pts:
        return np.empty(0), np.empty(0)
    a = np.asarray(pts, dtype=np.float64)  # (n, 2)
    return a[:, 0], a[:, 1]


@dataclass(frozen=True)
class Band:
    """Mean over seeds of a curve with a band: +-std for >= 3 seeds, min..max for 2, none for 1."""

    steps: np.ndarray  # (n,)
    mean: np.ndarray  # (n,)
    lo: np.ndarray  # (n,)
    hi: np.ndarray  # (n,)
    n_seeds: int
    kind: str  # "std", "minmax" or "none"


def seed_band(curves: list[Curve]) -> Band | None:
    """Average curves of several seeds on a common step grid (the union of their steps, restricted to the
    range all seeds cover, values linearly interpolated). None when no curve has a point."""
    cs = [c for c in (clean_curve(c) for c in curves) if c[0].size]
    if not cs:
        return None
    if len(cs) == 1:
        s, v = cs[0]
        return Band(s, v, v, v, 1, "none")
    start, stop = max(s[0] for s, _ in cs), min(s[-1] for s, _ in cs)
    grid = np.unique(np.concatenate([s[(s >= start) & (s <= stop)] for s, _ in cs]))
    if grid.size == 0:  # the seeds' step ranges do not overlap: fall back to the longest curve
        s, v = max(cs, key=lambda c: c[0].size)
        return Band(s, v, v, v, 1, "none")
    vals = np.stack([np.interp(grid, s, v) for s, v in cs])  # (n_seeds, n)
    mean = vals.mean(axis=0)
    if len(cs) == 2:
        return Band(grid, mean, vals.min(axis=0), vals.max(axis=0), 2, "minmax")
    std = vals.std(axis=0, ddof=1)
    return Band(grid, mean, mean - std, mean + std, len(cs), "std")


# ----------------------------------------------------------------------------------------- scoring
def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Signed Kendall tau-b of the finite points (:func:`sgdlab.generalization.kendall_tau`, the one the
    scores use); NaN with fewer than 2 points or constant input."""
    from sgdlab.generalization.scoring import kendall_tau

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return kendall_tau(x[ok], y[ok])


def column(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    """A numeric column as float64 with NaN where missing. Shape (len(rows),)."""
    return np.array([float(r[name]) if is_num(r.get(name)) else np.nan for r in rows], dtype=np.float64)


def prefixed_columns(rows: list[dict[str, Any]], prefix: str) -> list[str]:
    """Columns starting with ``prefix`` that hold at least one number, in first-seen order."""
    out: list[str] = []
    for r in rows:
        out += [k for k, v in r.items() if k.startswith(prefix) and k not in out and is_num(v)]
    return out


def fmt(v: Any, digits: int = 3) -> str:
    """Compact number formatting for tables and labels ("–" for missing)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"
