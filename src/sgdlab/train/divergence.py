"""Divergence detection on a window of per-step training losses (checked at log points).

Per-step losses stay on the device between log points (no host sync per step); at a log point the
window is copied to the host once and scanned here, so the reported step is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def find_divergence(losses: Sequence[float], first_step: int, initial_loss: float, blowup_factor: float) -> str | None:
    """Reason string for the first diverged step in ``losses``, or None if all are fine.

    ``losses[i]`` is the training loss of step ``first_step + i`` (1-based step numbers). A step
    diverged if its loss is not finite, or exceeds ``blowup_factor * initial_loss`` (only checked
    when ``initial_loss > 0``; ``blowup_factor = inf`` disables the check).
    """
    limit = blowup_factor * initial_loss if initial_loss > 0 else math.inf
    for i, v in enumerate(losses):
        if not math.isfinite(v):
            return f"train loss is {v} (not finite) at step {first_step + i}"
        if v > limit:
            return (
                f"train loss {v:.6g} at step {first_step + i} exceeds blowup_factor "
                f"{blowup_factor:g} x initial loss {initial_loss:.6g}"
            )
    return None
