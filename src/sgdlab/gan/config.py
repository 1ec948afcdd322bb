"""Typed, frozen configuration of class-conditional GAN training, with a CPU and a GPU profile."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sgdlab.device import resolve_device  # noqa: F401  (re-exported)
from sgdlab.gan.diffaugment import parse_policy
from sgdlab.gan.nets import HEADS

__all__ = ["GANConfig", "PROFILES", "resolve_device"]

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class GANConfig:
    """Hyper-parameters of ``train_gan``; validated on construction, unknown keys are errors.

    Attributes:
        z_dim: latent size.
        g_widths: generator channel widths at sizes s/4, s/2, s.
        d_widths: discriminator channel widths at sizes s, s/2, s/4.
        steps: generator updates.
        batch_size: samples per discriminator/generator update.
        lr_g, lr_d: Adam learning rates; betas: Adam betas (shared).
        n_dis: discriminator updates per generator update.
        d_mbstd_group: group size of D's minibatch-std feature (ProGAN); 0 disables it;
            ``batch_size`` must be a multiple of it.
        mode_seeking: weight of the mode-seeking regulariser (Mao et al. 2019); 0 disables.
        ema_decay: decay of the generator weight EMA used for sampling (warm-up
            ``min(decay, (1 + t) / (10 + t))``).
        d_head: discriminator head, ``"flatten"`` (a global view of the s/4 feature map) or
            ``"sum"`` (sum pooling over positions: a bag of 12-pixel patches).
        diffaugment: DiffAugment policy, e.g. ``"translation,cutout"``; ``""`` disables. The
            ``color`` op (random brightness/contrast) is allowed but off by default: it teaches D
            to ignore brightness, and the generator then varies brightness instead of shape.
        diffaugment_fill: what translation and cutout write into vacated positions:
            ``"border"`` (the mean of the training images' outermost pixels, in the GAN's
            [-1, 1] units: the black background of Fashion-MNIST) or a number in [-1, 1]
            (the paper's 0 is mid-grey here).
        seed: seeds initialisation, batches, latents and augmentation.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast for forward passes).
        log_every: steps between metric records.
        bn_stat_batches: batches used to recompute the EMA generator's BatchNorm statistics
            after training ("standing statistics", Brock et al. 2019, BigGAN).
    """

    z_dim: int = 64
    g_widths: tuple[int, int, int] = (64, 32, 16)
    d_widths: tuple[int, int, int] = (16, 32, 64)
    steps: int = 2500
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_dis: int = 1
    d_mbstd_group: int = 4
    mode_seeking: float = 0.1
    ema_decay: float = 0.999
    d_head: str = "flatten"
    diffaugment: str = "translation,cutout"
    diffaugment_fill: str | float = "border"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    log_every: int = 100
    bn_stat_batches: int = 20

    def __post_init__(self) -> None:
        for name in ("g_widths", "d_widths", "betas"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("z_dim", "steps", "batch_size", "n_dis", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GANConfig.{name}={v!r}: must be a positive int")
        if not isinstance(self.d_mbstd_group, int) or self.d_mbstd_group < 0:
            raise ValueError(f"GANConfig.d_mbstd_group={self.d_mbstd_group!r}: must be >= 0")
        if self.d_mbstd_group and self.batch_size % self.d_mbstd_group:
            raise ValueError(
                f"GANConfig.batch_size={self.batch_size} must be a multiple of d_mbstd_group={self.d_mbstd_group}"
            )
        if not isinstance(self.bn_stat_batches, int) or self.bn_stat_batches < 0:
            raise ValueError(f"GANConfig.bn_stat_batches={self.bn_stat_batches!r}: must be >= 0")
        for name in ("g_widths", "d_widths"):
            v = getattr(self, name)
            if len(v) != 3 or any(not isinstance(w, int) or w < 1 for w in v):
                raise ValueError(f"GANConfig.{name}={v!r}: must be three positive ints")
        for name in ("lr_g", "lr_d"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"GANConfig.{name}={v!r}: must be > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"GANConfig.betas={self.betas!r}: must be two floats in [0, 1)")
        if not self.mode_seeking >= 0:
            raise ValueError(f"GANConfig.mode_seeking={self.mode_seeking!r}: must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"GANConfig.ema_decay={self.ema_decay!r}: must be in [0, 1)")
        parse_policy(self.diffaugment)
        if self.d_head not in HEADS:
            raise ValueError(f"GANConfig.d_head={self.d_head!r}: allowed {HEADS}")
        fill = self.diffaugment_fill
        if isinstance(fill, bool) or not (
            fill == "border" or (isinstance(fill, (int, float)) and -1.0 <= float(fill) <= 1.0)
        ):
            raise ValueError(f"GANConfig.diffaugment_fill={fill!r}: 'border' or a number in [-1, 1]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"GANConfig.precision={self.precision!r}: allowed {PRECISIONS}")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"GANConfig.device={self.device!r}: allowed 'auto', 'cpu', 'cuda', 'cuda:N'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GANConfig:
        """Build from a plain dict (e.g. a checkpoint or params.yaml); unknown keys raise."""
        names = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(k for k in d if k not in names)
        if extra:
            raise ValueError(f"GANConfig: unknown key(s) {extra}; allowed {names}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of primitives (tuples as lists), loadable with ``weights_only=True``."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> GANConfig:
        """A named profile (``"cpu"`` or ``"gpu"``) with keyword overrides."""
        if name not in PROFILES:
            raise ValueError(f"GAN profile {name!r}: allowed {sorted(PROFILES)}")
        return cls.from_dict({**PROFILES[name], **overrides})


PROFILES: dict[str, dict[str, Any]] = {
    # bench/bench_gan.py on Fashion-MNIST, 2 CPU cores shared with other jobs (load avg 2-3.5),
    # torch.set_num_threads(1): 2500 steps in ~350 s (~140 ms/step); samples recognisable per
    # class. Two threads were far slower under that contention (OpenMP spin-wait).
    "cpu": dict(
        z_dim=64,
        g_widths=(64, 32, 16),
        d_widths=(16, 32, 64),
        steps=2500,
        batch_size=64,
        lr_g=2e-4,
        lr_d=2e-4,
        betas=(0.5, 0.999),
        n_dis=1,
        d_mbstd_group=4,
        mode_seeking=0.1,
        ema_decay=0.999,
        device="cpu",
        precision="fp32",
    ),
    # The long CPU generator of `make study-gan` (paid once per training set: models/_shared/gan/): the
    # widths that gave the lowest FD per second of training among bench/gan_select.py's candidates on
    # 2026-12-03 ("global_wide": FD to validation 281 after 389 s vs 331-634 for the narrower and the
    # sum-pooled designs at the same time), trained ~1 hour on this 2-core machine.
    "cpu_long": dict(
        z_dim=64,
        g_widths=(128, 64, 32),
        d_widths=(32, 64, 128),
        steps=10000,
        batch_size=64,
        lr_g=2e-4,
        lr_d=2e-4,
        betas=(0.5, 0.999),
        n_dis=1,
        d_mbstd_group=4,
        mode_seeking=0.1,
        ema_decay=0.999,
        device="cpu",
        precision="fp32",
        log_every=100,
    ),
    # Wider nets, larger batches, more steps; not measured on a GPU in this project yet.
    "gpu": dict(
        z_dim=128,
        g_widths=(256, 128, 64),
        d_widths=(64, 128, 256),
        steps=20000,
        batch_size=256,
        lr_g=2e-4,
        lr_d=2e-4,
        betas=(0.5, 0.999),
        n_dis=1,
        d_mbstd_group=4,
        mode_seeking=0.1,
        ema_decay=0.9995,
        device="auto",
        precision="bf16",
    ),
}
