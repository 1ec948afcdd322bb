"""Algorithms on explicit matrices with known spectra: Lanczos, power, Hutchinson, Hutch++, SLQ."""

import math

import pytest
import torch

from sgdlab import hessian as hs
from sgdlab.hessian.lanczos import Krylov


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def with_spectrum(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """U diag(eigs) U^T with a seeded random orthogonal U (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (U * eigs) @ U.T


def random_symmetric(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (A + A.T) / 2


# ------------------------------------------------------------------------------ eigenvalues ---


def test_lanczos_which_and_residual_bound():
    eigs = torch.cat([torch.tensor([-9.0, 7.0, 5.0]), torch.linspace(-2, 2, 297)])
    op = hs.ExplicitOperator(with_spectrum(eigs.double()))
    for which, ref in (("LA", [7.0, 5.0]), ("SA", [-9.0, -2.0]), ("LM", [-9.0, 7.0])):
        res = hs.lanczos(op, 2, which=which, tol=1e-3, seed=1)
        assert res.converged and res.n_iter < 100, (which, res)
        assert torch.all((res.eigenvalues - torch.tensor(ref)).abs() <= res.residuals + 1e-12)
        assert torch.all(res.residuals <= 1e-3 * res.eigenvalues.abs())


def test_lanczos_is_seeded_and_leaves_global_rng():
    op = hs.ExplicitOperator(random_symmetric(60))
    state = torch.get_rng_state()
    a = hs.lanczos(op, 1, tol=1e-4, seed=3)
    b = hs.lanczos(op, 1, tol=1e-4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.n_matvecs == b.n_matvecs


def test_lanczos_restarts_to_find_repeated_eigenvalue():
    # Four distinct eigenvalues: the Krylov space closes after 4 steps and holds one vector of
    # the 5-eigenspace; the restart finds the second copy.
    eigs = torch.tensor([5.0, 5.0, 3.0, 3.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    op = hs.ExplicitOperator(with_spectrum(eigs, seed=2))
    res = hs.lanczos(op, 3, tol=1e-10, seed=0)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([5.0, 5.0, 3.0], dtype=torch.float64), atol=1e-10, rtol=0)


def test_lanczos_beats_power_iteration_in_matvecs():
    eigs = torch.cat([torch.tensor([10.0]), 9.5 * torch.rand(399, generator=torch.Generator().manual_seed(0))]).double()
    op = hs.ExplicitOperator(with_spectrum(eigs))
    lz = hs.lanczos(op, 1, tol=1e-6)
    pw = hs.power_iteration(op, tol=1e-6, max_iter=5000)
    assert lz.converged and pw.converged
    assert abs(lz.lambda_max - 10) < 1e-6 and abs(pw.lambda_max - 10) < 1e-4
    assert lz.n_matvecs * 3 < pw.n_matvecs


def test_power_iteration_returns_largest_magnitude():
    op = hs.ExplicitOperator(with_spectrum(torch.tensor([-4.0, 3.0, 1.0, 0.5]).double()))
    assert abs(hs.power_iteration(op, tol=1e-10, max_iter=10_000).lambda_max + 4) < 1e-8


def test_lanczos_bad_arguments():
    op = hs.ExplicitOperator(random_symmetric(5))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\].*got 6"):
        hs.lanczos(op, 6)
    with pytest.raises(ValueError, match="which must be one of.*'XX'"):
        hs.lanczos(op, 1, which="XX")
    with pytest.raises(ValueError, match="either generator or seed"):
        hs.lanczos(op, 1, seed=1, generator=torch.Generator())


# ------------------------------------------------------------------------------------ trace ---


def hutchinson_variance(A: torch.Tensor) -> float:
    """Exact variance of one Rademacher quadratic form z^T A z."""
    return float(2 * ((A**2).sum() - (A.diagonal() ** 2).sum()))


def test_hutchinson_error_shrinks_like_inverse_sqrt_m():
    A = random_symmetric(40, seed=1)
    op = hs.ExplicitOperator(A)
    true = float(A.trace())
    rms = {}
    for m in (4, 64):
        errs = torch.tensor([hs.hutchinson(op, m, seed=s).estimate - true for s in range(300)])
        rms[m] = float(errs.pow(2).mean().sqrt())
        # RMS error also matches the exact standard deviation sqrt(Var / m) within 15%
        assert rms[m] == pytest.approx(math.sqrt(hutchinson_variance(A) / m), rel=0.15)
    # 16x the probes -> 4x smaller error (slope -1/2 in log-log)
    assert 3.2 < rms[4] / rms[64] < 5.0


def test_hutchinson_stderr_is_calibrated():
    A = random_symmetric(30, seed=2)
    op = hs.ExplicitOperator(A)
    true = float(A.trace())
    z = torch.tensor([(r.estimate - true) / r.stderr for r in (hs.hutchinson(op, 20, seed=s) for s in range(400))])
    coverage = float((z.abs() <= 2).double().mean())
    assert 0.9 <= coverage <= 0.99  # ~0.94 expected for a t-statistic with 19 dof
    assert 0.85 < float(z.std()) < 1.25
    r = hs.hutchinson(op, 20, seed=0)
    assert r.n_matvecs == 20 and r.method == "hutchinson"


def test_hutchpp_beats_hutchinson_at_equal_matvecs():
    n = 100
    A = with_spectrum(1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 2, seed=3)
    op = hs.ExplicitOperator(A)
    true = float(A.trace())
    m = 30
    hpp = [hs.hutchpp(op, m, seed=s) for s in range(100)]
    hut = [hs.hutchinson(op, m, seed=s) for s in range(100)]
    assert all(r.n_matvecs == m for r in hpp + hut)
    rms_pp = math.sqrt(sum((r.estimate - true) ** 2 for r in hpp) / 100)
    rms_h = math.sqrt(sum((r.estimate - true) ** 2 for r in hut) / 100)
    assert rms_pp < 0.2 * rms_h, (rms_pp, rms_h)
    # its stderr (conditional on the sketch) covers the error most of the time
    coverage = sum(abs(r.estimate - true) <= 2 * r.stderr for r in hpp) / 100
    assert coverage >= 0.85


def test_trace_bad_arguments():
    op = hs.ExplicitOperator(random_symmetric(5))
    with pytest.raises(ValueError, match="n_probes must be an int >= 2.*got 1"):
        hs.hutchinson(op, 1)
    with pytest.raises(ValueError, match="hutch\\+\\+ must be an int >= 6.*got 5"):
        hs.hutchpp(op, 5)


# -------------------------------------------------------------------------------------- SLQ ---


def test_slq_density_normalised_and_moments_match():
    g = torch.Generator().manual_seed(4)
    eigs = torch.cat([2 * torch.rand(190, generator=g) - 1, 3 + 5 * torch.rand(10, generator=g)])
    A = with_spectrum(eigs.double(), seed=5)
    n, n_probes = A.shape[0], 30
    res = hs.slq(hs.ExplicitOperator(A), n_probes=n_probes, lanczos_steps=40, seed=0)
    assert res.nodes.shape == (n_probes, 40) and res.n_matvecs == n_probes * 40
    assert abs(float(res.weights.sum()) - 1) < 1e-12
    assert abs(float(torch.trapezoid(res.density, res.grid)) - 1) < 1e-3
    # Moments: Gauss quadrature is exact for degree <= 2m-1, so the only error is the
    # Hutchinson error of tr(A^p)/n with unit Rademacher probes. Tolerance: 4 standard deviations.
    for p in (1, 2):
        Ap = torch.linalg.matrix_power(A, p)
        sd = math.sqrt(hutchinson_variance(Ap) / n_probes) / n
        assert abs(res.moment(p) - float(eigs.double().pow(p).mean())) < 4 * sd, p


def test_slq_full_krylov_recovers_eigenvalues():
    eigs = torch.linspace(-1, 3, 12, dtype=torch.float64)
    res = hs.slq(hs.ExplicitOperator(with_spectrum(eigs, seed=6)), n_probes=2, lanczos_steps=50)
    assert res.nodes.shape == (2, 12)
    for p in range(2):
        torch.testing.assert_close(res.nodes[p], eigs, atol=1e-9, rtol=0)


def test_slq_early_breakdown_pads_with_zero_weights():
    # two distinct eigenvalues: the Krylov space closes after 2 steps
    eigs = torch.tensor([1.0] * 5 + [4.0] * 5, dtype=torch.float64)
    res = hs.slq(hs.ExplicitOperator(with_spectrum(eigs, seed=7)), n_probes=3, lanczos_steps=8)
    assert res.n_matvecs == 6
    assert torch.all(res.weights[:, 2:] == 0)
    assert res.moment(1) == pytest.approx(2.5, abs=0.6)
    assert abs(float(res.weights.sum()) - 1) < 1e-12


def test_krylov_basis_stays_orthonormal():
    # Converged Ritz vectors make plain Lanczos lose orthogonality; full reorthogonalization
    # with the DGKS second pass keeps Q^T Q = I.
    eigs = torch.cat(
        [torch.tensor([100.0, 99.0]), torch.rand(298, generator=torch.Generator().manual_seed(1))]
    ).double()
    op = hs.ExplicitOperator(with_spectrum(eigs, seed=10))
    kr = Krylov(op, torch.ones(300, dtype=torch.float64), 150)
    for _ in range(149):
        kr.advance(kr.step())
    kr.step()
    Q = kr.Q[:150]
    assert (Q @ Q.T - torch.eye(150, dtype=torch.float64)).abs().max() < 1e-12
    T = kr.tridiagonal()
    assert (Q @ op.matrix @ Q.T - T).abs().max() < 1e-10  # Q^T A Q is the tridiagonal T
