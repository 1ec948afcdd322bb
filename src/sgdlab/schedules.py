"""Learning-rate schedules as pure functions of the step.

The loop sets ``group["lr"] = base_lr * lr_factor(schedule, step, total_steps)`` before every
update. Being a pure function of the step (no scheduler object with state) keeps resume exact and
works for every optimizer, including the project's own ones. ``step`` is the 0-based index of the
update about to be taken (0 <= step < total_steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "step", "cosine", "warmup_cosine", "warmup_constant")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule.

    kind: constant | step | cosine | warmup_cosine | warmup_constant.
    warmup_steps: linear warm-up length for the warmup_* kinds; update ``s < W`` gets ``(s+1)/W``.
    step_size, gamma: ``step`` kind multiplies by ``gamma`` every ``step_size`` updates.
    min_lr_ratio: cosine kinds decay from 1 to this fraction of the base lr.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind={self.kind!r} is not supported; allowed: {list(KINDS)}")
        if self.warmup_steps < 0 or (self.kind.startswith("warmup") and self.warmup_steps < 1):
            raise ValueError(
                f"schedule warmup_steps={self.warmup_steps!r} must be >= 1 for kind={self.kind!r} (>= 0 otherwise)"
            )
        if self.step_size < 1:
            raise ValueError(f"schedule step_size={self.step_size!r} must be >= 1")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"schedule gamma={self.gamma!r} must be in (0, 1]")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"schedule min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")


def _cosine(progress: float, min_ratio: float) -> float:
    # progress in [0, 1): 1 at the start, -> min_ratio at the end
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(schedule: Schedule, step: int, total_steps: int) -> float:
    """Multiplier of the base lr for update ``step`` (0-based) of ``total_steps``."""
    kind = schedule.kind
    if kind == "constant":
        return 1.0
    if kind == "step":
        return schedule.gamma ** (step // schedule.step_size)
    if kind == "cosine":
        return _cosine(step / total_steps, schedule.min_lr_ratio)
    w = schedule.warmup_steps
    if step < w:
        return (step + 1) / w
    if kind == "warmup_constant":
        return 1.0
    # warmup_cosine: cosine over the updates after warm-up
    return _cosine((step - w) / max(1, total_steps - w), schedule.min_lr_ratio)


def lr_at(schedule: Schedule, step: int, total_steps: int, base_lr: float) -> float:
    """Learning rate of update ``step`` (0-based): ``base_lr * lr_factor(...)``."""
    return base_lr * lr_factor(schedule, step, total_steps)
