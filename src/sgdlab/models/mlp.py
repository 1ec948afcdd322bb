"""Fully connected models: MLP, two-layer ReLU net (theory papers), diagonal linear network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    """``nn.Module`` for an activation name; unknown names raise listing the allowed ones."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported; allowed: {sorted(_ACTIVATIONS)}") from None


class FixedRotation(nn.Module):
    """``x -> Q x`` for a fixed random orthogonal ``Q`` (d, d): the same problem in rotated coordinates.

    ``Q`` is the QR factor of a standard Gaussian matrix drawn from its own generator seeded with ``seed``
    (signs fixed so it is Haar-distributed), independent of the model's initialisation seed. A buffer: saved in
    checkpoints, never trained. A linear model from a rotation-invariant init (zeros) trained by GD/SGD on
    ``Q x`` follows ``W_t Q^T`` exactly: SGD is rotation-equivariant, coordinate-wise methods (Adam) are not.
    """

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar measure (Mezzadri 2007)
        self.register_buffer("Q", q.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, d)
        return x @ self.Q.T


_NORMS = ("layer", "batch")
# The normalization layers' eps: torch's default 1e-5 breaks scale invariance measurably (a relative 2e-5 change
# of the outputs under w -> 3.7 w); 1e-10 keeps it to rounding, and a hidden layer's variance never gets near it.
NORM_EPS = 1e-10


class MLP(nn.Module):
    """Multi-layer perceptron ``in -> widths[0] -> ... -> widths[-1] -> out``.

    With ``flatten=True`` any input ``(N, *shape)`` is flattened to ``(N, prod(shape))`` first.

    ``norm="layer"`` / ``"batch"`` puts a LayerNorm / BatchNorm1d *without affine parameters* after every hidden
    linear layer (which then has no bias: ``Linear(bias=False) -> norm -> activation``). Each hidden layer's
    output is then invariant to the scale of its weights. With ``train_last_layer=False`` the output layer is a
    fixed random buffer (not trained, not decayed), so the loss is scale-invariant in *all* trainable
    parameters, ``L(c w) = L(w)`` for ``c > 0``: the setting of Lyu, Li, Arora 2022 ("Understanding the
    Generalization Benefit of Normalization Layers: Sharpness Reduction"), which fixes the last layer for the
    same reason. BatchNorm is scale-invariant only with batch statistics (train mode); in eval mode its running
    statistics lag the weights. :meth:`is_scale_invariant` says which holds.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        widths: Sequence[int] = (512, 512),
        activation_name: str = "relu",
        flatten: bool = True,
        rotate_inputs: int | None = None,
        zero_init: bool = False,
        norm: str | None = None,
        train_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if norm not in (None, *_NORMS):
            raise ValueError(f"norm={norm!r} is not supported; allowed: [None, 'batch', 'layer']")
        if norm is not None and not widths:
            raise ValueError(f"norm={norm!r} needs at least one hidden layer (widths=[] is a linear model)")
        layers: list[nn.Module] = [nn.Flatten()] if flatten else []
        if rotate_inputs is not None:
            layers.append(FixedRotation(in_features, rotate_inputs))
        prev = in_features
        for w in widths:
            layers.append(nn.Linear(prev, w, bias=norm is None))
            if norm == "layer":
                layers.append(nn.LayerNorm(w, eps=NORM_EPS, elementwise_affine=False))
            elif norm == "batch":
                layers.append(nn.BatchNorm1d(w, eps=NORM_EPS, affine=False))
            layers.append(activation(activation_name))
            prev = w
        last = nn.Linear(prev, num_outputs)
        if not train_last_layer:
            last.weight.requires_grad_(False)
            last.bias.requires_grad_(False)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.norm, self.train_last_layer = norm, bool(train_last_layer)
        if not train_last_layer:  # fixed: buffers, so optimizers, weight decay and Hessian probes never see them
            w_, b_ = last.weight.detach().clone(), last.bias.detach().clone()
            del last.weight, last.bias
            last.register_buffer("weight", w_)
            last.register_buffer("bias", b_)
        if zero_init:
            if widths:
                raise ValueError("zero_init=True needs widths=[] (a linear model): hidden units would stay identical")
            with torch.no_grad():
                for m in self.net:
                    if isinstance(m, nn.Linear):
                        m.weight.zero_()
                        m.bias.zero_()

    def is_scale_invariant(self, bn_mode: str = "eval") -> bool:
        """Whether the output is invariant to scaling all trainable parameters by one ``c > 0`` (with BatchNorm
        in ``bn_mode``): normalization after every hidden layer and a fixed output layer."""
        if self.norm is None or self.train_last_layer:
            return False
        return self.norm == "layer" or bn_mode == "train"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, ...) -> (N, num_outputs)
        return self.net(x)


class TwoLayerReLU(nn.Module):
    """Two-layer ReLU network ``f(x) = scale * sum_j a_j relu(w_j . x + b_j)``.

    The parametrisation of the mean-field / NTK theory papers: ``scale = 1/sqrt(m)`` ("ntk") or
    ``1/m`` ("mf"), first-layer weights ``w_j ~ N(0, init_scale^2 / d)``, second layer
    ``a_j = ±1`` (uniform signs). ``fixed_second_layer=True`` makes ``a`` a buffer (only the first
    layer trains). ``symmetric_init=True`` duplicates the first half of the neurons with opposite
    ``a`` so that ``f = 0`` at initialisation (the antisymmetric trick of Chizat, Oyallon & Bach
    2019, "On Lazy Training in Differentiable Programming"); it needs an even width.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        width: int = 256,
        fixed_second_layer: bool = False,
        symmetric_init: bool = False,
        bias: bool = True,
        scale: str = "ntk",
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if width < 1 or (symmetric_init and width % 2):
            raise ValueError(f"width={width} must be >= 1{' and even with symmetric_init=True' * symmetric_init}")
        if scale not in ("ntk", "mf"):
            raise ValueError(f"scale={scale!r} is not supported; allowed: ['mf', 'ntk']")
        self.flatten = nn.Flatten()
        self.out_scale = 1.0 / math.sqrt(width) if scale == "ntk" else 1.0 / width
        half = width // 2 if symmetric_init else width
        w = torch.randn(half, in_features) * (init_scale / math.sqrt(in_features))
        b = torch.zeros(half) if bias else None
        a = torch.randint(0, 2, (num_outputs, half)).float() * 2 - 1  # (out, half) of ±1
        if symmetric_init:
            w, a = torch.cat([w, w]), torch.cat([a, -a], dim=1)
            b = torch.cat([b, b]) if b is not None else None
        self.w = nn.Parameter(w)  # (m, d)
        self.b = nn.Parameter(b) if b is not None else None
        if fixed_second_layer:
            self.register_buffer("a", a)
        else:
            self.a = nn.Parameter(a)  # (out, m)

    @torch.no_grad()
    def log_metrics(self) -> dict[str, float]:
        """Logged by the training loop at every log point: how concentrated the first layer is on few input
        coordinates. ``features/top2_fraction`` = the share of ||W||_F^2 (W = ``w``, (m, d)) on the two input
        coordinates with the largest column norms (2/d in expectation at an isotropic init; near 1 when every
        neuron looks at the same two coordinates, as for XOR on the hypercube)."""
        col = (self.w.detach().double() ** 2).sum(0)  # (d,)
        top = col.topk(min(2, col.numel())).values.sum()
        return {"features/top2_fraction": float(top / col.sum().clamp_min(1e-300))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(x) @ self.w.T  # (N, m)
        if self.b is not None:
            h = h + self.b
        return self.out_scale * torch.relu(h) @ self.a.T  # (N, out)


class DiagonalLinear(nn.Module):
    """Diagonal linear network ``f(x) = <u*u - v*v, x>``; ``u = v = alpha`` at init, so ``w = 0``.

    The model of Woodworth et al. 2020, "Kernel and Rich Regimes in Overparametrized Models": small
    ``alpha`` gives the rich (sparse, l1-like) regime, large ``alpha`` the kernel (l2) regime. With
    ``num_outputs > 1`` each output has its own ``(u, v)`` row.
    """

    def __init__(self, in_features: int, num_outputs: int = 1, alpha: float = 0.1) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha={alpha!r} must be > 0")
        self.flatten = nn.Flatten()
        self.u = nn.Parameter(torch.full((num_outputs, in_features), float(alpha)))  # (out, d)
        self.v = nn.Parameter(torch.full((num_outputs, in_features), float(alpha)))  # (out, d)

    @property
    def weight(self) -> torch.Tensor:
        """Effective linear weight ``u*u - v*v``, shape (out, d)."""
        return self.u * self.u - self.v * self.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(x) @ self.weight.T  # (N, out)
