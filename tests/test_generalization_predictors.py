"""Predictors on constructed models with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab.generalization import (
    GANPredictor,
    PACBayesFlatnessPredictor,
    SharpnessPredictor,
    TracePredictor,
    TrainErrorPredictor,
    ValidationPredictor,
    classification_error,
    pacbayes_flatness,
)


def _sign_classifier(bias: float = 0.0, weight: float = 1.0) -> nn.Linear:
    """Two logits [0, weight * x0 + bias]: class 1 iff weight * x0 + bias > 0."""
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 0.0], [weight, 0.0]]))
        m.bias.copy_(torch.tensor([0.0, bias]))
    return m


def _sign_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] > 0).long()


def test_gan_predictor_zero_for_a_model_perfect_on_the_synthetic_set():
    x_syn, y_syn = _sign_data(300)
    pred = GANPredictor(x_syn, y_syn, batch_size=64)
    assert pred.name == "gan" and pred.kind == "test_error"
    assert pred.predict(_sign_classifier()) == 0.0


def test_error_predictors_give_the_known_error_of_a_linear_model():
    x, y = _sign_data(200, seed=1)
    y_noisy = y.clone()
    y_noisy[:30] = 1 - y_noisy[:30]  # exactly 30 wrong labels -> error 0.15
    model = _sign_classifier().train()
    for cls in (GANPredictor, ValidationPredictor, TrainErrorPredictor):
        assert cls(x, y_noisy, batch_size=7).predict(model) == pytest.approx(0.15)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_error_predictor_input_errors():
    x, y = _sign_data(10)
    with pytest.raises(ValueError, match="one label per sample"):
        ValidationPredictor(x, y[:5])
    with pytest.raises(TypeError, match="integer class index"):
        GANPredictor(x, y.float())


class _Quadratic(nn.Module):
    """Linear regression ``f(x) = x @ w``; with MSE its Hessian is ``2/N X^T X`` exactly."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, 1, bias=False)

    def forward(self, x):
        return self.lin(x)


def _mse(out, y):
    return F.mse_loss(out.squeeze(1), y)


def test_sharpness_and_trace_predictors_on_a_quadratic():
    pytest.importorskip("sgdlab.hessian")
    # Orthogonal columns: H = 2/N X^T X = diag(2/N * col_norms^2); Rademacher Hutchinson is
    # exact on a diagonal matrix.
    n, d = 8, 3
    x = torch.zeros(n, d, dtype=torch.float64)
    x[0, 0], x[1, 1], x[2, 2], x[3, 0] = 3.0, 1.0, 2.0, 1.0
    y = torch.zeros(n, dtype=torch.float64)  # unused by the Hessian of a quadratic
    model = _Quadratic(d).double()
    col_sq = (x**2).sum(0)  # (10, 1, 4)
    lam = SharpnessPredictor(x, y, loss_fn=_mse, tol=1e-8).predict(model)
    tr = TracePredictor(x, y, loss_fn=_mse, n_probes=10).predict(model)
    assert lam == pytest.approx(2 / n * float(col_sq.max()), rel=1e-6)
    assert tr == pytest.approx(2 / n * float(col_sq.sum()), rel=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_flatness_restores_weights_and_is_deterministic():
    x, y = _sign_data(200, seed=2)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    r1 = pacbayes_flatness(model, x, y, n_samples=3, n_iter=8, seed=5)
    r2 = pacbayes_flatness(model, x, y, n_samples=3, n_iter=8, seed=5)
    assert r1 == r2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert r1.measure == pytest.approx(1 / r1.sigma**2)
    assert r1.deviation <= 0.1


@pytest.mark.parametrize("magnitude_aware", [True, False])
def test_flatness_is_larger_for_the_sharper_model(magnitude_aware):
    # Inputs x0 = +-1; the wide-margin model has its boundary at 0 (margin 1), the sharp one at
    # -0.9 (the negatives sit 0.1 from it), so far smaller perturbations flip them.
    x = torch.tensor([[1.0, 0.0]] * 50 + [[-1.0, 0.0]] * 50)
    y = (x[:, 0] > 0).long()
    flat, sharp = _sign_classifier(0.0, 1.0), _sign_classifier(0.9, 1.0)
    assert classification_error(flat, x, y) == classification_error(sharp, x, y) == 0.0
    pred = PACBayesFlatnessPredictor(x, y, magnitude_aware=magnitude_aware, n_samples=4, n_iter=12)
    assert pred.kind == "measure"
    assert pred.name == ("pacbayes_mag_flatness" if magnitude_aware else "pacbayes_flatness")
    m_flat, m_sharp = pred.predict(flat), pred.predict(sharp)
    assert m_sharp > 3 * m_flat


def test_flatness_errors():
    x, y = _sign_data(10)
    with pytest.raises(ValueError, match="criterion='acc'"):
        pacbayes_flatness(_sign_classifier(), x, y, criterion="acc")
    with pytest.raises(ValueError, match="sigma_min=1.0, sigma_max=0.5"):
        pacbayes_flatness(_sign_classifier(), x, y, sigma_min=1.0, sigma_max=0.5)
