"""Class-conditional Fréchet distance with a feature network trained on the training split.

Fréchet distance between Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017):
``d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``. The class-conditional
version (Zhang et al., ICLR 2022, Sec. 4) computes it per class between real and synthetic
features and averages over classes.

Why a small CNN instead of Inception: no pretrained weights can be downloaded here (offline) and
Inception features are meant for 299x299 RGB, not 28x28 grey images or 40-long signals. The
feature network is trained on the *training split* only, so distances to the test split stay a
fair measurement (the network never saw test data). Features: the 64-d penultimate layer
(before its ReLU, so the covariance is not truncated at zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab.device import generator as seeded_generator

__all__ = [
    "FeatureNet",
    "FrechetResult",
    "class_conditional_frechet",
    "extract_features",
    "frechet_distance",
    "gaussian_stats",
    "train_feature_net",
]


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, s1) and N(mu2, s2), float64.

    Uses ``tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`` with symmetric
    eigendecompositions (eigenvalues clipped at 0), which stays real and stable for
    rank-deficient covariances where ``scipy.linalg.sqrtm(S1 @ S2)`` may return complex noise.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != mu1.shape:
        raise ValueError(f"mu1 {mu1.shape} / mu2 {mu2.shape}: expected two vectors of one length")
    for name, s in (("s1", s1), ("s2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} shape {s.shape}: expected ({d}, {d}) to match mu")
        if not np.allclose(s, s.T, rtol=1e-6, atol=1e-9 * max(1.0, np.abs(s).max())):
            raise ValueError(f"{name} is not symmetric")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w1, v1 = np.linalg.eigh(s1)
    sqrt_s1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^{1/2}
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    dist = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross)
    return max(dist, 0.0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of ``(N, F)`` features (N >= 2)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features shape {f.shape}: need (N >= 2, F)")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


class FeatureNet(nn.Module):
    """Small classifier whose penultimate layer serves as the feature map (1-D or 2-D input).

    Inputs are in data units: ``data_lo``/``data_hi`` buffers map them to [-1, 1] first.
    """

    def __init__(
        self,
        sample_shape: tuple[int, ...],
        num_classes: int,
        feature_dim: int = 64,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ):
        super().__init__()
        conv = {3: nn.Conv2d, 2: nn.Conv1d}.get(len(sample_shape))
        pool = {3: nn.AdaptiveAvgPool2d, 2: nn.AdaptiveAvgPool1d}.get(len(sample_shape))
        if conv is None:
            raise ValueError(f"sample_shape={sample_shape!r}: expected (C, H, W) or (C, L)")
        c = sample_shape[0]
        self.body = nn.Sequential(
            conv(c, 32, 3, padding=1), nn.ReLU(),
            conv(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            conv(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            pool(4), nn.Flatten(),
        )  # fmt: skip
        n_flat = 64 * 4 ** (len(sample_shape) - 1)
        self.feat = nn.Linear(n_flat, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("data_lo", torch.tensor(float(data_range[0])))
        self.register_buffer("data_hi", torch.tensor(float(data_range[1])))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *sample_shape)`` data units -> ``(B, feature_dim)``."""
        x = (x - self.data_lo) / (self.data_hi - self.data_lo) * 2.0 - 1.0
        return self.feat(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))  # (B, K) logits


def train_feature_net(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    *,
    data_range: tuple[float, float] = (0.0, 1.0),
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FeatureNet:
    """Train a ``FeatureNet`` classifier on the training split with Adam; returns it in eval mode.

    The global RNG is not touched (initialisation under ``fork_rng``, batches from a seeded
    ``torch.Generator``).
    """
    if x_train.dim() not in (3, 4) or y_train.shape != (x_train.shape[0],):
        raise ValueError(
            f"x_train {tuple(x_train.shape)} / y_train {tuple(y_train.shape)}: expected "
            "(N, C, H, W) or (N, C, L) and (N,)"
        )
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(tuple(x_train.shape[1:]), num_classes, data_range=data_range)
    net.to(device).train()
    x, y = x_train.float().to(device), y_train.long().to(device)
    gen = seeded_generator(seed, device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (batch_size,), generator=gen, device=device)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def extract_features(net: FeatureNet, x: torch.Tensor, batch: int = 1024) -> np.ndarray:
    """Features ``(N, feature_dim)`` as float64 numpy; ``net``'s train/eval mode is restored."""
    device = net.data_lo.device
    was_training = net.training
    net.eval()
    try:
        out = [net.features(x[i : i + batch].float().to(device)).double().cpu() for i in range(0, len(x), batch)]
    finally:
        net.train(was_training)
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class FrechetResult:
    """Per-class Fréchet distances (index = class) and their mean."""

    per_class: tuple[float, ...]
    mean: float


def class_conditional_frechet(
    net: FeatureNet,
    x_a: torch.Tensor,
    y_a: torch.Tensor,
    x_b: torch.Tensor,
    y_b: torch.Tensor,
    num_classes: int,
    *,
    batch: int = 1024,
) -> FrechetResult:
    """Mean over classes of the Fréchet distance between features of set a and set b.

    Every class needs at least 2 samples in each set (else ``ValueError`` naming the class).
    """
    fa, fb = extract_features(net, x_a, batch), extract_features(net, x_b, batch)
    return class_conditional_frechet_features(fa, y_a, fb, y_b, num_classes)


def class_conditional_frechet_features(fa: np.ndarray, y_a, fb: np.ndarray, y_b, num_classes: int) -> FrechetResult:
    """:func:`class_conditional_frechet` on features already extracted (``(N, F)`` each), so a set compared
    with several others is passed through the network once."""
    ya, yb = (
        np.asarray(y_a.cpu() if hasattr(y_a, "cpu") else y_a),
        np.asarray(y_b.cpu() if hasattr(y_b, "cpu") else y_b),
    )
    per = []
    for k in range(num_classes):
        na, nb = int((ya == k).sum()), int((yb == k).sum())
        if na < 2 or nb < 2:
            raise ValueError(f"class {k}: {na} and {nb} samples; need >= 2 in each set")
        per.append(frechet_distance(*gaussian_stats(fa[ya == k]), *gaussian_stats(fb[yb == k])))
    return FrechetResult(per_class=tuple(per), mean=float(np.mean(per)))
