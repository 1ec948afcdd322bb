"""Class-conditional GAN for predicting test error (Zhang, Gupta, Saunshi, Arora, ICLR 2022).

Train on the training split only (``train_gan``), sample a labelled synthetic set
(``sample_synthetic``), and measure how close it is to real data (``frechet``).
"""

from sgdlab.gan.checkpoint import (
    CorruptGANCheckpoint,
    GANCheckpointError,
    generator_hash,
    load_gan,
    load_snapshot,
    save_gan,
    save_snapshot,
)
from sgdlab.gan.config import PROFILES, GANConfig, resolve_device
from sgdlab.gan.diffaugment import diff_augment
from sgdlab.gan.nets import Generator, ProjectionDiscriminator
from sgdlab.gan.sample import sample_grid_png, sample_synthetic
from sgdlab.gan.train import GANDivergedError, GANResult, train_gan

__all__ = [
    "PROFILES",
    "CorruptGANCheckpoint",
    "GANCheckpointError",
    "GANConfig",
    "GANDivergedError",
    "GANResult",
    "Generator",
    "ProjectionDiscriminator",
    "diff_augment",
    "generator_hash",
    "load_gan",
    "load_snapshot",
    "resolve_device",
    "sample_grid_png",
    "sample_synthetic",
    "save_gan",
    "save_snapshot",
    "train_gan",
]
