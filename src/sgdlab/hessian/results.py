"""Small frozen result records returned by the curvature algorithms.

Every record carries ``n_matvecs``, the number of operator applications the estimate cost, so
estimates can be compared at equal cost (hessian-eigenthings habit: ``estimate``, ``stderr``,
``n_matvecs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EigenResult:
    """Top-k eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: (k,) float64 on CPU, ordered as requested (``which="LA"``: descending).
        eigenvectors: (n, k) unit-norm Ritz vectors on the operator's device, or None when not
            requested.
        residuals: (k,) float64, the Lanczos residual norms ``|beta_m * s_{m,i}|`` (an upper bound on
            ``|lambda_i - theta_i|`` for some true eigenvalue; power iteration: ``||Av - theta v||``).
        n_matvecs: operator applications used.
        converged: True when every requested pair met the stated tolerance.
        n_iter: Krylov dimension reached (Lanczos) or iterations (power).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    n_matvecs: int
    converged: bool
    n_iter: int

    @property
    def lambda_max(self) -> float:
        """The first eigenvalue as a Python float (the largest for ``which="LA"``)."""
        return float(self.eigenvalues[0])


@dataclass(frozen=True)
class TraceResult:
    """Stochastic trace estimate with its standard error.

    Attributes:
        estimate: the trace estimate.
        stderr: estimated standard error of ``estimate`` (sample std of the per-probe quadratic
            forms / sqrt(#probes); for Hutch++ conditional on the low-rank sketch).
        n_matvecs: operator applications used.
        method: ``"hutchinson"`` or ``"hutch++"``.
    """

    estimate: float
    stderr: float
    n_matvecs: int
    method: str


@dataclass(frozen=True)
class DensityResult:
    """Spectral density from stochastic Lanczos quadrature.

    Attributes:
        nodes: (n_probes, m) float64 Gauss quadrature nodes (Ritz values) per probe; probes whose
            Krylov space closed early are padded with zero-weight nodes.
        weights: (n_probes, m) float64 weights; the whole array sums to 1, so
            ``(weights * nodes**p).sum()`` estimates ``tr(H^p) / n``.
        grid: (n_grid,) float64 evaluation points.
        density: (n_grid,) float64 Gaussian-smoothed density on ``grid`` (integrates to ~1).
        sigma: the Gaussian kernel width used for ``density``.
        n_matvecs: operator applications used.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor
    sigma: float
    n_matvecs: int

    def moment(self, p: int) -> float:
        """Estimate of the p-th spectral moment ``tr(H^p) / n``."""
        return float((self.weights * self.nodes**p).sum())
