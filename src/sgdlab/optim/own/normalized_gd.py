"""Normalized gradient descent: x <- x - lr * g / ||g||  (global l2 norm over all params).

Arora, Li, Panigrahi 2022, "Understanding Gradient Descent on Edge of Stability in Deep Learning":
normalized GD enters the Edge of Stability and implicitly reduces the top Hessian eigenvalue.

Why own code: no maintained library has the plain (global-norm, no momentum) update.
"""

from __future__ import annotations

import torch

from ..registry import HParam, OptimizerSpec, register


class NormalizedGD(torch.optim.Optimizer):
    """One step moves the concatenated parameter vector by exactly ``lr`` (if ``g != 0``).

    The norm is taken over all parameters of all groups; a group's own ``lr`` scales its part.
    A zero gradient gives no step (rather than 0/0).
    """

    def __init__(self, params, *, lr):
        super().__init__(params, {"lr": lr})

    def stability_threshold(self, lr: float | None = None) -> float:
        """The GD threshold at normalized GD's effective lr, lr / ||g||: ``2 ||g|| / lr`` with ``g`` the gradient
        the last step used (Arora, Li, Panigrahi 2022: on a quadratic, normalized GD's 2-cycle has ``||g|| =
        lambda lr / 2``, i.e. lambda = 2 ||g|| / lr exactly). NaN before the first step."""
        lr = self.param_groups[0]["lr"] if lr is None else lr
        g = self.param_groups[0].get("last_grad_norm")
        return float("nan") if g is None else 2.0 * g / lr

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return loss
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.param_groups[0]["last_grad_norm"] = float(norm)
        if norm == 0:
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(p.grad / norm, alpha=group["lr"])
        return loss


register(
    OptimizerSpec(
        name="normalized_gd",
        family="sgd",
        source="sgdlab",
        summary="normalized (S)GD: x <- x - lr g/||g||, global norm; step length exactly lr",
        paper="Arora, Li, Panigrahi 2022, Understanding Gradient Descent on Edge of Stability",
        hparams=(HParam("lr", 0.01, "step length", float, "positive"),),
    ),
    lambda named, h: NormalizedGD([p for _, p in named], **h),
)
