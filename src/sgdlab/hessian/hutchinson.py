"""Stochastic trace estimators: Hutchinson and Hutch++.

* Hutchinson (1989), "A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines": ``tr(A) ~ (1/m) sum_i z_i^T A z_i`` with Rademacher ``z_i``; unbiased,
  variance ``2 (||A||_F^2 - sum_i A_ii^2) / m``. The reported standard error is the sample
  standard deviation of ``z_i^T A z_i`` over sqrt(m).
* Hutch++ (Meyer, Musco, Musco, Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation"):
  with a budget of m matvecs, sketch ``Q = orth(A S)`` with ``S`` of m/3 Rademacher columns,
  take ``tr(Q^T A Q)`` exactly and estimate the trace of the deflated
  ``(I - QQ^T) A (I - QQ^T)`` by Hutchinson with the remaining m/3 probes. Error
  ``O(1/m)`` instead of ``O(1/sqrt(m))`` for matrices with decaying spectrum. The reported
  standard error is that of the deflated Hutchinson part, i.e. conditional on the sketch ``Q``.
  Hutch++ only helps on fast-decaying spectra: on flat or indefinite ones (typical of a network's
  Hessian away from a minimum) it spends 2/3 of the budget on the sketch and is *worse* than plain
  Hutchinson at equal matvecs (measured on one such case: sd 3.97 vs 2.51 at 30 matvecs). The probes
  use Hutchinson; choose Hutch++ only where the spectrum is known to decay.
"""

from __future__ import annotations

import math

import torch

from .operators import LinearOperator, make_generator, rademacher
from .results import TraceResult


def _stderr(samples: torch.Tensor) -> float:
    return float(samples.std(correction=1) / math.sqrt(len(samples)))


def hutchinson(
    op: LinearOperator,
    n_probes: int = 100,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> TraceResult:
    """Hutchinson trace estimate with ``n_probes`` (>= 2) Rademacher probes and its stderr."""
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 2:
        raise ValueError(f"n_probes must be an int >= 2 (for a standard error), got {n_probes!r}")
    gen = make_generator(generator, seed)
    start = op.n_matvecs
    samples = torch.empty(n_probes, dtype=torch.float64)
    for i in range(n_probes):
        z = rademacher((op.n,), gen, op.dtype, op.device)
        samples[i] = float(torch.dot(z, op.matvec(z)))
    return TraceResult(
        estimate=float(samples.mean()),
        stderr=_stderr(samples),
        n_matvecs=op.n_matvecs - start,
        method="hutchinson",
    )


def hutchpp(
    op: LinearOperator,
    n_matvecs: int = 99,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> TraceResult:
    """Hutch++ trace estimate using ``n_matvecs`` (>= 6) operator applications in total.

    Split: ``s = n_matvecs // 3`` sketch columns (s matvecs for ``A S``, s for ``A Q``) and
    ``n_matvecs - 2 s`` Hutchinson probes on the deflated operator.
    """
    if isinstance(n_matvecs, bool) or not isinstance(n_matvecs, int) or n_matvecs < 6:
        raise ValueError(f"n_matvecs for hutch++ must be an int >= 6, got {n_matvecs!r}")
    gen = make_generator(generator, seed)
    start = op.n_matvecs
    s = min(n_matvecs // 3, op.n)
    g = n_matvecs - 2 * s
    S = rademacher((op.n, s), gen, op.dtype, op.device)  # (n, s)
    Q, _ = torch.linalg.qr(op.matmat(S))  # (n, s) orthonormal basis of range(A S)
    top = float((Q * op.matmat(Q)).sum())  # tr(Q^T A Q)
    samples = torch.empty(g, dtype=torch.float64)
    for i in range(g):
        z = rademacher((op.n,), gen, op.dtype, op.device)
        z = z - Q @ (Q.T @ z)  # (I - QQ^T) z
        samples[i] = float(torch.dot(z, op.matvec(z)))
    return TraceResult(
        estimate=top + float(samples.mean()),
        stderr=_stderr(samples),
        n_matvecs=op.n_matvecs - start,
        method="hutch++",
    )
