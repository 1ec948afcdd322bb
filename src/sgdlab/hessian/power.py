"""Power iteration for the dominant eigenpair of a symmetric operator.

Kept as a simple baseline and cross-check (PyHessian and the edge-of-stability code use it);
prefer :func:`~sgdlab.hessian.lanczos.lanczos`, which needs about the square root as many
matvecs for the same accuracy.
"""

from __future__ import annotations

import torch

from .operators import LinearOperator, gaussian, make_generator
from .results import EigenResult


def power_iteration(
    op: LinearOperator,
    *,
    tol: float = 1e-4,
    max_iter: int = 1000,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """Eigenvalue of largest *magnitude* and its vector by power iteration.

    Iterates ``v <- A v / ||A v||`` and stops when the Rayleigh quotient ``theta = v^T A v`` has
    residual ``||A v - theta v|| <= tol * |theta|`` (a true eigenvalue lies within that distance
    of ``theta``). It converges at rate ``|lambda_2 / lambda_1|`` per step, and to the
    largest-magnitude eigenvalue: if a Hessian's most negative eigenvalue is larger in magnitude
    than lambda_max, it returns that one (use ``lanczos(which="LA")``).

    Returns:
        :class:`EigenResult` with k = 1.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    gen = make_generator(generator, seed)
    v = gaussian((op.n,), gen, op.dtype, op.device) if v0 is None else v0.to(op.device, op.dtype)
    v = v / v.norm()
    start = op.n_matvecs
    theta, res, converged, it = 0.0, float("inf"), False, 0
    while it < max_iter:
        it += 1
        w = op.matvec(v)
        theta = float(torch.dot(v, w))
        res = float((w - theta * v).norm())
        if res <= tol * abs(theta):
            converged = True
            break
        norm = w.norm()
        if float(norm) == 0.0:  # v in the null space: A is zero on it
            converged = True
            break
        v = w / norm
    return EigenResult(
        eigenvalues=torch.tensor([theta], dtype=torch.float64),
        eigenvectors=v.reshape(-1, 1) if return_eigenvectors else None,
        residuals=torch.tensor([res], dtype=torch.float64),
        n_matvecs=op.n_matvecs - start,
        converged=converged,
        n_iter=it,
    )
