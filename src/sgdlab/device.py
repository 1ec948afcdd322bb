"""Devices and random generators, in one place (the loop, the loader, the GAN and the probes use these).

``resolve_device("auto")`` is CUDA when torch sees one, else the CPU; asking for CUDA without it is an
error naming the setting (a GPU study silently run on CPU would report wrong timings).
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, CPU otherwise; ``cpu``, ``cuda``, ``cuda:1`` as given."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a valid device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
    return dev


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device`` (the global RNG is never touched)."""
    return torch.Generator(device=device).manual_seed(int(seed))
