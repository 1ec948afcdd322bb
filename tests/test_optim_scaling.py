"""Scaling rules: exact arithmetic against hand-computed values, and clear refusals."""

from decimal import Decimal, getcontext

import pytest
import torch
from torch import nn

from sgdlab.optim import build_optimizer
from sgdlab.optim.scaling import OptimSetting, linear_scaling, sqrt_scaling, svag


def S(opt, hp=None, batch=32, steps=1000):
    return OptimSetting(opt, hp or {}, batch, steps)


# ---- linear ------------------------------------------------------------------------------------
def test_linear_scaling_sgd():
    out = linear_scaling(S("sgd", {"lr": 0.1}), 4)
    assert (out.optimizer, out.batch_size, out.steps) == ("sgd", 128, 250)
    assert out.hparams["lr"] == 0.4 and out.hparams["weight_decay"] == 0.0


def test_linear_scaling_momentum_keeps_mu_and_can_scale_down():
    out = linear_scaling(S("momentum", {"lr": 0.05, "momentum": 0.9}), 0.5)
    assert (out.batch_size, out.steps) == (16, 2000)
    assert out.hparams["lr"] == 0.025 and out.hparams["momentum"] == 0.9
    assert linear_scaling(S("nesterov", {"lr": 0.3}, steps=999), 3).hparams["lr"] == 0.9  # 3 * 0.3 exactly


@pytest.mark.parametrize(
    ("setting", "kappa", "pattern"),
    [
        (S("sgd", steps=1000), 3, r"steps / kappa = 333.33.* is not an integer"),
        (S("sgd", batch=10), 0.25, r"batch_size \* kappa = 2.5 is not an integer"),
        (S("sgd"), 0, r"kappa = 0 must be > 0"),
        (S("sgd"), -2, r"kappa = -2 must be > 0"),
        (S("adam"), 2, r"linear_scaling does not apply to optimizer 'adam'"),
        (S("sgd", {"lr": -1.0}), 2, r"'lr' = -1.0 is invalid"),
    ],
)
def test_linear_scaling_refusals(setting, kappa, pattern):
    with pytest.raises(ValueError, match=pattern):
        linear_scaling(setting, kappa)


# ---- square root -------------------------------------------------------------------------------
def test_sqrt_scaling_adam_exact():
    out = sqrt_scaling(S("adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}), 4)
    assert (out.optimizer, out.batch_size, out.steps) == ("adam", 128, 250)
    assert out.hparams["lr"] == 2e-3
    assert out.hparams["betas"] == (0.6, 0.996)
    assert out.hparams["eps"] == 5e-9


def test_sqrt_scaling_irrational_root_is_correctly_rounded():
    getcontext().prec = 50
    out = sqrt_scaling(S("adam", {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8}, steps=1000), 2)
    assert out.hparams["lr"] == float(Decimal("0.001") * Decimal(2).sqrt())
    assert out.hparams["eps"] == float(Decimal("1e-8") / Decimal(2).sqrt())
    assert out.hparams["betas"] == (0.8, 0.98)
    assert out.steps == 500


def test_sqrt_scaling_adamw_scales_decoupled_weight_decay():
    out = sqrt_scaling(S("adamw", {"lr": 1e-3, "weight_decay": 0.01}, steps=900), 9)
    assert out.hparams["weight_decay"] == 0.03 and out.hparams["lr"] == 3e-3
    kept = sqrt_scaling(S("adam", {"lr": 1e-3, "weight_decay": 0.01}, steps=900), 9)
    assert kept.hparams["weight_decay"] == 0.01  # L2 is part of the loss


def test_sqrt_scaling_rmsprop_variants():
    bc = sqrt_scaling(S("rmsprop_bc", {"lr": 1e-3, "beta2": 0.999, "eps": 1e-8}), 4)
    assert (bc.hparams["beta2"], bc.hparams["lr"], bc.hparams["eps"]) == (0.996, 2e-3, 5e-9)
    rt = sqrt_scaling(S("rmsprop", {"lr": 1e-3, "alpha": 0.99}), 4)
    assert rt.hparams["alpha"] == 0.96


@pytest.mark.parametrize(
    ("setting", "kappa", "pattern"),
    [
        (S("adam", {"betas": (0.9, 0.999)}), 10, r"kappa\*\(1-beta1\) = 1.0 >= 1 for beta1 = 0.9"),
        (S("adam", {"betas": (0.5, 0.999)}), 4, r"kappa\*\(1-beta1\) = 2.0 >= 1"),
        (S("adam", {"betas": (0.0, 0.9)}), 2, r"beta1"),
        (S("rmsprop_bc", {"beta2": 0.9}), 16, r"kappa\*\(1-beta2\) = 1.6 >= 1 for beta2 = 0.9"),
        (S("adam", {"betas": (0.95, 0.9)}), 10, r"kappa\*\(1-beta2\) = 1.0"),
        (S("sgd"), 4, r"sqrt_scaling does not apply to optimizer 'sgd'"),
        (S("rmsprop", {"momentum": 0.9}), 4, r"rmsprop with momentum = 0.9"),
        (S("adam", {"amsgrad": True}), 4, r"amsgrad"),
        (S("adam", steps=10), 4, r"steps / kappa = 2.5 is not an integer"),
    ],
)
def test_sqrt_scaling_refusals(setting, kappa, pattern):
    with pytest.raises(ValueError, match=pattern):
        sqrt_scaling(setting, kappa)


# ---- SVAG --------------------------------------------------------------------------------------
def test_svag_sgd_form():
    out = svag(S("sgd", {"lr": 0.1}, batch=64, steps=500), 4)
    assert (out.optimizer, out.batch_size, out.steps) == ("svag", 64, 2000)
    assert out.hparams == {"lr": 0.1, "l": 4.0, "weight_decay": 0.0}
    w = nn.Parameter(torch.zeros(2))
    assert build_optimizer(out.optimizer, [("w", w)], out.hparams).param_groups[0]["lr"] == 0.025


def test_svag_adam_form():
    out = svag(S("adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}, steps=100), 2)
    assert (out.optimizer, out.steps) == ("svag_adam", 400)  # steps x l^2
    assert out.hparams == {
        "lr": 1e-3,
        "l": 2.0,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    w = nn.Parameter(torch.zeros(2))
    g = build_optimizer(out.optimizer, [("w", w)], out.hparams).param_groups[0]
    assert (g["lr"], g["eps"]) == (5e-4, 2e-8)  # lr / l, eps * l
    rms = svag(S("rmsprop_bc", {"beta2": 0.99}, steps=10), 3)
    assert rms.optimizer == "svag_adam" and rms.hparams["betas"] == (0.0, 0.99)
    assert rms.steps == 90


def test_svag_momentum_form():
    out = svag(S("momentum", {"lr": 0.04, "momentum": 0.9}, batch=32, steps=100), 2)
    assert (out.optimizer, out.batch_size, out.steps) == ("svag_momentum", 32, 200)  # steps x l
    assert out.hparams == {"lr": 0.04, "momentum": 0.9, "l": 2.0, "weight_decay": 0.0}
    w = nn.Parameter(torch.zeros(2))
    g = build_optimizer(out.optimizer, [("w", w)], out.hparams).param_groups[0]
    # effective: lr / l^2, 1 - mu -> (1 - mu) / l; so eta = lr / (1 - mu) is halved, as SGD's lr under SVAG
    assert g["lr"] == pytest.approx(0.01) and g["momentum"] == pytest.approx(0.95)
    assert g["lr"] / (1 - g["momentum"]) == pytest.approx(0.04 / 0.1 / 2)


@pytest.mark.parametrize(
    ("setting", "l", "pattern"),
    [
        (S("sgd"), 0.5, r"l = 0.5 must be >= 1"),
        (S("nesterov"), 2, r"svag does not apply to optimizer 'nesterov'"),
        (S("momentum", {"dampening": 0.1}), 2, r"dampening = 0.1 is outside the heavy-ball rule"),
        (S("rmsprop"), 2, r"svag does not apply to optimizer 'rmsprop'"),
        (S("sgd", steps=3), 1.5, r"steps \* l = 4.5 is not an integer"),
    ],
)
def test_svag_refusals(setting, l, pattern):  # noqa: E741
    with pytest.raises(ValueError, match=pattern):
        svag(setting, l)


def test_setting_validation():
    with pytest.raises(ValueError, match="batch_size = 0"):
        OptimSetting("sgd", {}, 0, 10)
    s = OptimSetting("sgd", {"lr": 0.1}, 8, 10)
    assert linear_scaling(s, 1) == OptimSetting("sgd", {"lr": 0.1, "weight_decay": 0.0}, 8, 10)
