"""Stochastic Polyak step size, SPS_max.

Loizou, Vaswani, Laradji, Lacoste-Julien 2021, "Stochastic Polyak Step-size for SGD: An Adaptive
Learning Rate for Fast Convergence" (AISTATS), eq. SPS_max:

    gamma_k = min( (f_i(x_k) - f_i^*) / (c ||grad f_i(x_k)||^2),  gamma_b ),   x <- x - gamma_k g

with f_i the minibatch loss returned by the closure, f_i^* a lower bound on it (default 0, exact for
interpolating models with non-negative losses), ||.|| the global l2 norm over all params.
Here ``lr`` is the cap gamma_b (so an lr schedule scales the cap). The last step size is kept in
``param_groups[i]["last_step_size"]`` for logging.

Why own code: no maintained library ships SPS (the PyPI name ``sps`` is an unrelated project).
"""

from __future__ import annotations

import torch

from ..registry import HParam, OptimizerSpec, register


def sps_step_size(loss: float, f_star: float, grad_sq_norm: float, c: float, gamma_max: float) -> float:
    """SPS_max step size; 0 when the gradient vanishes or the loss is already <= f_star."""
    if grad_sq_norm <= 0.0:
        return 0.0
    return min(max(loss - f_star, 0.0) / (c * grad_sq_norm), gamma_max)


class SPS(torch.optim.Optimizer):
    """SGD with the SPS_max step size (needs the closure's loss)."""

    def __init__(self, params, *, lr, c=0.5, f_star=0.0):
        super().__init__(params, {"lr": lr, "c": c, "f_star": f_star, "last_step_size": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("sps: step() needs a closure returning the minibatch loss")
        with torch.enable_grad():
            loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        sq = float(sum(torch.sum(g * g) for g in grads)) if grads else 0.0
        f = float(loss)
        for group in self.param_groups:
            gamma = sps_step_size(f, group["f_star"], sq, group["c"], group["lr"])
            group["last_step_size"] = gamma
            for p in group["params"]:
                if p.grad is not None and gamma > 0:
                    p.sub_(p.grad, alpha=gamma)
        return loss


register(
    OptimizerSpec(
        name="sps",
        family="adaptive",
        source="sgdlab",
        summary=(
            "SGD with stochastic Polyak step min((f_i - f_star)/(c||g||^2), lr); lr is the cap "
            "gamma_b; needs the closure's loss (the mean minibatch loss)"
        ),
        paper="Loizou, Vaswani, Laradji, Lacoste-Julien 2021 (SPS_max)",
        hparams=(
            HParam("lr", 1.0, "cap gamma_b on the Polyak step", float, "positive"),
            HParam("c", 0.5, "Polyak constant c", float, "positive"),
            HParam("f_star", 0.0, "lower bound f_i^* on the minibatch loss", float, "finite"),
        ),
    ),
    lambda named, h: SPS([p for _, p in named], **h),
)
