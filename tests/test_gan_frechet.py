"""Fréchet distance against closed forms; class-conditional distance and feature network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from sgdlab.gan.frechet import (
    FeatureNet,
    class_conditional_frechet,
    extract_features,
    frechet_distance,
    gaussian_stats,
    train_feature_net,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny convolutions: 2 OpenMP threads on 2 shared cores only add spin-wait
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spd(d: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T


def test_identical_gaussians_give_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=5), _spd(5, rng)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) = (m1 - m2)^2 + (s1 - s2)^2
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2)


def test_diagonal_closed_form_including_zero_variances():
    a, b = np.array([1.0, 4.0, 0.0, 2.0]), np.array([9.0, 1.0, 0.0, 0.5])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_commuting_covariances_closed_form():
    # Same eigenvectors: d^2 = sum (sqrt(l_i) - sqrt(k_i))^2
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam, kap = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    s1, s2 = q @ np.diag(lam) @ q.T, q @ np.diag(kap) @ q.T
    expected = ((np.sqrt(lam) - np.sqrt(kap)) ** 2).sum()
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(expected, rel=1e-9)


def test_general_case_matches_sqrtm_formula_and_is_symmetric():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = _spd(8, rng), _spd(8, rng)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1))


def test_rank_deficient_covariances_stay_real_and_non_negative():
    rng = np.random.default_rng(3)
    s1, s2 = _spd(10, rng, rank=3), _spd(10, rng, rank=2)
    d = frechet_distance(np.zeros(10), s1, np.zeros(10), s2)
    assert isinstance(d, float) and d >= 0.0
    assert frechet_distance(np.zeros(10), s1, np.zeros(10), s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_input_errors():
    with pytest.raises(ValueError, match=r"s2 shape \(2, 2\): expected \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="s1 is not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 1.0], [0.0, 1.0]]), np.zeros(2), np.eye(2))


def test_gaussian_stats_match_numpy():
    f = np.random.default_rng(4).normal(size=(50, 3))
    mu, cov = gaussian_stats(f)
    assert np.allclose(mu, f.mean(0)) and np.allclose(cov, np.cov(f.T))
    with pytest.raises(ValueError, match="need"):
        gaussian_stats(f[:1])


def test_class_conditional_frechet_zero_for_same_set_positive_for_shifted():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = FeatureNet((1, 28, 28), 3, feature_dim=8).eval()
        x = torch.rand(60, 1, 28, 28)
    y = torch.arange(60) % 3
    same = class_conditional_frechet(net, x, y, x, y, 3)
    assert len(same.per_class) == 3 and same.mean == pytest.approx(0.0, abs=1e-6)
    other = class_conditional_frechet(net, x, y, (x + 0.5).clamp(max=1.5), y, 3)
    assert min(other.per_class) > 0 and other.mean == pytest.approx(np.mean(other.per_class))
    with pytest.raises(ValueError, match="class 2: 20 and 0 samples"):
        class_conditional_frechet(net, x, y, x[y != 2], y[y != 2], 3)


def test_train_feature_net_learns_separable_classes_without_global_rng():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = (torch.rand(90, 1, 8, 8, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.4).clamp(0, 1)
    state = torch.get_rng_state()
    net = train_feature_net(x, y, 3, steps=60, batch_size=32, lr=3e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert not net.training
    assert (net(x).argmax(1) == y).float().mean() > 0.9
    assert extract_features(net, x, batch=7).shape == (90, 64)
