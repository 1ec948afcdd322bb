"""Learning-rate schedules of the loop: defined in :mod:`sgdlab.schedules` (torch-free, so the config
loader validates with the very same class the loop uses)."""

from sgdlab.schedules import KINDS, Schedule, lr_at, lr_factor

__all__ = ["KINDS", "Schedule", "lr_at", "lr_factor"]
