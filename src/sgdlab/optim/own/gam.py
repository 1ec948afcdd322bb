"""GAM: Gradient norm Aware Minimization (first-order flatness), over SGD(+momentum).

Zhang, Xu, Yu, Zou, Cui 2023, "Gradient Norm Aware Minimization Seeks First-Order Flatness and
Improves Generalization" (CVPR). First-order flatness R1(theta) = rho * max_{||d|| <= rho}
||grad L(theta + d)||; GAM minimises L + alpha R1 with the update (all on one minibatch):

    f      = H(theta) g / ||g||                      (= grad ||grad L|| at theta)
    th_adv = theta + rho f / ||f||                   (ascent on the gradient norm)
    h_norm = rho H(th_adv) g_adv / ||g_adv||          (= rho grad ||grad L|| at th_adv)
    theta <- base_step(theta, g + alpha h_norm)

Hessian-vector products use the paper's first-order finite difference
``H(x) v ~ (grad L(x + r v) - grad L(x)) / r`` with unit ``v``, so one step makes four
forward/backward passes (closure() four times on the SAME minibatch, k = 0) and needs no
double backward. On a quadratic the finite differences are exact.

Why own code: no maintained library provides GAM; the authors' code is unlicensed research code.
"""

from __future__ import annotations

import torch

from ..registry import HParam, OptimizerSpec, register


def _global_norm(vs: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vs]))


class GAM(torch.optim.SGD):
    """GAM on top of torch SGD (heavy-ball momentum in torch convention, L2 weight decay)."""

    def __init__(
        self,
        params,
        *,
        lr,
        rho=0.1,
        alpha=0.1,
        fd_radius=0.02,
        momentum=0.9,
        weight_decay=0.0,
        eps=1e-12,
    ):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.rho, self.alpha, self.fd_radius, self.eps = rho, alpha, fd_radius, eps

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _grad_at(self, closure, params, point) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss and gradient (list, zeros for unused params) at parameters ``point``."""
        for p, x in zip(params, point):
            p.copy_(x)
        with torch.enable_grad():
            loss = closure()
        return loss, [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]

    def _unit(self, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = _global_norm(vs) + self.eps
        return [v / n for v in vs]

    def _hvp_unit(self, closure, params, x, g_x) -> list[torch.Tensor]:
        """H(x) u with u = g_x/||g_x||, by a forward finite difference of radius fd_radius."""
        r = self.fd_radius
        u = self._unit(g_x)
        _, g_r = self._grad_at(closure, params, [a + r * b for a, b in zip(x, u)])
        return [(gr - g) / r for gr, g in zip(g_r, g_x)]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("gam: step() needs a closure (four passes on one minibatch)")
        params = self._params()
        theta = [p.detach().clone() for p in params]
        loss, g = self._grad_at(closure, params, theta)
        f = self._hvp_unit(closure, params, theta, g)  # grad ||grad L|| at theta
        f_unit = self._unit(f)
        th_adv = [t + self.rho * d for t, d in zip(theta, f_unit)]
        _, g_adv = self._grad_at(closure, params, th_adv)
        h_norm = self._hvp_unit(closure, params, th_adv, g_adv)
        for p, t, gi, hi in zip(params, theta, g, h_norm):
            p.copy_(t)
            p.grad = gi + (self.alpha * self.rho) * hi
        super().step()
        return loss


register(
    OptimizerSpec(
        name="gam",
        family="sharpness-aware",
        source="sgdlab",
        summary=(
            "GAM over SGD+momentum: grad + alpha*rho*H(th_adv) g_adv/||g_adv||, th_adv ascends the "
            "gradient norm; HVPs by finite differences; closure() called 4x on the SAME minibatch"
        ),
        paper="Zhang, Xu, Yu, Zou, Cui 2023, Gradient Norm Aware Minimization (CVPR)",
        hparams=(
            HParam("lr", 0.05, "base SGD learning rate", float, "positive"),
            HParam("rho", 0.1, "radius of the first-order-flatness ball", float, "nonneg"),
            HParam("alpha", 0.1, "weight of the first-order flatness term", float, "nonneg"),
            HParam("fd_radius", 0.02, "finite-difference radius r for H v", float, "positive"),
            HParam("momentum", 0.9, "base SGD momentum (torch convention)", float, "unit"),
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
            HParam("eps", 1e-12, "added to norms before dividing", float, "positive"),
        ),
    ),
    lambda named, h: GAM([p for _, p in named], **h),
)
