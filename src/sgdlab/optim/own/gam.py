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

**gam_sam** (the paper's GAM + SAM, its best combination; Sec. "GAM with SAM" / Tables of GAM on top of
SAM -- section and table numbers not verified here, the paper's text was not at hand): minimise SAM's
objective plus GAM's term, L^SAM(theta) + alpha R1(theta), L^SAM(theta) = max_{||e|| <= sam_rho}
L(theta + e). Its gradient replaces the plain g by SAM's perturbed gradient (Foret et al. 2021, the
first-order ascent e = sam_rho g/||g|| and the gradient at theta + e taken as the gradient at theta):

    g_sam  = grad L(theta + sam_rho g / ||g||)
    theta <- base_step(theta, g_sam + alpha h_norm)          (f, th_adv, h_norm exactly as above)

Choices: the SAM ascent and the GAM ascent both start from theta (independent perturbations, each the
paper's own); SAM's radius ``sam_rho`` is a separate hparam from GAM's ``rho`` and from the finite-
difference radius ``fd_radius``; when ``sam_rho == fd_radius`` the two points coincide and the pass is
shared (4 passes per step, else 5). The authors' released code differs from this reading: it ties the
finite-difference radius to SAM's radius, forms ``beta1 g_sam + beta3 grad L(th_adv + rho' g_adv/||g_adv||)``
and applies GSAM's surrogate-gap decomposition (``gamma``); that is GAM + GSAM, not reproduced here.
Reductions (tested): sam_rho = 0 is ``gam`` (the same passes and arithmetic); alpha = 0 or rho = 0 is
``sam`` (SGD + momentum base); both is SGD + momentum. The SAM perturbation is computed as
g * (sam_rho / (||g|| + eps)), SAM's own arithmetic, with SAM's eps = 1e-12 by default.

Why own code: no maintained library provides GAM; the authors' code is unlicensed research code.
"""

from __future__ import annotations

import torch

from ..registry import HParam, OptimizerSpec, register


def _global_norm(vs: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vs]))


class GAM(torch.optim.SGD):
    """GAM on top of torch SGD (heavy-ball momentum in torch convention, L2 weight decay).

    ``sam_rho > 0`` is GAM + SAM (``gam_sam``): SAM's perturbed gradient replaces the plain one.
    """

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
        sam_rho=0.0,
    ):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.rho, self.alpha, self.fd_radius, self.eps = rho, alpha, fd_radius, eps
        self.sam_rho = sam_rho

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

    def _hvp_unit(self, closure, params, x, g_x) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(H(x) u, grad L(x + r u)) with u = g_x/||g_x||: a forward finite difference of radius r = fd_radius."""
        r = self.fd_radius
        u = self._unit(g_x)
        _, g_r = self._grad_at(closure, params, [a + r * b for a, b in zip(x, u)])
        return [(gr - g) / r for gr, g in zip(g_r, g_x)], g_r

    def _sam_gradient(self, closure, params, theta, g, g_fd) -> list[torch.Tensor]:
        """SAM's grad L(theta + sam_rho g/||g||); ``g_fd`` (the gradient at theta + fd_radius g/||g||) when equal."""
        if self.sam_rho == 0:
            return g
        if self.sam_rho == self.fd_radius:
            return g_fd
        scale = self.sam_rho / (_global_norm(g) + self.eps)
        return self._grad_at(closure, params, [t + gi * scale for t, gi in zip(theta, g)])[1]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("gam: step() needs a closure (four or five passes on one minibatch)")
        params = self._params()
        theta = [p.detach().clone() for p in params]
        loss, g = self._grad_at(closure, params, theta)
        f, g_fd = self._hvp_unit(closure, params, theta, g)  # grad ||grad L|| at theta
        g_base = self._sam_gradient(closure, params, theta, g, g_fd)  # g itself for plain GAM
        f_unit = self._unit(f)
        th_adv = [t + self.rho * d for t, d in zip(theta, f_unit)]
        _, g_adv = self._grad_at(closure, params, th_adv)
        h_norm, _ = self._hvp_unit(closure, params, th_adv, g_adv)
        for p, t, gi, hi in zip(params, theta, g_base, h_norm):
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

register(
    OptimizerSpec(
        name="gam_sam",
        family="sharpness-aware",
        source="sgdlab",
        summary=(
            "GAM + SAM over SGD+momentum: grad L(theta + sam_rho g/||g||) + alpha*rho*H(th_adv) g_adv/||g_adv||; "
            "sam_rho=0 is gam, alpha=0 is sam; HVPs by finite differences; closure() called 5x (4x when "
            "sam_rho == fd_radius) on the SAME minibatch"
        ),
        paper="Zhang, Xu, Yu, Zou, Cui 2023, Gradient Norm Aware Minimization (CVPR), GAM + SAM",
        hparams=(
            HParam("lr", 0.05, "base SGD learning rate", float, "positive"),
            HParam("rho", 0.1, "radius of the first-order-flatness ball", float, "nonneg"),
            HParam("alpha", 0.1, "weight of the first-order flatness term", float, "nonneg"),
            HParam("sam_rho", 0.05, "SAM neighbourhood radius", float, "nonneg"),
            HParam("fd_radius", 0.02, "finite-difference radius r for H v", float, "positive"),
            HParam("momentum", 0.9, "base SGD momentum (torch convention)", float, "unit"),
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
            HParam("eps", 1e-12, "added to norms before dividing", float, "positive"),
        ),
    ),
    lambda named, h: GAM([p for _, p in named], **h),
)
