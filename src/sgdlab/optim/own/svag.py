"""SVAG: Stochastic Variance Amplified Gradient, the SDE-validation algorithm.

Li, Malladi, Arora 2021, "On the Validity of Modeling SGD with Stochastic Differential Equations"
(SGD form); Malladi, Lyu, Panigrahi, Arora 2022, "On the SDEs and Scaling Rules for Adaptive
Gradient Algorithms" (RMSprop/Adam form).

Each step draws two independent minibatches gamma_1, gamma_2 and uses the gradient of

    a L_{gamma_1} + b L_{gamma_2},   a, b = (1 +- sqrt(2m - 1)) / 2,

so a + b = 1 (mean gradient unchanged) and a^2 + b^2 = m (noise covariance x m).
SGD form: m = l, step lr / l, run l x as many steps.
Adam form: m = l^2, lr / l, (1 - beta_i) / l^2, eps * l, run l^2 x as many steps (beta1 = 0, i.e.
RMSprop, has no first moment and stays 0).

Heavy-ball form (``svag_momentum``; derived here, not taken from either paper -- neither paper's text
was at hand to check whether it states a momentum rule, so that is NOT verified). torch convention
v <- mu v + g, p <- p - lr v is exactly the EMA form m <- beta m + (1 - beta) g, p <- p - eta m with
beta = mu, m = (1 - mu) v and effective lr eta = lr / (1 - mu). In SDE time t = k eta (one step is
dt = eta) the pair (x, m) follows, as eta -> 0 with c = (1 - beta) / eta held fixed,

    dX = -M dt,    dM = c (grad L(X) - M) dt + c sqrt(eta) Sigma^{1/2} dW

(per step the drift of m is (1 - beta)(g - m) = c (g - m) dt and its noise covariance
(1 - beta)^2 Sigma = c^2 eta Sigma dt). Variance x l, eta / l and (1 - beta) / l keep c and the noise
per unit time (c^2 eta^2 Sigma / l per step, l / eta steps) fixed, so the SVAG rule is: m = l
(coefficients as for SGD), eta -> eta / l, 1 - beta -> (1 - beta) / l, l x as many steps. In torch
terms mu_l = 1 - (1 - mu) / l and lr_l = eta_l (1 - mu_l) = lr / l^2. As l -> infinity this converges
to the momentum SDE above (momentum kept as a state variable, relaxation time 1/c in SDE time). The
other consistent reading -- mu fixed and lr / l, the linear rule's "keep mu" -- converges instead to
the first-order SDE of SGD with lr eta, i.e. assumes the momentum relaxes instantly; when 1 - mu is
of order eta (mu = 0.9 and lr = 0.01, i.e. eta = 0.1, give c = 1) that limit does not match the base
run, which is why it is not used. l = 1 is exactly torch SGD with momentum on batch 0 (mu and lr
passed through unchanged). Dampening and Nesterov are not offered.

Convention: the registered optimizers take the *base* hparams plus ``l`` and apply the
transformation themselves; ``param_groups`` hold the effective values (lr / l, ...), which is what
an lr scheduler scales and what a logger sees. ``l = 1`` is exactly SGD / Adam on one batch
(b = 0), except that two batches are still drawn.

Why own code: ``pytorch_optimizer.MSVAG`` is Balles & Hennig's M-SVAG, an unrelated method.
"""

from __future__ import annotations

import math

import torch

from ..registry import HParam, OptimizerSpec, register


def svag_coefficients(m: float) -> tuple[float, float]:
    """(a, b) = ((1 + sqrt(2m-1))/2, (1 - sqrt(2m-1))/2): a + b = 1, a^2 + b^2 = m (m >= 1)."""
    if m < 1:
        raise ValueError(f"svag: variance multiplier m = {m!r} must be >= 1")
    s = math.sqrt(2.0 * m - 1.0)
    return (1.0 + s) / 2.0, (1.0 - s) / 2.0


class _TwoBatchMixin:
    """Replace the gradient by ``a g(batch 0) + b g(batch 1)`` before the base update."""

    def _variance_multiplier(self) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def accumulate_gradient(self, closure) -> torch.Tensor:
        """Run ``closure(0)`` and ``closure(1)``; leave the SVAG gradient in ``p.grad``.

        Returns the mean of the two minibatch losses (a low-variance estimate of L; the SVAG
        loss a L1 + b L2 is unbiased too but its variance grows with l).
        """
        a, b = svag_coefficients(self._variance_multiplier())
        params = [p for g in self.param_groups for p in g["params"]]
        with torch.enable_grad():
            loss0 = closure(0)
        g0 = [None if p.grad is None else p.grad.detach().clone() for p in params]
        with torch.enable_grad():
            loss1 = closure(1)
        for p, g in zip(params, g0):
            if g is None and p.grad is None:
                continue
            g = torch.zeros_like(p) if g is None else g
            g1 = torch.zeros_like(p) if p.grad is None else p.grad.detach()
            p.grad = a * g + b * g1
        return (loss0 + loss1) / 2

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("svag: step() needs a closure(k) over two independent batches")
        loss = self.accumulate_gradient(closure)
        super().step()
        return loss


class SVAG(_TwoBatchMixin, torch.optim.SGD):
    """SVAG for SGD: gradient ``a g1 + b g2`` with m = l, plain SGD step of size ``lr / l``."""

    def __init__(self, params, *, lr, l, weight_decay=0.0):  # noqa: E741 (paper's symbol)
        super().__init__(params, lr=lr / l, weight_decay=weight_decay)
        self.svag_l = float(l)

    def _variance_multiplier(self) -> float:
        return self.svag_l


def svag_momentum_effective(lr: float, momentum: float, l: float) -> tuple[float, float]:  # noqa: E741
    """Heavy-ball SVAG hparams in torch convention: (lr / l^2, 1 - (1 - mu) / l); l = 1 returns them unchanged."""
    if l == 1:
        return lr, momentum
    return lr / l**2, 1.0 - (1.0 - momentum) / l


class SVAGMomentum(_TwoBatchMixin, torch.optim.SGD):
    """SVAG for heavy-ball SGD: gradient ``a g1 + b g2`` with m = l, SGD momentum on the effective hparams."""

    def __init__(self, params, *, lr, l, momentum=0.9, weight_decay=0.0):  # noqa: E741
        lr_e, mu_e = svag_momentum_effective(lr, momentum, l)
        super().__init__(params, lr=lr_e, momentum=mu_e, weight_decay=weight_decay)
        self.svag_l = float(l)

    def _variance_multiplier(self) -> float:
        return self.svag_l


def svag_adam_effective(lr: float, betas: tuple, eps: float, l: float) -> tuple:  # noqa: E741
    """Adam-form SVAG hparams: (lr/l, (1 - (1-b1)/l^2, 1 - (1-b2)/l^2), eps*l); b1 = 0 stays 0."""
    b1, b2 = betas
    b1_eff = 0.0 if b1 == 0.0 else 1.0 - (1.0 - b1) / l**2
    return lr / l, (b1_eff, 1.0 - (1.0 - b2) / l**2), eps * l


class SVAGAdam(_TwoBatchMixin, torch.optim.Adam):
    """SVAG for Adam / bias-corrected RMSprop (betas=(0, b2)): m = l^2, Adam on effective hparams."""

    def __init__(self, params, *, lr, l, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):  # noqa: E741
        lr_e, betas_e, eps_e = svag_adam_effective(lr, betas, eps, l)
        super().__init__(params, lr=lr_e, betas=betas_e, eps=eps_e, weight_decay=weight_decay)
        self.svag_l = float(l)

    def _variance_multiplier(self) -> float:
        return self.svag_l**2


_L = HParam("l", 1.0, "SVAG variance amplification l >= 1", float, "ge1")
_LOOP = " LOOP: 2 independent minibatches per step, closure(0) and closure(1); param_groups hold the effective lr"

register(
    OptimizerSpec(
        name="svag",
        family="sde",
        source="sgdlab",
        summary="SVAG (SGD form): grad of a L_g1 + b L_g2, a,b=(1+-sqrt(2l-1))/2, step lr/l." + _LOOP,
        paper="Li, Malladi, Arora 2021, On the Validity of Modeling SGD with SDEs",
        hparams=(
            HParam("lr", 0.1, "base SGD learning rate (the step is lr / l)", float, "positive"),
            _L,
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
        ),
        batches_per_step=2,
    ),
    lambda named, h: SVAG([p for _, p in named], **h),
)

register(
    OptimizerSpec(
        name="svag_momentum",
        family="sde",
        source="sgdlab",
        summary=(
            "SVAG (heavy-ball form): a,b=(1+-sqrt(2l-1))/2, torch SGD momentum with lr/l^2 and "
            "1-(1-mu)/l (EMA form: effective lr/(1-mu) over l, (1-mu) over l), run l x the steps." + _LOOP
        ),
        paper="Li, Malladi, Arora 2021, On the Validity of Modeling SGD with SDEs (heavy-ball rule derived here)",
        hparams=(
            HParam("lr", 0.05, "base SGD-momentum learning rate (torch convention)", float, "positive"),
            _L,
            HParam("momentum", 0.9, "base momentum mu (torch convention v <- mu v + g)", float, "unit"),
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
        ),
        batches_per_step=2,
    ),
    lambda named, h: SVAGMomentum([p for _, p in named], **h),
)

register(
    OptimizerSpec(
        name="svag_adam",
        family="sde",
        source="sgdlab",
        summary=(
            "SVAG (Adam/RMSprop form): a,b=(1+-sqrt(2l^2-1))/2, Adam with lr/l, (1-beta)/l^2, "
            "eps*l; betas=(0, b2) is the bias-corrected RMSprop (beta1 stays 0)." + _LOOP
        ),
        paper="Malladi, Lyu, Panigrahi, Arora 2022, On the SDEs and Scaling Rules for Adaptive Gradient Algorithms",
        hparams=(
            HParam("lr", 1e-3, "base Adam learning rate", float, "positive"),
            _L,
            HParam("betas", (0.9, 0.999), "base (beta1, beta2)", tuple, "betas", length=2),
            HParam("eps", 1e-8, "base epsilon", float, "positive"),
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
        ),
        batches_per_step=2,
    ),
    lambda named, h: SVAGAdam([p for _, p in named], **h),
)
