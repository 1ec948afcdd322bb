"""APOLLO and APOLLO-Mini: AdamW-like scaling of the *raw* gradient, estimated in a random
low-rank space.

Zhu, Zhang, Cong, Liu, Park, Chandra, Long, Pan, Wang, Lee 2024, "APOLLO: SGD-like Memory,
AdamW-level Performance" (arXiv:2412.05270), Algorithm 1. For a 2-D parameter with gradient
G (m x n), channels are the longer side (rows if m >= n):

    P  ~ N(0, 1/r)  (r x n, or r x m), resampled every ``update_proj_gap`` steps
    R  = G P^T  (m x r)      [or P G  (r x n)]         -- gradient in the auxiliary space
    M, V = Adam moments of R;  R~ = M / (sqrt(V) + eps)
    s_j  = ||R~_j|| / ||R_j||  per channel j ("channel")  or  ||R~|| / ||R|| ("tensor")
    G~   = G * s            -- the FULL gradient, rescaled (not a low-rank update)
    Fira norm-growth limiter: G~ /= max(||G~|| / ||G~_prev||, 1.01) / 1.01
    W   <- W - lr * sqrt(1-b2^t)/(1-b1^t) * sqrt(scale) * G~ ;  W <- W - lr * wd * W

Every other parameter (biases, norms, conv kernels) gets plain AdamW with the same hparams.
APOLLO-Mini: rank 1, tensor-wise scaling, scale 128.

Why own code: ``pytorch_optimizer.APOLLO`` (4.1) multiplies the *projected* gradient by the
scaling factor and projects it back, so each step only moves W inside a random rank-r subspace
(with rank 1 a rank-1 update per step) - a GaLore-style update, not the paper's step 4, which
rescales the raw gradient. ``ApolloDQN`` is an unrelated quasi-Newton method.
Projection matrices are drawn from a private generator seeded by (seed, parameter index, step),
so no global RNG is touched and resuming reproduces them.
"""

from __future__ import annotations

import math

import torch

from ..registry import HParam, OptimizerSpec, register


class APOLLO(torch.optim.Optimizer):
    """APOLLO (Algorithm 1 of Zhu et al. 2024); see the module docstring for the update."""

    def __init__(
        self,
        params,
        *,
        lr,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.0,
        rank=256,
        scale=1.0,
        update_proj_gap=200,
        scale_type="channel",
        seed=0,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            scale=scale,
            update_proj_gap=update_proj_gap,
            scale_type=scale_type,
        )
        super().__init__(params, defaults)
        self.seed = int(seed)

    def _projection(self, index: int, step: int, shape, like: torch.Tensor) -> torch.Tensor:
        """P ~ N(0, 1/r) of ``shape`` (r, d), reproducible from (seed, param index, step)."""
        key = ((self.seed * 1_000_003 + index) * 1_000_003 + step) % 2**63
        g = torch.Generator().manual_seed(key)
        p = torch.randn(shape, generator=g, dtype=torch.float64) / math.sqrt(shape[0])
        return p.to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                t = state["step"] = state.get("step", 0) + 1
                step_size = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
                low_rank = p.ndim == 2
                if low_rank:
                    m, n = grad.shape
                    rows = m >= n  # channels = rows; project the columns (n -> r)
                    if "proj" not in state or (t - 1) % group["update_proj_gap"] == 0:
                        d = n if rows else m
                        state["proj"] = self._projection(index, t, (group["rank"], d), grad)
                    P = state["proj"]  # (r, n) or (r, m)
                    r_grad = grad @ P.T if rows else P @ grad  # (m, r) or (r, n)
                else:
                    r_grad = grad
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(r_grad)
                    state["exp_avg_sq"] = torch.zeros_like(r_grad)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(r_grad, 1 - b1)
                exp_avg_sq.mul_(b2).addcmul_(r_grad, r_grad, value=1 - b2)
                normed = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if low_rank:
                    if group["scale_type"] == "channel":
                        dim = 1 if rows else 0
                        s = normed.norm(dim=dim, keepdim=True) / (r_grad.norm(dim=dim, keepdim=True) + 1e-8)
                    else:
                        s = normed.norm() / (r_grad.norm() + 1e-8)
                    update = grad * s  # (m, n): the raw gradient, rescaled
                    norm = update.norm()
                    if "update_norm" in state:  # Fira norm-growth limiter
                        limiter = torch.clamp(norm / (state["update_norm"] + 1e-8), min=1.01) / 1.01
                        update = update / limiter
                        norm = norm / limiter
                    state["update_norm"] = norm
                    update = update * math.sqrt(group["scale"])
                else:
                    update = normed
                p.add_(update, alpha=-step_size)
                if group["weight_decay"] > 0:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
        return loss


_PAPER = "Zhu et al. 2024, APOLLO: SGD-like Memory, AdamW-level Performance (Algorithm 1)"
_COMMON = (
    HParam("betas", (0.9, 0.999), "(beta1, beta2)", tuple, "betas", length=2),
    HParam("eps", 1e-6, "denominator epsilon", float, "positive"),
    HParam("weight_decay", 0.0, "decoupled weight decay", float, "nonneg"),
    HParam("update_proj_gap", 200, "steps between new random projections", int, "posint"),
    HParam("seed", 0, "seed of the random projections", int, "nonnegint"),
)

register(
    OptimizerSpec(
        name="apollo",
        family="adaptive",
        source="sgdlab",
        summary=(
            "APOLLO: raw gradient of each 2-D param rescaled per channel by AdamW statistics kept "
            "in a random rank-r space (+ Fira norm-growth limiter); other params AdamW"
        ),
        paper=_PAPER,
        hparams=(
            HParam("lr", 1e-2, "learning rate", float, "positive"),
            HParam("rank", 256, "rank r of the auxiliary space (2-D params)", int, "posint"),
            HParam("scale", 1.0, "update scale alpha (the step uses sqrt(scale))", float, "positive"),
            HParam("scale_type", "channel", "scaling granularity", str, choices=("channel", "tensor")),
            *_COMMON,
        ),
    ),
    lambda named, h: APOLLO([p for _, p in named], **h),
)

register(
    OptimizerSpec(
        name="apollo_mini",
        family="adaptive",
        source="sgdlab",
        summary="APOLLO-Mini: APOLLO with rank 1 and tensor-wise scaling (scale 128 as in the paper)",
        paper=_PAPER,
        hparams=(
            HParam("lr", 1e-2, "learning rate", float, "positive"),
            HParam("scale", 128.0, "update scale alpha (the step uses sqrt(scale))", float, "positive"),
            *_COMMON,
        ),
    ),
    lambda named, h: APOLLO([p for _, p in named], rank=1, scale_type="tensor", **h),
)
