"""Differentiable augmentation for data-efficient GAN training.

Zhao, Liu, Lin, Zhu, Han, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020. The same random augmentation family T is applied to real and fake samples
before the discriminator, ``D(T(x))`` and ``D(T(G(z)))``, and every op is differentiable in its
input so generator gradients flow through T. Written here (no maintained library ships it for
plain torch tensors of both 1-D and 2-D shape):

- ``color``: brightness ``x + (u - 0.5)``, saturation ``(x - mean_c) * 2u + mean_c`` (only when
  C > 1; a no-op for one channel), contrast ``(x - mean) * (u + 0.5) + mean``; u ~ U[0, 1) per
  sample.
- ``translation``: integer shift of up to ``round(ratio * size)`` (ratio 1/8) per sample and per
  spatial axis, vacated positions filled with ``fill``.
- ``cutout``: a square (or segment) of side ``round(ratio * size)`` (ratio 1/2) at a uniformly
  random centre set to ``fill``.

Works for ``(B, C, H, W)`` images and ``(B, C, L)`` signals. Randomness comes only from the
``generator`` argument (the global RNG is untouched when one is given).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["POLICIES", "diff_augment", "parse_policy"]

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"color,translation,cutout"`` or a sequence of names -> validated tuple (may be empty)."""
    if isinstance(policy, str):
        names = tuple(p.strip() for p in policy.split(",") if p.strip())
    else:
        names = tuple(policy)
    bad = [n for n in names if n not in POLICIES]
    if bad:
        raise ValueError(f"diffaugment policy {policy!r}: unknown op(s) {bad}; allowed {POLICIES}")
    return names


def _uniform(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    view = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, 1[, 1])
    return torch.rand(view, generator=gen, device=x.device, dtype=x.dtype)


def _color(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    x = x + (_uniform(x, gen) - 0.5)
    if x.shape[1] > 1:
        m = x.mean(dim=1, keepdim=True)  # (B, 1, ...)
        x = (x - m) * (_uniform(x, gen) * 2.0) + m
    m = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)  # (B, 1, 1[, 1])
    return (x - m) * (_uniform(x, gen) + 0.5) + m


def _translate(x: torch.Tensor, ratio: float, fill: float, gen: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    for d in range(2, x.dim()):  # one spatial axis at a time
        size = x.shape[d]
        p = int(size * ratio + 0.5)
        if p == 0:
            continue
        shift = torch.randint(-p, p + 1, (b,), generator=gen, device=x.device)
        pad = [0, 0] * (x.dim() - 2)
        k = x.dim() - 1 - d  # F.pad lists the last axis first
        pad[2 * k] = pad[2 * k + 1] = p
        xp = F.pad(x, pad, value=fill)  # axis d now has size + 2p
        idx = torch.arange(size, device=x.device)[None, :] + p + shift[:, None]  # (B, size)
        view = [b] + [1] * (x.dim() - 1)
        view[d] = size
        x = torch.gather(xp, d, idx.view(view).expand(x.shape))  # out[i] = x[i + shift]
    return x


def _cutout(x: torch.Tensor, ratio: float, fill: float, gen: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    inside = torch.ones((b,) + (1,) + tuple(x.shape[2:]), dtype=torch.bool, device=x.device)
    for d in range(2, x.dim()):
        size = x.shape[d]
        side = int(size * ratio + 0.5)
        centre = torch.randint(0, size, (b,), generator=gen, device=x.device)
        lo = centre - side // 2  # (B,); the window [lo, lo + side) is clipped by the border
        pos = torch.arange(size, device=x.device)[None, :]  # (1, size)
        in_axis = (pos >= lo[:, None]) & (pos < lo[:, None] + side)  # (B, size)
        view = [b] + [1] * (x.dim() - 1)
        view[d] = size
        inside = inside & in_axis.view(view)
    keep = (~inside).to(x.dtype)  # (B, 1, ...)
    return x * keep + fill * (1.0 - keep)


def diff_augment(
    x: torch.Tensor,
    policy: str | tuple[str, ...],
    *,
    generator: torch.Generator | None = None,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
    fill: float = 0.0,
) -> torch.Tensor:
    """Apply the DiffAugment ops named in ``policy`` (in the order given) to a batch.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, L)`` tensor in [-1, 1]; gradients flow through.
        policy: e.g. ``"color,translation,cutout"``; ``""`` returns ``x`` unchanged.
        generator: RNG for the random parameters (on ``x.device``).
        fill: value written into vacated/cut-out positions (0 as in the paper).
    """
    names = parse_policy(policy)
    if x.dim() not in (3, 4):
        raise ValueError(f"diff_augment: x must be (B, C, L) or (B, C, H, W), got {tuple(x.shape)}")
    for name in names:
        if name == "color":
            x = _color(x, generator)
        elif name == "translation":
            x = _translate(x, translation_ratio, fill, generator)
        else:
            x = _cutout(x, cutout_ratio, fill, generator)
    return x
