"""PAC-Bayes flatness measures by random weight perturbation.

Jiang, Neyshabur, Mobahi, Krishnan, Bengio, "Fantastic Generalization Measures and Where to Find
Them", ICLR 2020 (Sec. 7 and App. C.3): ``pacbayes.flatness = 1 / sigma'^2`` and
``pacbayes.mag.flatness = 1 / sigma'^2``, where sigma' is the largest noise scale whose
expected effect on the training criterion stays within a target deviation. These were among the
measures with the strongest correlation to generalization in that study.

Definition used here. With weights ``w`` and noise ``u``:

- plain: ``u_i ~ N(0, sigma^2)``;
- magnitude-aware: ``u_i ~ N(0, sigma^2 w_i^2 + eps^2)`` (noise relative to each weight's size).

``D(sigma) = | E_u[ L(w + u) ] - L(w) |`` on the given training data, ``L`` the classification
error (default, target deviation 0.1 as in the paper) or the mean cross-entropy, ``E_u`` a Monte
Carlo mean over ``n_samples`` draws. sigma' is found by bisection on ``log sigma`` in
``[sigma_min, sigma_max]`` for ``D(sigma') = target``, and the measure is ``1 / sigma'^2``
(larger = sharper = predicted to generalize worse).

Determinism: the k-th Monte Carlo draw uses standard normals from a CPU generator seeded with
``seed + k`` for every sigma tried (common random numbers), so ``D`` is a deterministic and
(nearly) monotone function of sigma, and the result is a function of ``seed``. The model's
weights are restored bit for bit afterwards (copied back from a snapshot), its train/eval mode
is restored, no ``.grad`` is written and the global RNG is not used. The model is evaluated in
eval mode (BatchNorm running statistics, no dropout); buffers are not perturbed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sgdlab.device import generator as seeded_generator
from sgdlab.generalization.predictors import _check_xy, model_device

__all__ = ["FlatnessResult", "PACBayesFlatnessPredictor", "pacbayes_flatness"]

CRITERIA = ("error", "loss")


@dataclass(frozen=True)
class FlatnessResult:
    """sigma' found, the measure ``1 / sigma'^2``, the unperturbed criterion, the deviation at
    sigma', the number of sigma values evaluated, and whether sigma' hit a search bound."""

    sigma: float
    measure: float
    base: float
    deviation: float
    n_evals: int
    at_bound: bool


@torch.no_grad()
def _criterion(model: nn.Module, x, y, criterion: str, batch_size: int, device) -> float:
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i : i + batch_size].to(device))  # (B, K)
        yb = y[i : i + batch_size].to(device)
        if criterion == "error":
            total += float((logits.argmax(dim=1) != yb).sum())
        else:
            total += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
    return total / x.shape[0]


def pacbayes_flatness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    magnitude_aware: bool = True,
    criterion: str = "error",
    target: float = 0.1,
    n_samples: int = 8,
    eps: float = 1e-3,
    sigma_min: float = 1e-6,
    sigma_max: float = 10.0,
    n_iter: int = 20,
    seed: int = 0,
    batch_size: int = 2048,
) -> FlatnessResult:
    """PAC-Bayes (magnitude-aware) flatness ``1 / sigma'^2`` of ``model`` on ``(x, y)``.

    See the module docstring for the exact definition. ``n_iter`` bisection steps on
    ``log sigma`` (resolution ``log(sigma_max / sigma_min) / 2^n_iter``). If even ``sigma_max``
    keeps the deviation within ``target``, sigma' = sigma_max; if ``sigma_min`` already exceeds
    it, sigma' = sigma_min (``at_bound=True`` in both cases).
    """
    _check_xy("pacbayes_flatness", x, y)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}: allowed {CRITERIA}")
    if not target > 0:
        raise ValueError(f"target={target!r}: must be > 0")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}: need 0 < min < max")
    for name, v in (("n_samples", n_samples), ("n_iter", n_iter), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be a positive int")
    params = [p for p in model.parameters()]
    if not params:
        raise ValueError("model has no parameters to perturb")
    device = model_device(model)
    snapshot = [p.detach().clone() for p in params]
    was_training = model.training
    n_evals = 0

    def deviation(sigma: float) -> float:
        nonlocal n_evals
        n_evals += 1
        acc = 0.0
        for k in range(n_samples):
            gen = seeded_generator(seed + k)
            with torch.no_grad():
                for p, w in zip(params, snapshot):
                    xi = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device, p.dtype)
                    if magnitude_aware:
                        std = torch.sqrt((sigma * w) ** 2 + eps**2)  # sqrt(sigma^2 w^2 + eps^2)
                    else:
                        std = sigma
                    p.copy_(w + std * xi)
            acc += _criterion(model, x, y, criterion, batch_size, device)
        with torch.no_grad():
            for p, w in zip(params, snapshot):
                p.copy_(w)
        return abs(acc / n_samples - base)

    try:
        model.eval()
        base = _criterion(model, x, y, criterion, batch_size, device)
        lo, hi = math.log(sigma_min), math.log(sigma_max)
        d_hi = deviation(sigma_max)
        if d_hi <= target:
            sigma, dev, at_bound = sigma_max, d_hi, True
        else:
            d_lo = deviation(sigma_min)
            if d_lo > target:
                sigma, dev, at_bound = sigma_min, d_lo, True
            else:
                dev = d_lo
                for _ in range(n_iter):  # invariant: D(e^lo) <= target < D(e^hi)
                    mid = 0.5 * (lo + hi)
                    d_mid = deviation(math.exp(mid))
                    if d_mid <= target:
                        lo, dev = mid, d_mid
                    else:
                        hi = mid
                sigma, at_bound = math.exp(lo), False
    finally:
        with torch.no_grad():
            for p, w in zip(params, snapshot):
                p.copy_(w)
        model.train(was_training)
    return FlatnessResult(
        sigma=sigma,
        measure=1.0 / sigma**2,
        base=base,
        deviation=dev,
        n_evals=n_evals,
        at_bound=at_bound,
    )


@dataclass(eq=False)
class PACBayesFlatnessPredictor:
    """Measure = ``pacbayes(.mag).flatness`` = ``1 / sigma'^2`` on training data ``(x, y)``
    (larger = sharper); see ``pacbayes_flatness``. ``name`` is ``"pacbayes_mag_flatness"`` or
    ``"pacbayes_flatness"``."""

    x: torch.Tensor
    y: torch.Tensor
    magnitude_aware: bool = True
    criterion: str = "error"
    target: float = 0.1
    n_samples: int = 8
    n_iter: int = 20
    seed: int = 0
    name: str = ""
    kind: str = field(default="measure", init=False)

    def __post_init__(self) -> None:
        _check_xy(type(self).__name__, self.x, self.y)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion={self.criterion!r}: allowed {CRITERIA}")
        if not self.name:
            self.name = "pacbayes_mag_flatness" if self.magnitude_aware else "pacbayes_flatness"

    def predict(self, model: nn.Module) -> float:
        return pacbayes_flatness(
            model,
            self.x,
            self.y,
            magnitude_aware=self.magnitude_aware,
            criterion=self.criterion,
            target=self.target,
            n_samples=self.n_samples,
            n_iter=self.n_iter,
            seed=self.seed,
        ).measure
