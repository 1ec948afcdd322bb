"""Convolutional models: DeepOBS's fmnist_2c2d CNN and a small 1-D conv net for MNIST-1D."""

from __future__ import annotations

import torch
from torch import nn


def _pool_out(n: int) -> int:
    # 2x2 max-pool, stride 2, "same" padding as in DeepOBS (TensorFlow): ceil(n / 2)
    return (n + 1) // 2


class CNN2C2D(nn.Module):
    """conv32-5x5 -> maxpool -> conv64-5x5 -> maxpool -> fc1024 -> fc(classes), all ReLU.

    The ``fmnist_2c2d`` test problem of DeepOBS (Schneider, Balles & Hennig 2019, "DeepOBS: A Deep
    Learning Optimizer Benchmark Suite"). Convolutions use "same" padding; ``width`` multiplies the
    channel counts and the hidden fc width (width=1: 32, 64, 1024).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_outputs: int, width: float = 1.0):
        super().__init__()
        c, h, w = in_shape
        c1, c2, fc = (max(1, round(k * width)) for k in (32, 64, 1024))
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2),  # (N, c1, H, W)
            nn.ReLU(),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # (N, c1, ceil(H/2), ceil(W/2))
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # (N, c2, H', W')
            nn.Flatten(),
        )
        flat = c2 * _pool_out(_pool_out(h)) * _pool_out(_pool_out(w))
        self.classifier = nn.Sequential(nn.Linear(flat, fc), nn.ReLU(), nn.Linear(fc, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, out)
        return self.classifier(self.features(x))


class Conv1DNet(nn.Module):
    """Small 1-D conv net for MNIST-1D: three stride-2 convolutions (kernel 5, 3, 3) + linear head.

    The architecture family of Greydanus 2020, "Scaling down Deep Learning" (MNIST-1D), with
    ``channels`` (default 25) per conv layer. Accepts ``(N, L)`` (one channel) or ``(N, C, L)``.
    """

    def __init__(self, in_shape: tuple[int, ...], num_outputs: int, channels: int = 25):
        super().__init__()
        c, length = (1, in_shape[0]) if len(in_shape) == 1 else in_shape
        self.in_channels = c
        self.conv = nn.Sequential(
            nn.Conv1d(c, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        for k in (5, 3, 3):  # conv output length: floor((L + 2*pad - k) / stride) + 1
            length = (length + 2 - k) // 2 + 1
        flat = channels * length
        self.head = nn.Linear(flat, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (N, L) -> (N, 1, L)
            x = x.unsqueeze(1)
        return self.head(self.conv(x))
