"""What GAN training produces (:class:`GANResult`) and how its nets are initialised (:func:`build_nets`).

Shared by ``gan.train`` and ``gan.checkpoint`` (kept apart so neither imports the other).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sgdlab.gan.config import GANConfig
from sgdlab.gan.nets import Generator, ProjectionDiscriminator


@dataclass(frozen=True)
class GANResult:
    """Outcome of ``train_gan`` (or ``load_gan``).

    Attributes:
        generator: EMA generator in eval mode, BatchNorm statistics recomputed: sample from it.
        generator_raw: the last iterate of the generator.
        discriminator: the projection discriminator.
        history: ``{"step": [...], "gan/loss_d": [...], "gan/loss_g": [...] (adversarial part),
            "gan/ms_ratio": [...] (mode-seeking ratio r), "gan/d_real": [...],
            "gan/d_fake": [...]}`` every ``config.log_every`` steps.
        data_range: ``(lo, hi)`` data units that generator output [-1, 1] maps back to.
    """

    generator: Generator
    generator_raw: Generator
    discriminator: ProjectionDiscriminator
    config: GANConfig
    num_classes: int
    sample_shape: tuple[int, ...]
    data_range: tuple[float, float]
    steps: int
    wall_time_s: float
    history: dict[str, list[float]] = field(default_factory=dict)
    checkpoint_path: Path | None = None


def build_nets(
    cfg: GANConfig,
    sample_shape: tuple[int, ...],
    num_classes: int,
    data_range: tuple[float, float],
    device: torch.device | str = "cpu",
) -> tuple[Generator, ProjectionDiscriminator]:
    """Initialise G and D from ``cfg.seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):  # init + spectral-norm vectors use the global RNG
        torch.manual_seed(cfg.seed)
        g = Generator(sample_shape, num_classes, cfg.z_dim, cfg.g_widths, data_range)
        d = ProjectionDiscriminator(sample_shape, num_classes, cfg.d_widths, cfg.d_mbstd_group, cfg.d_head)
    return g.to(device), d.to(device)
