"""Predictors of generalization: each maps a trained classifier to one number.

Every predictor is a small object with ``name``, ``kind`` and ``predict(model) -> float``:

- ``kind == "test_error"``: the number is a *predicted test error* in [0, 1], comparable to the
  true test error directly (MAE) and by rank (Kendall tau): ``GANPredictor`` (error on a
  GAN-synthesised labelled set; Zhang, Gupta, Saunshi, Arora, ICLR 2022),
  ``ValidationPredictor`` (error on held-out real data, the oracle-like baseline),
  ``TrainErrorPredictor`` (training error, the naive baseline).
- ``kind == "measure"``: a complexity measure, larger = predicted to generalize worse; only its
  *rank* is meaningful (Kendall tau / granulated tau / PGDL score against the generalization
  gap): ``SharpnessPredictor`` (Hessian lambda_max), ``TracePredictor`` (Hessian trace) and
  ``PACBayesFlatnessPredictor`` (in ``sgdlab.generalization.flatness``).

The model is a ``torch.nn.Module`` mapping inputs ``(B, ...)`` to logits ``(B, K)``. Predictors
never leave state behind: train/eval mode is restored, no ``.grad`` is written, weights are
unchanged. Data given to a predictor stays on its device; batches are moved to the model's
device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GANPredictor",
    "SharpnessPredictor",
    "TracePredictor",
    "TrainErrorPredictor",
    "ValidationPredictor",
    "classification_error",
    "model_device",
]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a stateless module."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_xy(name: str, x: torch.Tensor, y: torch.Tensor, labels: bool = True) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: x and y must be torch.Tensor")
    if (labels and y.dim() != 1) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: x {tuple(x.shape)} and y {tuple(y.shape)} must be non-empty with one label per sample"
        )
    if labels and y.dtype.is_floating_point:
        raise TypeError(f"{name}: y dtype {y.dtype} must be an integer class index")


@torch.no_grad()
def classification_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of samples whose argmax logit differs from ``y``; model evaluated in eval mode
    (mode restored afterwards)."""
    _check_xy("classification_error", x, y)
    device = model_device(model)
    was_training = model.training
    model.eval()
    wrong = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i : i + batch_size].to(device))  # (B, K)
            wrong += int((logits.argmax(dim=1) != y[i : i + batch_size].to(device)).sum())
    finally:
        model.train(was_training)
    return wrong / x.shape[0]


@dataclass(eq=False)
class _ErrorOnSet:
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int = 1024
    name: str = "error"
    kind: str = field(default="test_error", init=False)

    def __post_init__(self) -> None:
        _check_xy(type(self).__name__, self.x, self.y)

    def predict(self, model: nn.Module) -> float:
        """Predicted test error: the model's classification error on this set."""
        return classification_error(model, self.x, self.y, self.batch_size)


@dataclass(eq=False)
class GANPredictor(_ErrorOnSet):
    """Predicted test error = error on a labelled synthetic set from a class-conditional GAN
    trained on the training split (Zhang et al., ICLR 2022). ``x``, ``y``: output of
    ``sgdlab.gan.sample_synthetic``."""

    name: str = "gan"


@dataclass(eq=False)
class ValidationPredictor(_ErrorOnSet):
    """Predicted test error = error on held-out real data (needs data the GAN method saves)."""

    name: str = "validation"


@dataclass(eq=False)
class TrainErrorPredictor(_ErrorOnSet):
    """Predicted test error = training error (ignores the gap entirely; a floor to beat)."""

    name: str = "train_error"


@dataclass(eq=False)
class SharpnessPredictor:
    """Measure = top Hessian eigenvalue lambda_max of the mean training loss on ``(x, y)``.

    Calls ``sgdlab.hessian.top_eigenvalues(model, loss_fn, (x, y), k=1, tol=tol, seed=seed,
    bn_mode=bn_mode)`` (Lanczos). Use a fixed probe subset (``sgdlab.hessian.probe_subset``).
    Caveat: lambda_max moves with lr and batch size without changing generalization (Kaur,
    Cohen, Lipton 2023).
    """

    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    tol: float = 1e-3
    seed: int = 0
    bn_mode: str = "eval"
    name: str = "lambda_max"
    kind: str = field(default="measure", init=False)

    def __post_init__(self) -> None:
        _check_xy(type(self).__name__, self.x, self.y, labels=False)  # any loss_fn target

    def predict(self, model: nn.Module) -> float:
        from sgdlab.hessian import top_eigenvalues  # lazy: optional heavy dependency chain

        res = top_eigenvalues(
            model,
            self.loss_fn,
            (self.x, self.y),
            k=1,
            tol=self.tol,
            seed=self.seed,
            bn_mode=self.bn_mode,
        )
        return float(res.eigenvalues[0])


@dataclass(eq=False)
class TracePredictor:
    """Measure = Hessian trace of the mean training loss on ``(x, y)`` (Hutchinson with
    ``n_probes`` Rademacher probes via ``sgdlab.hessian.trace``; the estimate, not its error)."""

    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    n_probes: int = 50
    seed: int = 0
    bn_mode: str = "eval"
    name: str = "hessian_trace"
    kind: str = field(default="measure", init=False)

    def __post_init__(self) -> None:
        _check_xy(type(self).__name__, self.x, self.y, labels=False)
        if not isinstance(self.n_probes, int) or self.n_probes < 1:
            raise ValueError(f"n_probes={self.n_probes!r}: must be a positive int")

    def predict(self, model: nn.Module) -> float:
        from sgdlab.hessian import trace

        res = trace(
            model,
            self.loss_fn,
            (self.x, self.y),
            n_probes=self.n_probes,
            seed=self.seed,
            bn_mode=self.bn_mode,
        )
        return float(res.estimate)
