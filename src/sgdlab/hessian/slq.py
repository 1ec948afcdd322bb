"""Spectral density by stochastic Lanczos quadrature (SLQ).

Ubaru, Chen, Saad 2017, "Fast Estimation of tr(f(A)) via Stochastic Lanczos Quadrature";
applied to neural-network Hessians by Ghorbani, Krishnan, Xiao 2019, "An Investigation into
Neural Net Optimization via Hessian Eigenvalue Density".

For a unit probe ``v = z / sqrt(n)`` (``z`` Rademacher), m Lanczos steps from ``v`` give
``T_m = S diag(theta) S^T``; the Gauss quadrature with nodes ``theta_i`` and weights
``tau_i = S[0, i]^2`` (summing to 1) satisfies ``sum_i tau_i theta_i^p = v^T A^p v`` exactly for
``p <= 2m - 1``, and ``E[v^T A^p v] = tr(A^p) / n``. Averaging over probes estimates the spectral
measure ``(1/n) sum_j delta(t - lambda_j)``; convolving with a Gaussian of width ``sigma`` gives a
density on a grid that integrates to one. Lanczos uses full reorthogonalization and ``eigh`` on
the tridiagonal (never ``eig``).
"""

from __future__ import annotations

import math

import torch

from .lanczos import Krylov
from .operators import LinearOperator, make_generator, rademacher
from .results import DensityResult


def slq(
    op: LinearOperator,
    n_probes: int = 4,
    lanczos_steps: int = 80,
    *,
    sigma: float | None = None,
    n_grid: int = 1000,
    grid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> DensityResult:
    """Stochastic Lanczos quadrature estimate of the spectral density of ``op``.

    Args:
        op: symmetric operator.
        n_probes: independent Rademacher probes (>= 1).
        lanczos_steps: Krylov dimension m per probe (capped at n; a probe whose Krylov space
            closes earlier stops there: its quadrature is then exact).
        sigma: Gaussian kernel width in eigenvalue units; default 1% of the node range.
        n_grid: number of grid points when ``grid`` is None (grid spans the nodes +- 5 sigma).
        grid: explicit evaluation points (1-D).
        generator, seed: randomness (default seed 0); the global RNG is never used.
    """
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive int, got {n_probes!r}")
    if isinstance(lanczos_steps, bool) or not isinstance(lanczos_steps, int) or lanczos_steps < 1:
        raise ValueError(f"lanczos_steps must be a positive int, got {lanczos_steps!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    gen = make_generator(generator, seed)
    m = min(lanczos_steps, op.n)
    start = op.n_matvecs
    nodes = torch.zeros(n_probes, m, dtype=torch.float64)
    weights = torch.zeros(n_probes, m, dtype=torch.float64)
    eps = torch.finfo(op.dtype).eps
    for p in range(n_probes):
        kr = Krylov(op, rademacher((op.n,), gen, op.dtype, op.device), m)
        for _ in range(m):
            beta = kr.step()
            scale = max(abs(a) for a in kr.alphas) + max(kr.betas, default=0.0)
            if kr.m == m or beta <= 10 * eps * max(scale, 1.0) * math.sqrt(op.n):
                break  # Krylov space invariant: quadrature already exact
            kr.advance(beta)
        theta, S = torch.linalg.eigh(kr.tridiagonal())
        nodes[p, : kr.m] = theta
        weights[p, : kr.m] = S[0] ** 2
    weights /= n_probes  # whole array sums to 1

    used = nodes[weights > 0] if bool((weights > 0).any()) else nodes.reshape(-1)
    lo, hi = float(used.min()), float(used.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)
    if grid is None:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, n_grid, dtype=torch.float64)
    grid = grid.to(torch.float64).reshape(-1)
    # (n_grid, n_probes * m) Gaussian kernel evaluations, weighted and summed.
    diff = grid[:, None] - nodes.reshape(1, -1)
    kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = kernel @ weights.reshape(-1)
    return DensityResult(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=density,
        sigma=float(sigma),
        n_matvecs=op.n_matvecs - start,
    )
