"""sgdlab.models — the model zoo behind one factory, :func:`build_model`.

>>> m = build_model("mlp", (1, 28, 28), 10, widths=(64,), seed=0)
>>> param_count(m)
50890

Registered names: ``mlp``, ``cnn`` (DeepOBS fmnist_2c2d), ``resnet`` (CIFAR-style, with or without
BatchNorm), ``two_layer_relu``, ``diag_linear``, ``conv1d`` (MNIST-1D). ``input_shape`` is the
shape of ONE sample (no batch dimension). Unknown names, unknown kwargs and input shapes a model
cannot take raise :class:`ModelConfigError` (a ``ValueError``) naming the model, the key and what
is allowed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .cnn import CNN2C2D, Conv1DNet
from .mlp import MLP, DiagonalLinear, TwoLayerReLU
from .resnet import ResNet

__all__ = [
    "CNN2C2D",
    "MLP",
    "Conv1DNet",
    "DiagonalLinear",
    "ModelConfigError",
    "ModelEntry",
    "ResNet",
    "TwoLayerReLU",
    "build_model",
    "list_models",
    "model_kwargs",
    "param_count",
]


class ModelConfigError(ValueError):
    """Bad model name, kwarg or input shape; the message names the model and what is allowed."""


def _shape_error(name: str, need: str, shape: tuple[int, ...]) -> ModelConfigError:
    return ModelConfigError(f"model {name!r} needs {need} input, dataset gives {tuple(shape)}")


def _build_mlp(
    shape,
    out,
    *,
    widths: Sequence[int] = (512, 512),
    activation: str = "relu",
    flatten: bool = True,
    rotate_inputs: int | None = None,
    zero_init: bool = False,
    norm: str | None = None,
    train_last_layer: bool = True,
) -> nn.Module:
    if not flatten and len(shape) != 1:
        raise _shape_error("mlp", "(D,) (or flatten=True)", shape)
    if any(int(w) < 1 for w in widths):
        raise ModelConfigError(f"model 'mlp': widths={tuple(widths)} must all be >= 1")
    try:
        return MLP(
            math.prod(shape),
            out,
            tuple(int(w) for w in widths),
            activation,
            flatten,
            rotate_inputs,
            bool(zero_init),
            norm,
            bool(train_last_layer),
        )
    except ValueError as e:
        raise ModelConfigError(f"model 'mlp': {e}") from None


def _build_cnn(shape, out, *, width: float = 1.0) -> nn.Module:
    if len(shape) != 3:
        raise _shape_error("cnn", "(C,H,W)", shape)
    if not width > 0:
        raise ModelConfigError(f"model 'cnn': width={width!r} must be > 0")
    return CNN2C2D(tuple(shape), out, width)


def _build_resnet(shape, out, *, depth: int = 20, width: float = 1.0, norm: str = "batch") -> nn.Module:
    if len(shape) != 3:
        raise _shape_error("resnet", "(C,H,W)", shape)
    if not width > 0:
        raise ModelConfigError(f"model 'resnet': width={width!r} must be > 0")
    try:
        return ResNet(shape[0], out, depth, width, norm)
    except ValueError as e:
        raise ModelConfigError(f"model 'resnet': {e}") from None


def _build_two_layer(
    shape,
    out,
    *,
    width: int = 256,
    fixed_second_layer: bool = False,
    symmetric_init: bool = False,
    bias: bool = True,
    scale: str = "ntk",
    init_scale: float = 1.0,
) -> nn.Module:
    try:
        return TwoLayerReLU(math.prod(shape), out, width, fixed_second_layer, symmetric_init, bias, scale, init_scale)
    except ValueError as e:
        raise ModelConfigError(f"model 'two_layer_relu': {e}") from None


def _build_diag(shape, out, *, alpha: float = 0.1) -> nn.Module:
    try:
        return DiagonalLinear(math.prod(shape), out, alpha)
    except ValueError as e:
        raise ModelConfigError(f"model 'diag_linear': {e}") from None


def _build_conv1d(shape, out, *, channels: int = 25) -> nn.Module:
    if len(shape) not in (1, 2) or shape[-1] < 3:
        raise _shape_error("conv1d", "(L,) or (C,L) with L >= 3", shape)
    if channels < 1:
        raise ModelConfigError(f"model 'conv1d': channels={channels!r} must be >= 1")
    return Conv1DNet(tuple(shape), out, channels)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its builder ``(input_shape, num_outputs, **kwargs)`` and a summary."""

    name: str
    builder: Callable[..., nn.Module]
    summary: str


_REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            "mlp",
            _build_mlp,
            "MLP; any input shape flattened; widths, activation, norm (scale-invariant with train_last_layer=False)",
        ),
        ModelEntry("cnn", _build_cnn, "DeepOBS fmnist_2c2d: conv32-conv64-fc1024; (C,H,W) input"),
        ModelEntry("resnet", _build_resnet, "CIFAR ResNet-(6n+2), norm='batch'|'none'; (C,H,W)"),
        ModelEntry("two_layer_relu", _build_two_layer, "two-layer ReLU net for the theory tasks"),
        ModelEntry("diag_linear", _build_diag, "diagonal linear net w = u*u - v*v, init alpha"),
        ModelEntry("conv1d", _build_conv1d, "1-D conv net for MNIST-1D; (L,) or (C,L) input"),
    )
}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelConfigError(f"unknown model {name!r}; allowed: {list_models()}") from None


def model_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments model ``name`` accepts, with their defaults."""
    sig = inspect.signature(_entry(name).builder)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` for samples of shape ``input_shape`` with ``num_outputs`` outputs.

    ``seed``: initialise inside ``torch.random.fork_rng`` seeded with it, so the same seed gives the
    same weights and the global RNG is left untouched; ``None`` draws from the global RNG.
    ``device``/``dtype``: where and in which precision the parameters live (default CPU, float32).
    Unknown ``name`` or kwargs, and input shapes the model cannot take, raise ModelConfigError.
    """
    entry = _entry(name)
    allowed = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ModelConfigError(f"model {name!r}: unknown kwarg(s) {unknown}; allowed: {sorted(allowed)}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ModelConfigError(
            f"model {name!r}: input_shape={tuple(input_shape)} must be non-empty with every size"
            " >= 1 (shape of one sample, no batch dim)"
        )
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ModelConfigError(f"model {name!r}: num_outputs={num_outputs!r} must be an int >= 1")
    if seed is None:
        model = entry.builder(shape, num_outputs, **kwargs)
    else:
        from sgdlab import rng

        with rng.LOCK, torch.random.fork_rng(devices=[]):  # no other thread reseeds it meanwhile (sgdlab.rng)
            torch.manual_seed(seed)
            model = entry.builder(shape, num_outputs, **kwargs)
    return model.to(device=device, dtype=dtype)


def param_count(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` unless told otherwise)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
