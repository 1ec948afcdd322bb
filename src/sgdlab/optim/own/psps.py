"""PSPS: SGD with a preconditioned stochastic Polyak step size (and its slack variants).

Abdukhakimov, Xiang, Kamzolov, Takáč 2023, "Stochastic Gradient Descent with Preconditioned Polyak
Step-size" (arXiv 2310.02093; Comput. Math. Math. Phys. 64(4):621-634, 2024). SPS (Loizou et al. 2021,
``own/sps.py``) read as a projection onto the linearised interpolation condition, with the distance
measured in a diagonal preconditioner's norm ||v||_B^2 = v^T B v:

    w+ = argmin_w ||w - w_t||_{B_t}^2   s.t.  f_i(w_t) - f_i^* + <g_t, w - w_t> = 0
       = w_t - gamma_t B_t^{-1} g_t,        gamma_t = (f_i(w_t) - f_i^*) / (g_t^T B_t^{-1} g_t)

with f_i the minibatch loss the closure returns and g_t its gradient. B_t = I is SPS with c = 1 and no
cap. The step actually taken is ``lr * min(gamma_t, gamma_max)`` (``lr`` = 1 and ``gamma_max`` = None are
the paper's method; ``lr`` exists so an lr schedule can scale the step). gamma_t = 0 when the loss is
already <= f^* or the gradient vanishes.

Preconditioners (``precond``), each updated with the current gradient *before* the step uses it:

* ``"hutchinson"`` (OASIS-style; Jahani et al. 2021): z Rademacher, v_t = z * (H_t z) with H_t the
  minibatch Hessian at w_t (one Hessian-vector product by double backward; the closure must call
  ``backward(create_graph=True)``, which the spec requests),
      D_t = beta D_{t-1} + (1 - beta) v_t,    (B_t)_jj = max(alpha, |D_t|_j)        (alpha-truncation)
  D_0 is the mean of ``init_probes`` probes at the first point (warm start; 0 probes: D_0 = 0).
* ``"adam"``: u_t = beta2 u_{t-1} + (1 - beta2) g_t^2,   B_t = sqrt(u_t / (1 - beta2^t)) + eps.
* ``"adagrad"``: u_t = u_{t-1} + g_t^2,                   B_t = sqrt(u_t) + eps.
* ``"none"``: B_t = I (SPS with c = 1; a reference point).

The gradient itself is used undamped (no first moment), as in SPS. Note that gamma_t B^{-1} g is
invariant to rescaling B: the preconditioner only shapes the direction, the Polyak rule sets the length.

Slack variants (``slack``; Gower, Blondel, Gazagnadou, Pedregosa 2022, "Cutting Some Slack for SGD with
Adaptive Polyak Stepsizes", in the B-norm), with f = f_i(w_t) - f_i^*, G = g^T B^{-1} g and a slack s
(s_0 = 0, kept across steps, in ``param_groups[i]["slack"]``):

* ``"l2"``: min ||w - w_t||_B^2 / 2 + (s - s_t)^2 / 2 + lambda s^2 / 2 s.t. f + <g, w - w_t> <= s, solved
  in closed form (derived here from the KKT conditions; lam_hat = 1 / (1 + lambda)):
      gamma = max(0, f - lam_hat s_t) / (G + lam_hat),    s_{t+1} = lam_hat (s_t + gamma)
* ``"l1"``: min ||w - w_t||_B^2 / 2 + (s - s_t)^2 / 2 + lambda s s.t. the same constraint and s >= 0;
  Gower et al.'s closed form, which is this problem's exact minimiser (checked here from the KKT
  conditions: tau < f/G exactly when s_t - lambda + tau > 0, else s = 0 and gamma = f/G):
      tau = max(0, f - s_t + lambda) / (1 + G),  gamma = min(tau, f / G),  s_{t+1} = max(0, s_t - lambda + tau)

Choices where the paper is open or not checked here (the paper's text was not available while this was
written: equation numbers and the exact form of the Adam / AdaGrad preconditioners, whether bias
correction and eps enter as above, and whether the paper's PSPS experiments include the slack variants
are NOT verified; the Hutchinson and slack parts follow the defaults recalled from the authors' release
(not re-checked against it; no code of it is used here), the others the AdaHessian / OASIS conventions):

* defaults beta = 0.999, alpha = 0.1, init_probes = 100 (as recalled from the authors' release, unchecked),
  one probe per step;
* f^* = 0 (interpolation) by default; the slack variants use f = loss - f_star in place of the loss;
* ``gamma_max`` caps the final step size only (the slack recursion uses the uncapped values);
* with ``precond != "hutchinson"`` the closure still builds the double-backward graph (the spec's flag is
  static); the step detaches ``p.grad`` afterwards, so the graph is freed and no ``.grad`` keeps it.

One step size for the whole model: f and G = sum over all parameters of g * B^{-1} g (global, as SPS).

Randomness: a private ``torch.Generator`` (hparam ``seed``, saved in ``state_dict``) draws one seed per
probe (init_probes + 1 at the first step, then 1); each probe is generated from its seed with
``own.zo.spsa_directions(..., "rademacher")`` (one generator per device, parameters in order). The global
RNG is untouched.

Why own code: no maintained library ships PSPS (the PyPI name ``sps`` is an unrelated project); the
authors' code is unlicensed research code.
"""

from __future__ import annotations

import math

import torch

from ..registry import HParam, OptimizerSpec, register
from ..rngstate import CheckpointedGenerator
from .zo import spsa_directions

PRECONDITIONERS = ("hutchinson", "adam", "adagrad", "none")
SLACKS = ("none", "l1", "l2")


def psps_step_size(f: float, G: float, *, slack: str = "none", s: float = 0.0, lmd: float = 0.0) -> tuple[float, float]:
    """(gamma, new slack) from f = f_i - f_i^* and G = g^T B^{-1} g (module docstring's formulas)."""
    if G <= 0.0 or not math.isfinite(G):
        return 0.0, s
    if slack == "none":
        return max(f, 0.0) / G, s
    if slack == "l2":
        lam_hat = 1.0 / (1.0 + lmd)
        gamma = max(0.0, f - lam_hat * s) / (G + lam_hat)
        return gamma, lam_hat * (s + gamma)
    if slack == "l1":
        tau = max(0.0, f - s + lmd) / (1.0 + G)
        return min(tau, max(f, 0.0) / G), max(0.0, s - lmd + tau)
    raise ValueError(f"psps: slack {slack!r} not in {SLACKS}")


class PSPS(CheckpointedGenerator, torch.optim.Optimizer):
    """SGD with the preconditioned Polyak step (module docstring); needs the closure's loss."""

    RNG_KEY = "psps_rng"  # the private generator in state_dict

    def __init__(
        self,
        params,
        *,
        lr=1.0,
        precond="hutchinson",
        f_star=0.0,
        gamma_max=None,
        slack="none",
        slack_lambda=0.01,
        beta=0.999,
        alpha=0.1,
        init_probes=100,
        beta2=0.999,
        eps=1e-8,
        seed=0,
    ):
        if precond not in PRECONDITIONERS or slack not in SLACKS:
            raise ValueError(f"psps: precond {precond!r} / slack {slack!r} not in {PRECONDITIONERS} / {SLACKS}")
        defaults = {"lr": lr, "f_star": f_star, "gamma_max": gamma_max, "slack_lambda": slack_lambda}
        super().__init__(params, {**defaults, "slack": 0.0, "last_step_size": 0.0})
        self.precond, self.slack_kind = precond, slack
        self.beta, self.alpha, self.init_probes = float(beta), float(alpha), int(init_probes)
        self.beta2, self.eps = float(beta2), float(eps)
        self._init_rng(seed)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _rademacher_zhz(self, params, grads, seed: int) -> list[torch.Tensor]:
        """z * (H z) per parameter for one Rademacher z regenerated from ``seed`` (double backward)."""
        zs = list(spsa_directions(params, seed, "rademacher"))
        with torch.enable_grad():
            dot = sum(torch.sum(g * z) for g, z in zip(grads, zs))
            hz = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        return [z * (torch.zeros_like(z) if h is None else h.detach()) for z, h in zip(zs, hz)]

    def _hutchinson(self, params, grads) -> list[torch.Tensor]:
        if not any(g.requires_grad for g in grads):
            raise RuntimeError("psps (hutchinson): the closure must call backward(create_graph=True)")
        state0 = self.state[params[0]]
        if "hess_diag" not in state0:  # warm start D_0 at the first point
            acc = [torch.zeros_like(p) for p in params]
            for _ in range(self.init_probes):
                for a, v in zip(acc, self._rademacher_zhz(params, grads, self._new_seed())):
                    a.add_(v)
            for p, a in zip(params, acc):
                self.state[p]["hess_diag"] = a / max(self.init_probes, 1)
        v = self._rademacher_zhz(params, grads, self._new_seed())
        out = []
        for p, vi in zip(params, v):
            d = self.state[p]["hess_diag"]
            d.mul_(self.beta).add_(vi, alpha=1.0 - self.beta)
            out.append(d.abs().clamp(min=self.alpha))
        return out

    def _second_moment(self, params, grads) -> list[torch.Tensor]:
        out = []
        for p, g in zip(params, grads):
            st = self.state[p]
            if "sq_grad" not in st:
                st["sq_grad"], st["step"] = torch.zeros_like(p), 0
            st["step"] += 1
            u = st["sq_grad"]
            if self.precond == "adam":
                u.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
                out.append((u / (1.0 - self.beta2 ** st["step"])).sqrt().add_(self.eps))
            else:  # adagrad
                u.addcmul_(g, g)
                out.append(u.sqrt().add_(self.eps))
        return out

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("psps: step() needs a closure returning the minibatch loss")
        with torch.enable_grad():
            loss = closure()
        params = [p for p in self._params() if p.grad is not None]
        if not params:
            return loss
        grads = [p.grad for p in params]  # with a graph when the closure used create_graph=True
        if self.precond == "hutchinson":
            diag = self._hutchinson(params, grads)
        elif self.precond == "none":
            diag = None
        else:
            diag = self._second_moment(params, [g.detach() for g in grads])
        for p in params:  # drop the double-backward graph; .grad keeps the plain gradient
            p.grad = p.grad.detach()
        d = [p.grad for p in params] if diag is None else [p.grad / b for p, b in zip(params, diag)]  # B^-1 g
        G = float(sum(torch.sum(p.grad * di) for p, di in zip(params, d)))
        group = self.param_groups[0]  # one Polyak step for the whole model (global norm)
        gamma, s = psps_step_size(
            float(loss) - group["f_star"], G, slack=self.slack_kind, s=group["slack"], lmd=group["slack_lambda"]
        )
        if group["gamma_max"] is not None:
            gamma = min(gamma, group["gamma_max"])
        for g in self.param_groups:
            g["slack"], g["last_step_size"] = s, gamma
        by_param = {id(p): di for p, di in zip(params, d)}
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) in by_param and gamma > 0:
                    p.sub_(by_param[id(p)], alpha=g["lr"] * gamma)
        return loss


register(
    OptimizerSpec(
        name="psps",
        family="adaptive",
        source="sgdlab",
        summary=(
            "preconditioned stochastic Polyak step: w -= lr*min(gamma, gamma_max) B^-1 g, gamma = (f_i - f_star)/"
            "(g^T B^-1 g); B from Hutchinson's Hessian diagonal (EMA, alpha-truncated), Adam's or AdaGrad's "
            "squared gradients, or I; optional L1/L2 slack. CREATE_GRAPH: the closure must call "
            "backward(create_graph=True). Private seeded RNG for the probes."
        ),
        paper="Abdukhakimov, Xiang, Kamzolov, Takáč 2023/2024, SGD with Preconditioned Polyak Step-size",
        hparams=(
            HParam("lr", 1.0, "multiplier on the Polyak step (1 = the paper)", float, "positive"),
            HParam("precond", "hutchinson", "preconditioner B", str, choices=PRECONDITIONERS),
            HParam("f_star", 0.0, "lower bound f_i^* on the minibatch loss", float, "finite"),
            HParam("gamma_max", None, "cap on the Polyak step size (None: no cap)", float, "positive", optional=True),
            HParam("slack", "none", "slack variant (Gower et al. 2022)", str, choices=SLACKS),
            HParam("slack_lambda", 0.01, "slack penalty lambda (l1/l2 only)", float, "nonneg"),
            HParam("beta", 0.999, "Hutchinson EMA of z*(Hz)", float, "unit"),
            HParam("alpha", 0.1, "Hutchinson truncation: B = max(alpha, |D|)", float, "positive"),
            HParam("init_probes", 100, "Hutchinson probes for D_0 at the first step", int, "nonnegint"),
            HParam("beta2", 0.999, "Adam preconditioner EMA of g^2", float, "unit"),
            HParam("eps", 1e-8, "added to sqrt of the second moment (adam/adagrad)", float, "positive"),
            HParam("seed", 0, "seed of the optimizer's private RNG (saved in state_dict)", int, "nonnegint"),
        ),
        create_graph=True,
    ),
    lambda named, h: PSPS([p for _, p in named], **h),
)
