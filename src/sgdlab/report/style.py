"""Shared look of the report's figures: fonts, palettes, and PNG output.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot), so nothing touches
pyplot's global figure registry or the backend; saving goes through the Agg canvas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import matplotlib
from matplotlib.figure import Figure

DPI = 130  # PNG resolution (>= 120 for print-quality figures that stay small enough to embed)

RC = {
    "font.size": 10.5,
    "axes.titlesize": 11.5,
    "axes.labelsize": 10.5,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}

F = TypeVar("F", bound=Callable[..., Figure])


def styled(fn: F) -> F:
    """Build the figure under the report's rc settings (restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def group_colors(n: int) -> list:
    """Colours of the groups inside one optimizer's panel: distinct up to 20."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def optimizer_colors(names: list[str]) -> dict[str, tuple]:
    """One colour per optimizer, stable for a given sorted list of names."""
    cmap = matplotlib.colormaps["Dark2" if len(names) <= 8 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(sorted(names))}


def save_png(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as PNG at :data:`DPI`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(RC):
        fig.savefig(path, dpi=DPI, format="png")  # constrained layout already fits legends and titles
    return path
