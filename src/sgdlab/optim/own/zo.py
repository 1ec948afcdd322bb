"""Zeroth-order optimizers: MeZO-style ZO-SGD (two-point SPSA) and ZO-AdaMU. Forward passes only.

**zo_sgd.** Malladi, Gao, Nichani, Damian, Lee, Chen, Arora 2023, "Fine-Tuning Language Models with
Just Forward Passes" (NeurIPS), Algorithm 1 (MeZO) with the n-SPSA average; the estimator is Spall
1992's SPSA. Per step, on ONE minibatch (``closure(0, backward=False)`` every time), for j = 1..q::

    z_j ~ N(0, I_d)  (or Rademacher +-1, classic SPSA)            regenerated from a step seed s_j
    l+_j = L(theta + eps z_j),  l-_j = L(theta - eps z_j),         p_j = (l+_j - l-_j) / (2 eps)
    theta <- theta - lr ( (1/q) sum_j p_j z_j + weight_decay theta )

For a quadratic L the central difference is exact, p_j = z_j . grad L, so E[p z] = E[z z^T] grad L =
grad L. Weight decay: Algorithm 1 has none; the authors' code (``zo_update``) uses the coupled form
above, inside the lr, but skips biases and LayerNorm weights by name; here it applies to every
parameter. Memory = inference: as in MeZO, z is never stored. theta is perturbed in place (+eps z,
-2eps z, +eps z restores it, up to floating-point rounding of order one ulp per pass) and z is
regenerated, parameter by parameter, from its seed for each pass and for the update; only q seeds
and q scalars p_j live between passes.

**zo_adamu.** Jiang, Chen, Pan, Xiang, Lin, Wu, Liu, Song 2024, "ZO-AdaMU Optimizer: Adapting
Perturbation by the Momentum and Uncertainty in Zeroth-order Optimization" (AAAI), Eqs. (4)-(7) and
Algorithm 1 (AAAI camera-ready PDF of the authors' repository). The perturbation itself carries the
momentum; per step t = 1, 2, ... (alpha, beta1, beta2 = Anneal(t) with phi = phi_alpha, phi_b1, phi_b2)::

    zd = sqrt(alpha) xi1,   zdd = m_{t-1} + sqrt(1 - alpha) xi2,   xi1, xi2 ~ N(0, I)       (Eq. 4)
    m_t = beta1 zd + (1 - beta1) zdd                                                       (Eq. 4)
    g_t = (L(theta + eps m_t) - L(theta - eps m_t)) / (2 eps)                               (Eq. 5)
    v_t = beta2 zd^2 + (1 - beta2) zdd^2                                                   (Eq. 6)
    theta <- theta - lr ( g_t m_t / sqrt(v_t + sigma) + weight_decay theta )       (Alg. 1 line 13)

    Anneal(t) = 1                                                          t in [1, T1)
              = 0.5 + 0.5 cos( pi (T3 - T1) / (T3 - t phi (T3 - T2)/(T2 - T1)) )   t in [T1, T2)   (Eq. 7)
              = 0.9                                                        t in [T2, T3)

Choices where the paper is open or contradicts itself (``anneal="printed"`` is Eq. (7) as printed):

* N(mu, s) is read as mean, standard deviation (the text calls alpha a variance; the authors' code
  draws ``std=sqrt(alpha)``); m_0 = 0; xi1 then xi2 are drawn per parameter, in parameter order.
* The denominator: Eq. (6) prints sqrt(v^2 + sigma), Algorithm 1 line 13 (and the authors' code)
  sqrt(v + sigma). Used: sqrt(v + sigma); with v^2, coordinates where v ~ 0 get steps ~ 1/sqrt(sigma).
* v_t is not an EMA over steps despite the paper's name: it is this step's mix of zd^2 and zdd^2.
* Eq. (7) as printed jumps from 1 to ~0 at T1 (for the paper's T1, T2 = 1024, 16000 and T3 = 20000,
  alpha ~ 0.004, beta1 ~ 0.006, beta2 ~ 0.002), and sets all three to 0.9 after T2, while the text
  says alpha, beta1, beta2 end at 0.5, 0.9, 0.01 and Figure 1 shows all three falling smoothly from 1
  at T1 to plateaus held after T2. ``anneal="continuous"`` is the reading that is continuous at T1
  and matches the authors' code (which shrinks its cosine period by phi (T3-T2)/(T2-T1) per call)::

        u = min(t, T2) - T1,   Anneal(t) = 0.5 + 0.5 cos( pi u / (T3 - u phi (T3 - T2)/(T2 - T1)) )

  Neither reading reproduces Figure 1's plateaus for phi = (1, 0.1, 1.5), the paper's values (Table 3).
* Past T3 (the paper runs t = 1..T3) the last phase's value is kept. T3 = 20000 is inferred from the
  authors' code (T2 = 0.8 max_steps); their Table 3 also says 100K steps, for which Eq. (7)'s
  denominator changes sign inside [T1, T2). The validator requires it positive on the phase.
* Not from the paper: weight decay (MeZO's coupled form, as in the authors' code), and
  ``n_perturbations`` q > 1 (default 1 = the paper): q seeds drawn from the same theta and m_{t-1},
  the q updates g_j m_t^j / sqrt(v^j + sigma) averaged as in n-SPSA, and m_t = (1/q) sum_j m_t^j.
  With q = 1 neither family lowers the shared 30-step MLP test's loss by 30 % (see testing.py).
  The authors' code also stores sign(g_t) m_t as the next momentum and perturbs with
  0.9 zdd + 0.1 zd; the paper does not, so neither is done here.
Memory: m (one tensor per parameter) is stored (q > 1: one more for the sum of the m_t^j); xi1, xi2
are regenerated from the step seed.

Training-loop records: the loop logs the loss (train/loss) and logits (train/acc) of the FIRST
closure(k) call of a step, here L(theta + eps z_1) (zo_adamu: L(theta + eps m_t)): the loss and
accuracy of the perturbed model before the update, not of theta. ``step`` returns the mean of all
2q evaluations, (l+ + l-)/2 = L(theta) + O(eps^2). Both forward passes run in whatever mode the
model is in: with dropout active l+ and l- see different masks (the difference no longer estimates
a directional derivative; MeZO evaluates in eval mode), and BatchNorm updates running statistics
at the perturbed weights. The closure is never called with ``backward=True``: no ``.grad`` is
written.

Randomness: a private ``torch.Generator`` (hparam ``seed``, state in ``state_dict``) draws one step
seed s = randint(0, 2**62) per perturbation; each pass seeds one generator per parameter device
with s and draws, for each parameter in order, ``randn(p.shape)`` (zo_sgd Rademacher:
``2 randint(0, 2) - 1``; zo_adamu: xi1 then xi2), in the parameter's dtype. The global RNG is untouched.

Why own code: no maintained library ships MeZO or ZO-AdaMU as a torch optimizer; the authors' code
is a HuggingFace Trainer subclass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..registry import HParam, OptimizerConfigError, OptimizerSpec, register
from ..rngstate import CheckpointedGenerator


def _generators(params: list[torch.Tensor], seed: int) -> dict[torch.device, torch.Generator]:
    """One generator per parameter device, all seeded with ``seed`` (a pass draws params in order)."""
    gens: dict[torch.device, torch.Generator] = {}
    for p in params:
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
    return gens


def spsa_directions(params: list[torch.Tensor], seed: int, kind: str = "gaussian") -> Iterator[torch.Tensor]:
    """The zo_sgd direction z, one tensor per parameter (same shape, dtype, device), regenerated from ``seed``."""
    gens = _generators(params, seed)
    for p in params:
        g = gens[p.device]
        if kind == "gaussian":
            yield torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
        else:  # rademacher
            yield torch.randint(0, 2, p.shape, generator=g, device=p.device, dtype=p.dtype).mul_(2).sub_(1)


def zo_adamu_anneal(t: int, t1: int, t2: int, t3: int, phi: float, rule: str = "printed") -> float:
    """ZO-AdaMU's Anneal(t) (Eq. 7) for one parameter's phi; ``rule`` "printed" or "continuous" (module doc)."""
    if t < t1:
        return 1.0
    r = (t3 - t2) / (t2 - t1)
    if rule == "printed":
        if t >= t2:
            return 0.9
        return 0.5 + 0.5 * math.cos(math.pi * (t3 - t1) / (t3 - t * phi * r))
    u = min(t, t2) - t1
    return 0.5 + 0.5 * math.cos(math.pi * u / (t3 - u * phi * r))


class _ZerothOrder(CheckpointedGenerator, torch.optim.Optimizer):
    """Shared parts: the private checkpointed RNG, step seeds, in-place perturbation, loss evaluation."""

    RNG_KEY = "zo_rng"  # the private generator in state_dict

    def __init__(self, params, defaults: dict, *, eps: float, seed: int):
        super().__init__(params, defaults)
        self.eps = float(eps)
        self._init_rng(seed)
        self.last_seeds: list[int] = []  # diagnostics of the last step (not checkpointed)
        self.last_projected_grads: list[float] = []

    def _pairs(self) -> list[tuple[dict, torch.Tensor]]:
        return [(g, p) for g in self.param_groups for p in g["params"]]

    def _directions(self, seed: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def _perturb(self, seed: int, scale: float) -> None:
        params = [p for _, p in self._pairs()]
        for p, z in zip(params, self._directions(seed)):
            p.add_(z, alpha=scale)

    def _two_point(self, closure, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(l+, l-) at theta +- eps * direction(seed); theta restored (up to rounding) afterwards."""
        eps = self.eps
        self._perturb(seed, eps)
        lp = closure(0, backward=False)
        self._perturb(seed, -2.0 * eps)
        lm = closure(0, backward=False)
        self._perturb(seed, eps)
        return torch.as_tensor(lp).detach(), torch.as_tensor(lm).detach()


class ZOSGD(_ZerothOrder):
    """MeZO: ZO-SGD with the (n-)SPSA estimate, z regenerated in place from per-perturbation seeds."""

    def __init__(self, params, *, lr, eps=1e-3, weight_decay=0.0, n_perturbations=1, perturbation="gaussian", seed=0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, eps=eps, seed=seed)
        self.n_perturbations, self.perturbation = int(n_perturbations), perturbation

    def _directions(self, seed: int) -> Iterator[torch.Tensor]:
        return spsa_directions([p for _, p in self._pairs()], seed, self.perturbation)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("zo_sgd: step() needs a closure(k, backward=False) returning the minibatch loss")
        q = self.n_perturbations
        seeds = [self._new_seed() for _ in range(q)]
        losses, pgrads = [], []
        for s in seeds:  # every p_j at the same theta
            lp, lm = self._two_point(closure, s)
            losses += [lp, lm]
            pgrads.append(float(lp - lm) / (2.0 * self.eps))
        pairs = self._pairs()
        for j, (s, pg) in enumerate(zip(seeds, pgrads)):
            for (g, p), z in zip(pairs, self._directions(s)):
                d = z.mul_(pg / q)
                if j == 0 and g["weight_decay"] != 0:  # decay of the pre-update theta, once
                    d.add_(p, alpha=g["weight_decay"])
                p.sub_(d, alpha=g["lr"])
        self.last_seeds, self.last_projected_grads = seeds, pgrads
        return torch.stack(losses).mean()


class ZOAdaMU(_ZerothOrder):
    """ZO-AdaMU: SPSA along a momentum-carrying perturbation m_t, step g m / sqrt(v + sigma) (module doc)."""

    def __init__(
        self,
        params,
        *,
        lr,
        eps=1e-3,
        t1=1024,
        t2=16000,
        t3=20000,
        phi=(1.0, 0.1, 1.5),
        anneal="printed",
        sigma=1e-8,
        weight_decay=0.0,
        n_perturbations=1,
        seed=0,
    ):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, eps=eps, seed=seed)
        self.t1, self.t2, self.t3, self.phi, self.anneal, self.sigma = t1, t2, t3, tuple(phi), anneal, sigma
        self.n_perturbations = int(n_perturbations)
        self.param_groups[0].setdefault("zo_step", 0)  # t of the last step taken (checkpointed)
        self.last_anneal: tuple[float, float, float] | None = None

    def schedule(self, t: int) -> tuple[float, float, float]:
        """(alpha, beta1, beta2) = Anneal(t) with phi_alpha, phi_beta1, phi_beta2."""
        return tuple(zo_adamu_anneal(t, self.t1, self.t2, self.t3, f, self.anneal) for f in self.phi)

    def _mix(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(zd, zdd, m_t) per parameter for this step's seed (Eq. 4), from m_{t-1} in state."""
        alpha, beta1, _ = self._coef
        a, b = math.sqrt(alpha), math.sqrt(max(0.0, 1.0 - alpha))
        params = [p for _, p in self._pairs()]
        gens = _generators(params, seed)
        for p in params:
            g = gens[p.device]
            xi1 = torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
            xi2 = torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
            zd = xi1.mul_(a)
            zdd = xi2.mul_(b).add_(self.state[p]["m"])
            yield zd, zdd, beta1 * zd + (1.0 - beta1) * zdd

    def _directions(self, seed: int) -> Iterator[torch.Tensor]:
        return (m for _, _, m in self._mix(seed))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("zo_adamu: step() needs a closure(k, backward=False) returning the minibatch loss")
        pairs = self._pairs()
        for _, p in pairs:
            if "m" not in self.state[p]:
                self.state[p]["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # m_0 = 0
        g0 = self.param_groups[0]
        t = g0["zo_step"] + 1
        self._coef = self.schedule(t)
        q = self.n_perturbations
        seeds = [self._new_seed() for _ in range(q)]
        losses, pgrads = [], []
        for s in seeds:  # all q estimates from the same theta and m_{t-1}
            lp, lm = self._two_point(closure, s)
            losses += [lp, lm]
            pgrads.append(float(lp - lm) / (2.0 * self.eps))
        beta2 = self._coef[2]
        acc = None if q == 1 else [torch.zeros_like(p) for _, p in pairs]  # sum_j m_t^j (q > 1 only)
        for j, (s, gt) in enumerate(zip(seeds, pgrads)):
            for i, ((g, p), (zd, zdd, m)) in enumerate(zip(pairs, self._mix(s))):
                v = zd.square_().mul_(beta2).add_(zdd.square_(), alpha=1.0 - beta2)
                d = (m * (gt / q)).div_(v.add_(self.sigma).sqrt_())
                if j == 0 and g["weight_decay"] != 0:
                    d.add_(p, alpha=g["weight_decay"])
                p.sub_(d, alpha=g["lr"])
                if acc is None:
                    self.state[p]["m"].copy_(m)  # p's m_{t-1} was read above, before this overwrite
                else:
                    acc[i].add_(m)
        if acc is not None:
            for (_, p), a in zip(pairs, acc):
                self.state[p]["m"].copy_(a.div_(q))
        g0["zo_step"] = t
        self.last_seeds, self.last_projected_grads, self.last_anneal = seeds, pgrads, self._coef
        return torch.stack(losses).mean()


def _seed_hp() -> HParam:
    return HParam("seed", 0, "seed of the optimizer's private RNG (saved in state_dict)", int, "nonnegint")


def _eps_hp() -> HParam:
    return HParam("eps", 1e-3, "perturbation scale epsilon of the two-point estimate", float, "positive")


def _validate_adamu(h: dict) -> None:
    where = "optimizer 'zo_adamu'"
    if not h["t1"] < h["t2"] < h["t3"]:
        raise OptimizerConfigError(
            f"{where}: hparams 't1', 't2', 't3' = {h['t1']}, {h['t2']}, {h['t3']} must satisfy 1 <= t1 < t2 < t3"
        )
    if not all(f > 0 and math.isfinite(f) for f in h["phi"]):
        raise OptimizerConfigError(f"{where}: hparam 'phi' = {h['phi']!r} is invalid: expected 3 finite numbers > 0")
    t1, t2, t3 = h["t1"], h["t2"], h["t3"]
    r = (t3 - t2) / (t2 - t1)
    for f in h["phi"]:  # Eq. (7)'s denominator, linear in t: positive at the end of [T1, T2) is enough
        denom = t3 - (t2 - 1) * f * r if h["anneal"] == "printed" else t3 - (t2 - t1) * f * r
        if denom <= 0:
            raise OptimizerConfigError(
                f"{where}: hparam 'phi' = {h['phi']!r} with 't1', 't2', 't3' = {t1}, {t2}, {t3}: the denominator "
                f"of Anneal (Eq. 7, anneal={h['anneal']!r}) reaches {denom:.4g} <= 0 for phi = {f}; "
                "raise t3 or lower phi"
            )


_LOOP = (
    " LOOP: calls closure(0, backward=False) only (no .grad); train/loss and train/acc are those of the "
    "first, perturbed evaluation theta + eps*direction; step returns the mean of the evaluations"
)

register(
    OptimizerSpec(
        name="zo_sgd",
        family="zeroth-order",
        source="sgdlab",
        summary=(
            "MeZO ZO-SGD: n-SPSA p_j=(L(th+eps z_j)-L(th-eps z_j))/(2eps), th -= lr(mean_j p_j z_j + wd th); "
            "z regenerated in place from per-perturbation seeds (memory = inference)." + _LOOP
        ),
        paper="Malladi et al. 2023, Fine-Tuning Language Models with Just Forward Passes (MeZO, Alg. 1); Spall 1992",
        hparams=(
            HParam("lr", 1e-6, "learning rate (MeZO full fine-tuning of OPT used 1e-6 to 1e-7)", float, "positive"),
            _eps_hp(),
            HParam("weight_decay", 0.0, "coupled L2 decay inside the lr, MeZO code style", float, "nonneg"),
            HParam("n_perturbations", 1, "q: SPSA estimates averaged per step (n-SPSA)", int, "posint"),
            HParam(
                "perturbation",
                "gaussian",
                "distribution of z: N(0, I) (MeZO) or Rademacher +-1 (classic SPSA)",
                str,
                choices=("gaussian", "rademacher"),
            ),
            _seed_hp(),
        ),
    ),
    lambda named, h: ZOSGD([p for _, p in named], **h),
)

register(
    OptimizerSpec(
        name="zo_adamu",
        family="zeroth-order",
        source="sgdlab",
        summary=(
            "ZO-AdaMU: SPSA along m_t = b1 sqrt(a) xi1 + (1-b1)(m_{t-1} + sqrt(1-a) xi2), step "
            "lr g m/sqrt(v+sigma), v = b2 zd^2 + (1-b2) zdd^2; a, b1, b2 annealed (Eq. 7, phases t1 < t2 < t3; "
            "anneal='printed' as printed, 'continuous' the reading continuous at t1). Stores m." + _LOOP
        ),
        paper="Jiang et al. 2024, ZO-AdaMU Optimizer (AAAI), Eqs. 4-7, Algorithm 1",
        hparams=(
            HParam("lr", 1e-4, "learning rate eta (paper, full fine-tuning: 1e-4)", float, "positive"),
            _eps_hp(),
            HParam("t1", 1024, "T1: end of the warm-up phase (Anneal = 1 for t < T1)", int, "posint"),
            HParam("t2", 16000, "T2: end of the annealing phase", int, "posint"),
            HParam("t3", 20000, "T3: step budget in Eq. 7 (inferred from the authors' code)", int, "posint"),
            HParam("phi", (1.0, 0.1, 1.5), "(phi_alpha, phi_beta1, phi_beta2) of Eq. 7", tuple, length=3),
            HParam(
                "anneal",
                "printed",
                "Eq. 7 as printed, or the reading continuous at T1 and held after T2 (module doc)",
                str,
                choices=("printed", "continuous"),
            ),
            HParam("sigma", 1e-8, "sigma in sqrt(v + sigma)", float, "positive"),
            HParam("weight_decay", 0.0, "coupled L2 decay inside the lr (not in the paper)", float, "nonneg"),
            HParam(
                "n_perturbations",
                1,
                "q estimates averaged per step, m_t = their mean perturbation (not in the paper; 1 = the paper)",
                int,
                "posint",
            ),
            _seed_hp(),
        ),
    ),
    lambda named, h: ZOAdaMU([p for _, p in named], **h),
    _validate_adamu,
)
