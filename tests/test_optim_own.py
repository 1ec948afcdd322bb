"""Own optimizers (source "sgdlab") against their papers' formulas, in float64."""

import math

import pytest
import torch
from torch import nn

from sgdlab.optim import build_optimizer
from sgdlab.optim.own.local_sgd import qsr_period
from sgdlab.optim.own.sps import sps_step_size
from sgdlab.optim.own.svag import svag_coefficients

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def regression(n=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)  # (N, d)
    y = x @ torch.randn(d, generator=g, dtype=F64) + 0.5 * torch.randn(n, generator=g, dtype=F64)
    w = nn.Parameter(torch.randn(d, generator=g, dtype=F64))
    return x, y, w


def mse(w, x, y):
    return 0.5 * ((x @ w - y) ** 2).mean()


# ---- closure call pattern ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "hp", "pattern"),
    [
        ("adam", {}, [0]),
        ("sam", {}, [0, 0]),
        ("gam", {}, [0, 0, 0, 0]),
        ("svag", {"l": 2}, [0, 1]),
        ("svag_adam", {"l": 2}, [0, 1]),
        ("local_sgd", {"workers": 3}, [0, 1, 2]),
        ("sps", {}, [0]),
        ("adahessian", {}, [0]),
    ],
)
def test_closure_call_pattern(name, hp, pattern):
    x, y, w = regression()
    opt = build_optimizer(name, [("w", w)], hp)
    calls = []

    def closure(k=0):
        calls.append(k)
        opt.zero_grad()
        loss = mse(w, x, y)
        loss.backward(create_graph=name == "adahessian")
        return loss.detach()

    loss = opt.step(closure)
    assert calls == pattern
    assert loss.ndim == 0 and not loss.requires_grad


# ---- SVAG --------------------------------------------------------------------------------------
def test_svag_coefficients():
    for m in (1, 2, 4, 8, 2.5):
        a, b = svag_coefficients(m)
        assert a + b == pytest.approx(1, abs=1e-15) and a * a + b * b == pytest.approx(m, rel=1e-14)
    assert svag_coefficients(1) == (1.0, 0.0)
    with pytest.raises(ValueError, match="m = 0.5"):
        svag_coefficients(0.5)


def _svag_gradients(l, draws=3000, batch=8, seed=0):  # noqa: E741
    x, y, w = regression()
    opt = build_optimizer("svag", [("w", w)], {"lr": 0.1, "l": l})
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(draws, w.numel(), dtype=F64)
    for i in range(draws):
        idx = [torch.randint(0, len(x), (batch,), generator=g) for _ in range(2)]

        def closure(k=0, idx=idx):
            opt.zero_grad()
            loss = mse(w, x[idx[k]], y[idx[k]])
            loss.backward()
            return loss.detach()

        opt.accumulate_gradient(closure)
        out[i] = w.grad
    w.grad = None
    full = torch.autograd.grad(mse(w, x, y), w)[0]
    return out, full


def test_svag_gradient_is_unbiased_and_noise_scales_with_l():
    traces = {}
    for l in (1, 2, 4):  # noqa: E741
        grads, full = _svag_gradients(l, seed=l)
        mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(len(grads))
        assert ((mean - full).abs() < 4.5 * stderr).all(), (l, mean - full, stderr)
        traces[l] = torch.var(grads, dim=0).sum().item()  # tr Cov
    assert traces[2] / traces[1] == pytest.approx(2, rel=0.15)
    assert traces[4] / traces[1] == pytest.approx(4, rel=0.15)


def test_svag_l1_is_sgd_and_step_is_lr_over_l():
    x, y, w = regression()
    w0 = w.detach().clone()
    opt = build_optimizer("svag", [("w", w)], {"lr": 0.3, "l": 4})
    assert opt.param_groups[0]["lr"] == 0.075
    batches = [slice(0, 8), slice(8, 16)]

    def closure(k=0):
        opt.zero_grad()
        loss = mse(w, x[batches[k]], y[batches[k]])
        loss.backward()
        return loss.detach()

    opt.step(closure)
    w1 = w.detach().clone()
    g0 = torch.func.grad(lambda v: mse(v, x[:8], y[:8]))(w0)
    g1 = torch.func.grad(lambda v: mse(v, x[8:16], y[8:16]))(w0)
    a, b = svag_coefficients(4)
    torch.testing.assert_close(w1, w0 - 0.075 * (a * g0 + b * g1), rtol=0, atol=1e-14)

    w.data.copy_(w0)  # l = 1: exactly SGD on batch 0 (b = 0)
    opt = build_optimizer("svag", [("w", w)], {"lr": 0.3, "l": 1})
    opt.step(closure)
    w_svag = w.detach().clone()
    w.data.copy_(w0)
    opt = build_optimizer("sgd", [("w", w)], {"lr": 0.3})
    opt.step(closure)
    assert torch.equal(w_svag, w.detach())


def test_svag_adam_effective_hparams():
    w = nn.Parameter(torch.zeros(3, dtype=F64))
    opt = build_optimizer("svag_adam", [("w", w)], {"lr": 1e-3, "l": 2, "betas": (0.9, 0.999), "eps": 1e-8})
    g = opt.param_groups[0]
    assert g["lr"] == 5e-4 and g["eps"] == 2e-8
    assert g["betas"] == pytest.approx((1 - 0.1 / 4, 1 - 0.001 / 4), abs=1e-16)
    rms = build_optimizer("svag_adam", [("w", w)], {"betas": (0.0, 0.99), "l": 3})
    assert rms.param_groups[0]["betas"][0] == 0.0  # RMSprop has no first moment to rescale


# ---- Local SGD ---------------------------------------------------------------------------------
def _local_run(K, B, H, steps, lr, momentum=0.0, seed=0):
    x, y, w = regression(n=96, seed=seed)
    opt = build_optimizer("local_sgd", [("w", w)], {"lr": lr, "workers": K, "local_steps": H, "momentum": momentum})
    g = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(steps):
        idx = [torch.randint(0, len(x), (B,), generator=g) for _ in range(K)]
        draws.append(idx)

        def closure(k=0, idx=idx):
            opt.zero_grad()
            loss = mse(w, x[idx[k]], y[idx[k]])
            loss.backward()
            return loss.detach()

        opt.step(closure)
    return x, y, w, opt, draws


def test_local_sgd_h1_equals_large_batch_sgd():
    K, B, lr, steps = 4, 5, 0.1, 6
    x, y, w, _, draws = _local_run(K, B, 1, steps, lr)
    ref = regression(n=96, seed=0)[2].detach().clone()
    for idx in draws:
        big = torch.cat(idx)  # (K*B,) the combined batch
        ref = ref - lr * torch.func.grad(lambda v, b=big: mse(v, x[b], y[b]))(ref)
    torch.testing.assert_close(w.detach(), ref, rtol=0, atol=1e-14)


def test_local_sgd_matches_reference_simulation_with_momentum():
    K, B, H, lr, mu, steps = 3, 4, 3, 0.05, 0.9, 7
    x, y, w, opt, draws = _local_run(K, B, H, steps, lr, momentum=mu, seed=1)
    w0 = regression(n=96, seed=1)[2].detach()
    ws, vs = [w0.clone() for _ in range(K)], [torch.zeros_like(w0) for _ in range(K)]
    for t, idx in enumerate(draws, start=1):
        for k in range(K):
            gk = torch.func.grad(lambda v, i=idx[k]: mse(v, x[i], y[i]))(ws[k])
            vs[k] = mu * vs[k] + gk
            ws[k] = ws[k] - lr * vs[k]
        if t % H == 0:
            avg = torch.stack(ws).mean(0)
            ws = [avg.clone() for _ in range(K)]
    torch.testing.assert_close(w.detach(), torch.stack(ws).mean(0), rtol=0, atol=1e-13)
    assert opt.param_groups[0]["round"] == steps // H
    assert opt.param_groups[0]["local_step"] == steps % H


def test_qsr_period_formula():
    assert qsr_period(0.1, 0.0, 4) == 4
    assert qsr_period(0.1, 0.2, 2) == 4  # (0.2/0.1)^2
    assert qsr_period(0.03, 0.1, 2) == 11  # floor(11.11)
    assert qsr_period(0.5, 0.1, 3) == 3  # H_base wins at large lr
    with pytest.raises(ValueError, match="lr = 0"):
        qsr_period(0, 0.1, 1)


def test_qsr_recomputes_h_each_round_as_lr_decays():
    x, y, w = regression()
    alpha, h_base = 0.1, 2
    opt = build_optimizer(
        "local_sgd",
        [("w", w)],
        {"lr": 0.1, "workers": 2, "local_steps": h_base, "qsr_alpha": alpha},
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.2 * t))
    seen = []  # (lr at round start, H chosen)
    for _ in range(60):
        group = opt.param_groups[0]
        starting = group["local_step"] == 0
        lr_now = group["lr"]

        def closure(k=0):
            opt.zero_grad()
            loss = mse(w, x[k::2], y[k::2])
            loss.backward()
            return loss.detach()

        opt.step(closure)
        if starting:
            seen.append((lr_now, group["H"]))
        sched.step()
    assert [h for _, h in seen] == [max(h_base, math.floor((alpha / lr) ** 2)) for lr, _ in seen]
    assert seen[0][1] == 2 and seen[-1][1] > 2  # rounds lengthen as lr decays


# ---- normalized GD, SPS, GAM ---------------------------------------------------------------------
def test_normalized_gd_step_has_norm_lr():
    g = torch.Generator().manual_seed(0)
    W = nn.Parameter(torch.randn(3, 4, generator=g, dtype=F64))
    b = nn.Parameter(torch.randn(4, generator=g, dtype=F64))
    before = [W.detach().clone(), b.detach().clone()]
    opt = build_optimizer("normalized_gd", [("W", W), ("b", b)], {"lr": 0.37})

    def closure(k=0):
        opt.zero_grad()
        loss = ((W.sum(0) * b) ** 3).sum() + (W**2).sum()
        loss.backward()
        return loss.detach()

    opt.step(closure)
    step = torch.cat([(W - before[0]).flatten(), (b - before[1]).flatten()])
    grad = torch.cat([W.grad.flatten(), b.grad.flatten()])
    assert torch.linalg.vector_norm(step).item() == pytest.approx(0.37, rel=1e-14)
    torch.testing.assert_close(step, -0.37 * grad / grad.norm(), rtol=0, atol=1e-15)


@pytest.mark.parametrize(("lr", "c", "f_star"), [(10.0, 0.5, 0.0), (0.01, 0.5, 0.0), (10.0, 0.2, 0.3)])
def test_sps_step_matches_formula_on_quadratic(lr, c, f_star):
    A = torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64))
    x = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64))
    x0 = x.detach().clone()
    opt = build_optimizer("sps", [("x", x)], {"lr": lr, "c": c, "f_star": f_star})

    def closure(k=0):
        opt.zero_grad()
        loss = 0.5 * x @ A @ x
        loss.backward()
        return loss.detach()

    opt.step(closure)
    f, g = float(0.5 * x0 @ A @ x0), A @ x0
    gamma = min((f - f_star) / (c * float(g @ g)), lr)
    assert opt.param_groups[0]["last_step_size"] == pytest.approx(gamma, rel=1e-15)
    torch.testing.assert_close(x.detach(), x0 - gamma * g, rtol=0, atol=1e-15)
    assert sps_step_size(1.0, 0.0, 0.0, 0.5, 1.0) == 0.0 and sps_step_size(0.1, 0.3, 1.0, 0.5, 1.0) == 0.0


def test_gam_step_matches_formula_on_quadratic():
    A = torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64))
    x = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64))
    x0 = x.detach().clone()
    lr, rho, alpha = 0.1, 0.05, 0.3
    opt = build_optimizer(
        "gam",
        [("x", x)],
        {"lr": lr, "rho": rho, "alpha": alpha, "momentum": 0.0, "fd_radius": 1e-3, "eps": 1e-300},
    )

    def closure(k=0):
        opt.zero_grad()
        loss = 0.5 * x @ A @ x
        loss.backward()
        return loss.detach()

    opt.step(closure)
    g = A @ x0
    f = A @ (g / g.norm())  # H g/||g||
    adv = x0 + rho * f / f.norm()
    g_adv = A @ adv
    h_norm = rho * A @ (g_adv / g_adv.norm())
    torch.testing.assert_close(x.detach(), x0 - lr * (g + alpha * h_norm), rtol=0, atol=1e-11)


# ---- label noise -------------------------------------------------------------------------------
def test_label_noise_changes_fraction_p_to_other_classes():
    w = nn.Parameter(torch.zeros(1))
    p, C, n = 0.3, 5, 40000
    opt = build_optimizer("label_noise_sgd", [("w", w)], {"p": p, "num_classes": C})
    y = torch.arange(n) % C
    noisy = opt.perturb_targets(y, torch.Generator().manual_seed(0))
    changed = (noisy != y).double()
    assert noisy.dtype == y.dtype and noisy.min() >= 0 and noisy.max() < C
    assert abs(changed.mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    shift = ((noisy - y) % C)[noisy != y]  # uniform over the C-1 other classes
    counts = torch.bincount(shift, minlength=C)[1:].double()
    assert (counts / counts.sum() - 1 / (C - 1)).abs().max() < 0.02
    again = opt.perturb_targets(y, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again) and not torch.equal(
        noisy, opt.perturb_targets(y, torch.Generator().manual_seed(1))
    )


def test_label_noise_regression_adds_gaussian_sigma():
    w = nn.Parameter(torch.zeros(1))
    opt = build_optimizer("label_noise_sgd", [("w", w)], {"task": "regression", "sigma": 0.5})
    y = torch.linspace(-1, 1, 20000, dtype=F64)
    xi = opt.perturb_targets(y, torch.Generator().manual_seed(0)) - y
    assert abs(xi.mean().item()) < 4 * 0.5 / math.sqrt(len(y))
    assert xi.std().item() == pytest.approx(0.5, rel=0.03)


# ---- APOLLO rescales the raw gradient ------------------------------------------------------------
def test_apollo_mini_first_step_is_parallel_to_raw_gradient():
    g = torch.Generator().manual_seed(0)
    W = nn.Parameter(torch.randn(6, 5, generator=g, dtype=F64))
    target = torch.randn(6, 5, generator=g, dtype=F64)
    W0 = W.detach().clone()
    opt = build_optimizer("apollo_mini", [("W", W)], {"lr": 1e-3})

    def closure(k=0):
        opt.zero_grad()
        loss = ((W - target) ** 4).sum()
        loss.backward()
        return loss.detach()

    opt.step(closure)
    step, grad = (W - W0).flatten(), W.grad.flatten()
    cos = torch.dot(step, -grad) / (step.norm() * grad.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-12)  # tensor-wise scaling of the full gradient
    assert torch.linalg.matrix_rank(W - W0).item() == 5  # not a rank-1 (projected-back) update


def test_gam_evaluates_each_hessian_at_its_own_point_on_a_non_quadratic():
    """On a quartic the Hessian changes with the point: the step must use H(theta) for the ascent direction
    and H(theta_adv) for the flatness gradient (a quadratic cannot tell the two apart)."""
    A = torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, 0.2], [0.0, 0.2, 0.5]], dtype=F64)
    x = nn.Parameter(torch.tensor([1.0, -1.5, 0.8], dtype=F64))
    x0 = x.detach().clone()
    lr, rho, alpha = 0.1, 0.2, 0.5
    opt = build_optimizer(
        "gam", [("x", x)], {"lr": lr, "rho": rho, "alpha": alpha, "momentum": 0.0, "fd_radius": 1e-7, "eps": 1e-300}
    )

    def f(v):
        return 0.25 * (v**4).sum() + 0.5 * v @ A @ v

    def closure(k=0):
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss.detach()

    opt.step(closure)

    def grad(v):
        return v**3 + A @ v

    def hess(v):
        return torch.diag(3 * v**2) + A

    def step(h_adv_point):
        g = grad(x0)
        fdir = hess(x0) @ (g / g.norm())
        adv = x0 + rho * fdir / fdir.norm()
        g_adv = grad(adv)
        h_norm = rho * hess(h_adv_point(adv)) @ (g_adv / g_adv.norm())
        return x0 - lr * (g + alpha * h_norm)

    right, wrong = step(lambda adv: adv), step(lambda adv: x0)
    torch.testing.assert_close(x.detach(), right, rtol=0, atol=1e-5)
    assert (right - wrong).abs().max() > 1e-3  # the check can tell the points apart
