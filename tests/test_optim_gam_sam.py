"""GAM + SAM (``gam_sam``) against hand-derived float64 updates, and its reductions to gam, sam and SGD."""

import pytest
import torch
from torch import nn

from sgdlab.optim import build_optimizer, resolve_hparams

F64 = torch.float64
A = torch.tensor([[1.0, 0.3, 0.0, 0.1], [0.3, 2.0, 0.2, 0.0], [0.0, 0.2, 0.5, 0.0], [0.1, 0.0, 0.0, 3.0]], dtype=F64)
X0 = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(name, hp, f, steps=1):
    """(final x, closure calls) after ``steps`` steps of ``name`` on f from X0."""
    x = nn.Parameter(X0.clone())
    opt = build_optimizer(name, [("x", x)], hp)
    calls = []

    def closure(k=0):
        calls.append(k)
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss.detach()

    for _ in range(steps):
        opt.step(closure)
    return x.detach(), calls


def quadratic(v):
    return 0.5 * v @ A @ v


def _unit(v):
    return v / v.norm()


def _reference_step(x0, grad, hess, *, lr, rho, alpha, sam_rho):
    """One GAM + SAM step from x0 (momentum 0), exact Hessians: x0 - lr (g_sam + alpha h_norm)."""
    g = grad(x0)
    g_sam = grad(x0 + sam_rho * _unit(g))
    f = hess(x0) @ _unit(g)  # grad ||grad L|| at x0
    adv = x0 + rho * _unit(f)
    h_norm = rho * hess(adv) @ _unit(grad(adv))
    return x0 - lr * (g_sam + alpha * h_norm)


@pytest.mark.parametrize("fd_radius", [1e-3, 0.04])  # 0.04 == sam_rho: the SAM pass doubles as the FD pass
def test_step_matches_hand_derived_update_on_a_quadratic(fd_radius):
    lr, rho, alpha, sam_rho = 0.1, 0.05, 0.3, 0.04
    hp = {"lr": lr, "rho": rho, "alpha": alpha, "sam_rho": sam_rho, "momentum": 0.0, "fd_radius": fd_radius}
    x1, calls = _run("gam_sam", {**hp, "eps": 1e-300}, quadratic)
    want = _reference_step(X0, lambda v: A @ v, lambda v: A, lr=lr, rho=rho, alpha=alpha, sam_rho=sam_rho)
    torch.testing.assert_close(x1, want, rtol=0, atol=1e-12)  # finite differences are exact on a quadratic
    assert calls == [0] * (4 if fd_radius == sam_rho else 5)  # all passes on the SAME minibatch
    # the SAM gradient matters: the same step with g instead of g_sam is far off
    plain = _reference_step(X0, lambda v: A @ v, lambda v: A, lr=lr, rho=rho, alpha=alpha, sam_rho=0.0)
    assert (plain - want).abs().max() > 1e-3


def test_sam_gradient_is_taken_at_the_sam_point_on_a_quartic():
    """On a quartic gradients and Hessians change with the point: g_sam at x0 + sam_rho g/||g||, f at x0,
    h_norm at th_adv (each checked against exact derivatives; FD error O(fd_radius))."""
    lr, rho, alpha, sam_rho = 0.1, 0.2, 0.5, 0.3

    def f(v):
        return 0.25 * (v**4).sum() + 0.5 * v @ A @ v

    def grad(v):
        return v**3 + A @ v

    def hess(v):
        return torch.diag(3 * v**2) + A

    hp = {"lr": lr, "rho": rho, "alpha": alpha, "sam_rho": sam_rho, "momentum": 0.0, "fd_radius": 1e-7}
    x1, _ = _run("gam_sam", {**hp, "eps": 1e-300}, f)
    want = _reference_step(X0, grad, hess, lr=lr, rho=rho, alpha=alpha, sam_rho=sam_rho)
    torch.testing.assert_close(x1, want, rtol=0, atol=1e-5)
    wrong = _reference_step(X0, grad, hess, lr=lr, rho=rho, alpha=alpha, sam_rho=0.1)
    assert (want - wrong).abs().max() > 1e-3  # the check can tell the SAM radius apart


BASE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}


def test_sam_rho_zero_is_gam_exactly():
    hp = {**BASE, "rho": 0.05, "alpha": 0.3, "fd_radius": 0.01}
    ours, calls = _run("gam_sam", {**hp, "sam_rho": 0.0}, quadratic, steps=3)
    gam, gam_calls = _run("gam", hp, quadratic, steps=3)
    assert torch.equal(ours, gam) and calls == gam_calls


@pytest.mark.parametrize("off", [{"alpha": 0.0}, {"rho": 0.0}])
def test_no_flatness_term_is_sam(off):
    hp = {**BASE, "rho": 0.05, "alpha": 0.3, "sam_rho": 0.05, **off}
    ours, _ = _run("gam_sam", hp, quadratic, steps=3)
    sam, _ = _run("sam", {**BASE, "rho": 0.05}, quadratic, steps=3)
    # pytorch_optimizer's SAM takes the gradient norm in float32 (relative error ~6e-8 in the perturbation)
    torch.testing.assert_close(ours, sam, rtol=0, atol=1e-8)
    hand = X0.clone()  # and a float64 SAM written out: g at x + rho g/||g||, torch momentum, L2 weight decay
    v = torch.zeros(4, dtype=F64)
    for _ in range(3):
        g = A @ hand
        v = 0.9 * v + A @ (hand + 0.05 * _unit(g)) + 0.01 * hand
        hand = hand - 0.1 * v
    torch.testing.assert_close(ours, hand, rtol=0, atol=1e-13)


def test_both_off_is_sgd_momentum():
    ours, _ = _run("gam_sam", {**BASE, "rho": 0.05, "alpha": 0.0, "sam_rho": 0.0}, quadratic, steps=3)
    sgd, _ = _run("momentum", BASE, quadratic, steps=3)
    assert torch.equal(ours, sgd)


def test_momentum_carries_the_combined_gradient():
    """Two steps with torch-convention momentum: v1 = d0, v2 = mu v1 + d1 (d = g_sam + alpha h_norm)."""
    lr, rho, alpha, sam_rho, mu = 0.1, 0.05, 0.3, 0.04, 0.5
    hp = {"lr": lr, "rho": rho, "alpha": alpha, "sam_rho": sam_rho, "momentum": mu, "fd_radius": 1e-3, "eps": 1e-300}
    x2, _ = _run("gam_sam", hp, quadratic, steps=2)
    kw = {"lr": 1.0, "rho": rho, "alpha": alpha, "sam_rho": sam_rho}
    d0 = X0 - _reference_step(X0, lambda v: A @ v, lambda v: A, **kw)
    x1 = X0 - lr * d0
    d1 = x1 - _reference_step(x1, lambda v: A @ v, lambda v: A, **kw)
    torch.testing.assert_close(x2, x1 - lr * (mu * d0 + d1), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("hp", "pattern"),
    [
        ({"sam_rho": -0.1}, r"'sam_rho' = -0.1 is invalid: expected a finite number >= 0"),
        ({"fd_radius": 0.0}, r"'fd_radius' = 0.0 is invalid: expected a finite number > 0"),
        ({"momentum": 1.0}, r"'momentum' = 1.0 is invalid"),
        ({"adaptive": True}, r"unknown hparam\(s\) \['adaptive'\]"),
    ],
)
def test_bad_hparams_are_named(hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_hparams("gam_sam", hp)
