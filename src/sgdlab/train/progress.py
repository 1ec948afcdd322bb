"""Optional progress display for the loop: a callable, a rich progress bar, or nothing."""

from __future__ import annotations

import os
from collections.abc import Callable


class _RichBar:
    """A rich progress bar showing step, train loss and lr; created only when asked for."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._p.add_task("train", total=total, info="")
        self._p.start()

    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        info = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self._p.update(self._task, completed=step, info=info)

    def close(self) -> None:
        self._p.stop()


def make_progress(progress, total: int) -> Callable[[int, int, dict[str, float]], None] | None:
    """``True`` -> a rich bar (quiet, i.e. None, when env ``CI=true``); a callable is used as is
    (called at log points with ``(step, total, metrics)``); ``None``/``False`` -> None."""
    if progress is None or progress is False:
        return None
    if progress is True:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            return None
        return _RichBar(total)
    if callable(progress):
        return progress
    raise TypeError(f"progress={progress!r} must be None, a bool or a callable(step, total, metrics)")
