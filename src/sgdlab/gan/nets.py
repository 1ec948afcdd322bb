"""Class-conditional generator and projection discriminator for small images and 1-D signals.

Both networks work on ``(C, H, W)`` images (Conv2d) or ``(C, L)`` signals (Conv1d); the
spatial rank is taken from ``sample_shape``. The generator starts at ``size // 4`` and doubles
the resolution twice, so every spatial size must be divisible by 4 (28x28 Fashion-MNIST:
7 -> 14 -> 28; 40-long MNIST-1D: 10 -> 20 -> 40).

- Generator: DCGAN/BigGAN-lite. A linear map of ``z`` and a learned per-class map fill separate
  channels of the ``s/4`` input; each block is conditional BatchNorm -> ReLU -> 4x4 stride-2 transposed conv; a 3x3 conv and
  tanh give the output. Conditional
  BatchNorm (de Vries et al. 2017; Miyato & Koyama 2018): normalise without affine parameters,
  then scale and shift with per-class ``gamma_y``, ``beta_y``.
- Discriminator: projection discriminator (Miyato & Koyama, "cGANs with Projection
  Discriminator", ICLR 2018): ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` with spectral
  normalisation (Miyato et al. 2018) on every weight, via
  ``torch.nn.utils.parametrizations.spectral_norm``. ``head="flatten"`` (the default) makes
  ``phi(x)`` the flattened ``s/4`` feature map, so ``psi`` and the class projection see the
  whole image at once (DCGAN's linear head); ``head="sum"`` sums the features over positions,
  which leaves D a bag of 12-pixel patches (its receptive field): measured worse on
  Fashion-MNIST (``bench/gan_select.py``).

The generator outputs values in [-1, 1] (tanh) and carries the affine map back to the data
units it was trained on (buffers ``data_lo``/``data_hi``, so they are in the state dict, the
checkpoint and the hash).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["HEADS", "ConditionalBatchNorm", "Generator", "ProjectionDiscriminator", "minibatch_std"]

HEADS = ("flatten", "sum")


def _conv_cls(sample_shape: tuple[int, ...]) -> type[nn.Module]:
    if len(sample_shape) == 3:
        return nn.Conv2d
    if len(sample_shape) == 2:
        return nn.Conv1d
    raise ValueError(f"sample_shape={sample_shape!r}: expected (C, H, W) for images or (C, L) for signals")


def _convT_cls(sample_shape: tuple[int, ...]) -> type[nn.Module]:
    return nn.ConvTranspose2d if len(sample_shape) == 3 else nn.ConvTranspose1d


def _check_shape(sample_shape: tuple[int, ...]) -> None:
    _conv_cls(sample_shape)
    if any(s % 4 for s in sample_shape[1:]):
        raise ValueError(
            f"sample_shape={sample_shape!r}: spatial sizes must be divisible by 4 (two 2x upsamplings from size // 4)"
        )


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine weights followed by a per-class scale and shift."""

    def __init__(self, num_features: int, num_classes: int, spatial_dims: int):
        super().__init__()
        bn_cls = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d
        self.bn = bn_cls(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)  # start as plain BatchNorm
        nn.init.zeros_(self.beta.weight)
        self.spatial_dims = spatial_dims

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        view = (h.shape[0], h.shape[1]) + (1,) * self.spatial_dims  # (B, F, 1[, 1])
        return self.bn(h) * self.gamma(y).view(view) + self.beta(y).view(view)


class Generator(nn.Module):
    """Class-conditional generator ``G(z, y) -> x`` in [-1, 1].

    Args:
        sample_shape: ``(C, H, W)`` or ``(C, L)``; spatial sizes divisible by 4.
        num_classes: number of conditioning classes.
        z_dim: latent size.
        widths: three channel widths ``(w0, w1, w2)`` at sizes ``s/4, s/2, s``.
        data_range: ``(lo, hi)`` data units that [-1, 1] maps back to (see ``to_data``).
    """

    def __init__(
        self,
        sample_shape: tuple[int, ...],
        num_classes: int,
        z_dim: int,
        widths: tuple[int, int, int],
        data_range: tuple[float, float] = (-1.0, 1.0),
    ):
        super().__init__()
        _check_shape(sample_shape)
        conv, up = _conv_cls(sample_shape), _convT_cls(sample_shape)
        self.sample_shape = tuple(sample_shape)
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.spatial_dims = len(sample_shape) - 1
        self.base = tuple(s // 4 for s in sample_shape[1:])
        w0, w1, w2 = widths
        n_base = w0
        for s in self.base:
            n_base *= s
        # Two input branches in separate channels (as conditional DCGANs do): a linear map of z
        # and a learned per-class map, so BatchNorm normalises z's channels by z's statistics
        # alone. (On its own this did not stop per-class mode collapse of the small CPU
        # profile; the mode-seeking term in train.py did.)
        n_pos = n_base // w0
        self.w_z = w0 - w0 // 2
        self.fc = nn.Linear(z_dim, self.w_z * n_pos)
        self.embed = nn.Embedding(num_classes, (w0 // 2) * n_pos)
        self.bn0 = ConditionalBatchNorm(w0, num_classes, self.spatial_dims)
        # 4x4 stride-2 transposed convs double the size (DCGAN, Radford et al. 2016); per output
        # position they cost 4 taps, vs 9 for nearest upsampling + 3x3 conv
        self.conv1 = up(w0, w1, 4, stride=2, padding=1)
        self.bn1 = ConditionalBatchNorm(w1, num_classes, self.spatial_dims)
        self.conv2 = up(w1, w2, 4, stride=2, padding=1)
        self.bn2 = ConditionalBatchNorm(w2, num_classes, self.spatial_dims)
        self.out = conv(w2, sample_shape[0], 3, padding=1)
        self.act = nn.ReLU()
        self.register_buffer("data_lo", torch.tensor(float(data_range[0])))
        self.register_buffer("data_hi", torch.tensor(float(data_range[1])))
        self.widths = (w0, w1, w2)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``z``: (B, z_dim), ``y``: (B,) int64 -> (B, *sample_shape) in [-1, 1]."""
        b = z.shape[0]
        hz = self.fc(z).view(b, self.w_z, *self.base)  # (B, w0 - w0 // 2, s/4[, s/4])
        hy = self.embed(y).view(b, self.widths[0] - self.w_z, *self.base)  # (B, w0 // 2, ...)
        h = torch.cat([hz, hy], dim=1)  # (B, w0, s/4[, s/4])
        h = self.conv1(self.act(self.bn0(h, y)))  # (B, w1, s/2[, s/2])
        h = self.conv2(self.act(self.bn1(h, y)))  # (B, w2, s[, s])
        return torch.tanh(self.out(self.act(self.bn2(h, y))))  # (B, C, s[, s])

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Map generator output in [-1, 1] back to the training data's units."""
        return self.data_lo + (x + 1.0) * 0.5 * (self.data_hi - self.data_lo)


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """Minibatch standard deviation feature (Karras et al. 2018, ProGAN): the std over each
    group of ``group`` consecutive samples, averaged over channels and positions, broadcast as
    one extra channel ``(B, 1, ...)``. Lets D see a lack of diversity among fakes. Groups never
    straddle the real/fake halves of a concatenated batch when each half is a multiple of
    ``group``."""
    b = h.shape[0]
    if b % group:
        raise ValueError(f"minibatch_std: batch {b} is not a multiple of group={group}")
    g = h.view(b // group, group, *h.shape[1:])  # (B/g, g, C, ...)
    std = torch.sqrt(g.var(dim=1, unbiased=False) + 1e-8)  # (B/g, C, ...)
    s = std.flatten(1).mean(dim=1)  # (B/g,)
    s = s.repeat_interleave(group).view(b, 1, *([1] * (h.dim() - 2)))  # (B, 1, 1[, 1])
    return s.expand(b, 1, *h.shape[2:])


class ProjectionDiscriminator(nn.Module):
    """Spectrally normalised projection discriminator ``D(x, y) -> (B,)`` real-valued scores.

    ``phi``: 3x3 conv at full size, then two stride-2 4x4 convs (sizes s -> s/2 -> s/4), leaky
    ReLU, then ``head``: ``"flatten"`` gives features ``h`` of size ``widths[2] * prod(s/4)`` (a
    global view), ``"sum"`` a sum over positions (size ``widths[2]``); ``D = linear(h) +
    <embed(y), h>``. With ``mbstd_group > 0`` a minibatch-std channel is appended before the last
    conv (batches must be multiples of the group).
    """

    def __init__(
        self,
        sample_shape: tuple[int, ...],
        num_classes: int,
        widths: tuple[int, int, int],
        mbstd_group: int = 0,
        head: str = "flatten",
    ):
        super().__init__()
        _check_shape(sample_shape)
        if head not in HEADS:
            raise ValueError(f"discriminator head={head!r}: allowed {HEADS}")
        conv = _conv_cls(sample_shape)
        d0, d1, d2 = widths
        self.head = head
        n_feat = d2
        if head == "flatten":
            for s in sample_shape[1:]:
                n_feat *= s // 4
        self.sample_shape = tuple(sample_shape)
        self.num_classes = num_classes
        self.mbstd_group = mbstd_group
        extra = 1 if mbstd_group > 0 else 0
        self.convs = nn.ModuleList(
            [
                spectral_norm(conv(sample_shape[0], d0, 3, padding=1)),
                spectral_norm(conv(d0, d1, 4, stride=2, padding=1)),
                spectral_norm(conv(d1 + extra, d2, 4, stride=2, padding=1)),
            ]
        )
        self.act = nn.LeakyReLU(0.1)
        self.linear = spectral_norm(nn.Linear(n_feat, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, n_feat))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.act(self.convs[0](x))  # (B, d0, s[, s])
        h = self.act(self.convs[1](h))  # (B, d1, s/2[, s/2])
        if self.mbstd_group > 0:
            h = torch.cat([h, minibatch_std(h, self.mbstd_group)], dim=1)  # (B, d1 + 1, ...)
        h = self.act(self.convs[2](h))  # (B, d2, s/4[, s/4])
        # (B, d2 * prod(s/4)): the whole map, or (B, d2): sum pooling over positions
        h = h.flatten(1) if self.head == "flatten" else h.flatten(2).sum(dim=2)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)  # (B,)
