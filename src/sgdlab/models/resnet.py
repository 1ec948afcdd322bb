"""Small CIFAR-style ResNets (ResNet-8/14/20/...) with or without BatchNorm.

He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2: a 3x3 stem,
three stages of ``n`` basic blocks with 16, 32, 64 channels (times ``width``), stride 2 between
stages, global average pooling and a linear head; depth = 6n + 2. Shortcuts that change shape are
1x1 strided convolutions (option B). ``norm="none"`` drops BatchNorm and gives the convolutions a
bias, the variant used to study BatchNorm's effect on sharpness and optimizer behaviour.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(x' + conv-norm-relu-conv-norm(x))`` with ``x'`` the (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.n1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.n2 = _norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        out = torch.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth ``6 * blocks_per_stage + 2``; ``width`` scales 16/32/64."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        depth: int = 20,
        width: float = 1.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth} is not 6n+2 with n >= 1 (e.g. 8, 14, 20, 32)")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is not supported; allowed: {list(NORMS)}")
        n = (depth - 2) // 6
        chans = [max(1, round(c * width)) for c in (16, 32, 64)]
        bias = norm == "none"
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, chans[0], 3, padding=1, bias=bias),
            _norm(norm, chans[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        c_prev = chans[0]
        for stage, c in enumerate(chans):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c_prev, c, stride, norm))
                c_prev = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_prev, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, out)
        h = self.blocks(self.stem(x))  # (N, 64w, H/4, W/4)
        return self.head(h.mean(dim=(2, 3)))  # global average pool -> (N, 64w)
