"""SVAG for heavy-ball SGD (``svag_momentum``): torch SGD at l = 1, the two-batch update, the momentum SDE (float64)."""

import math

import pytest
import torch
from torch import nn

from sgdlab.optim import build_optimizer, get_spec, resolve_hparams
from sgdlab.optim.own.svag import svag_coefficients, svag_momentum_effective

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _regression(seed=0, n=32, d=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)  # (N, d)
    y = x @ torch.randn(d, generator=g, dtype=F64) + 0.3 * torch.randn(n, generator=g, dtype=F64)
    return x, y, torch.randn(d, generator=g, dtype=F64)


def _closure(opt, w, x, y, batches):
    """closure(k): mean squared error on batches[step][k] (two independent slices per step)."""
    it = iter(batches)
    current = {}

    def closure(k=0):
        if k == 0:
            current["b"] = next(it)
        opt.zero_grad()
        sl = current["b"][k]
        loss = 0.5 * ((x[sl] @ w - y[sl]) ** 2).mean()
        loss.backward()
        return loss.detach()

    return closure


@pytest.mark.parametrize("mu", [0.9, 0.3])  # 1 - (1 - 0.3) != 0.3 in floating point: l = 1 passes mu through
def test_l1_is_torch_sgd_momentum_exactly(mu):
    x, y, w0 = _regression()
    batches = [(slice(8 * i, 8 * i + 8), slice(8 * i + 4, 8 * i + 12)) for i in range(3)]
    w = nn.Parameter(w0.clone())
    opt = build_optimizer("svag_momentum", [("w", w)], {"lr": 0.1, "l": 1, "momentum": mu, "weight_decay": 0.01})
    closure = _closure(opt, w, x, y, batches)
    for _ in batches:
        opt.step(closure)
    ref = nn.Parameter(w0.clone())
    torch_opt = torch.optim.SGD([ref], lr=0.1, momentum=mu, weight_decay=0.01)
    for b in batches:  # batch 0 of every step only (b = 0 at l = 1)
        torch_opt.zero_grad()
        (0.5 * ((x[b[0]] @ ref - y[b[0]]) ** 2).mean()).backward()
        torch_opt.step()
    assert torch.equal(w.detach(), ref.detach())
    assert opt.param_groups[0]["momentum"] == mu and opt.param_groups[0]["lr"] == 0.1


def test_effective_hparams_are_lr_over_l_squared_and_one_minus_mu_over_l():
    assert svag_momentum_effective(0.05, 0.9, 2.0) == (0.0125, 1 - 0.1 / 2)
    lr4, mu4 = svag_momentum_effective(0.08, 0.9, 4.0)
    assert lr4 == 0.005 and mu4 == pytest.approx(0.975, abs=1e-15)
    # in EMA terms: effective lr lr/(1-mu) shrinks by l, 1 - mu by l
    assert lr4 / (1 - mu4) == pytest.approx(0.08 / 0.1 / 4, rel=1e-13)
    w = nn.Parameter(torch.zeros(2, dtype=F64))
    g = build_optimizer("svag_momentum", [("w", w)], {"lr": 0.08, "l": 4}).param_groups[0]
    assert g["lr"] == lr4 and g["momentum"] == mu4
    assert get_spec("svag_momentum").batches_per_step == 2
    assert resolve_hparams("svag_momentum", {}) == {"lr": 0.05, "l": 1.0, "momentum": 0.9, "weight_decay": 0.0}


def test_two_batch_update_and_buffer():
    """Step 1: v = a g0 + b g1, p -= lr_l v; step 2: v = mu_l v + (a g0' + b g1'), at the new point."""
    x, y, w0 = _regression(seed=1)
    lr, mu, l = 0.2, 0.8, 4.0  # noqa: E741
    batches = [(slice(0, 8), slice(8, 16)), (slice(16, 24), slice(24, 32))]
    w = nn.Parameter(w0.clone())
    opt = build_optimizer("svag_momentum", [("w", w)], {"lr": lr, "l": l, "momentum": mu})
    closure = _closure(opt, w, x, y, batches)

    def grad(v, sl):
        return torch.func.grad(lambda u: 0.5 * ((x[sl] @ u - y[sl]) ** 2).mean())(v)

    a, b = svag_coefficients(l)
    assert (a, b) == pytest.approx(((1 + math.sqrt(7)) / 2, (1 - math.sqrt(7)) / 2), abs=1e-15)
    lr_l, mu_l = lr / l**2, 1 - (1 - mu) / l
    v = a * grad(w0, batches[0][0]) + b * grad(w0, batches[0][1])
    w1 = w0 - lr_l * v
    opt.step(closure)
    torch.testing.assert_close(w.detach(), w1, rtol=0, atol=1e-15)
    v = mu_l * v + a * grad(w1, batches[1][0]) + b * grad(w1, batches[1][1])
    opt.step(closure)
    torch.testing.assert_close(w.detach(), w1 - lr_l * v, rtol=0, atol=1e-15)


def _run_quadratic(l, replicas, sigma, *, eta=0.1, c=1.0, keep_mu=False, seed=0, T=5.0):  # noqa: E741
    """Heavy ball on f(x) = x^2/2 + sigma xi x (xi ~ N(0,1) fresh per minibatch) for SDE time T.

    Base hparams: EMA-form lr eta, 1 - mu = c eta (torch lr = eta (1 - mu)). Returns (t, mean, var) over
    ``replicas`` independent runs (the coordinates of x), sampled once per l steps (SDE time eta per sample).
    """
    mu = 1 - c * eta
    x = nn.Parameter(torch.ones(replicas, dtype=F64))
    opt = build_optimizer("svag_momentum", [("x", x)], {"lr": eta * (1 - mu), "momentum": mu, "l": l})
    if keep_mu:  # the wrong rule: mu fixed, lr / l (noise still amplified)
        opt.param_groups[0].update(lr=eta * (1 - mu) / l, momentum=mu)
    gen = torch.Generator().manual_seed(seed)

    def closure(k=0):
        opt.zero_grad()
        xi = torch.randn(replicas, generator=gen, dtype=F64) if sigma else 0.0
        loss = (0.5 * x**2 + sigma * xi * x).sum()
        loss.backward()
        return loss.detach()

    t, mean, var = [], [], []
    for s in range(round(T / eta * l)):
        opt.step(closure)
        if (s + 1) % l == 0:
            t.append((s + 1) * eta / l)
            mean.append(x.detach().mean().item())
            var.append(x.detach().var().item() if replicas > 1 else 0.0)
    return torch.tensor(t, dtype=F64), torch.tensor(mean, dtype=F64), torch.tensor(var, dtype=F64)


def test_curves_for_l_1_2_4_follow_the_momentum_sde_in_sde_time():
    """E[x] is the noiseless run (linear dynamics); the SDE's mean solves X'' + c X' + c X = 0, X(0) = 1,
    X'(0) = 0 (c = h = 1: X = e^{-t/2} (cos(sqrt3 t/2) + sin(sqrt3 t/2)/sqrt3)). SVAG's error to it halves
    with each doubling of l (first-order convergence); the 'keep mu' rule converges to another curve. The
    stationary variance of the SDE is eta sigma^2 / (2h) = 0.2 for every l (noise kept by the amplification)."""
    errs = {}
    for l in (1, 2, 4):  # noqa: E741
        t, mean, _ = _run_quadratic(l, 1, 0.0)
        s3 = math.sqrt(3.0)
        sde = torch.exp(-t / 2) * (torch.cos(s3 * t / 2) + torch.sin(s3 * t / 2) / s3)
        errs[l] = (mean - sde).abs().max().item()
    assert errs[4] < 0.012, errs
    assert 1.8 < errs[1] / errs[2] < 2.2 and 1.8 < errs[2] / errs[4] < 2.2, errs
    t, wrong, _ = _run_quadratic(4, 1, 0.0, keep_mu=True)
    assert (wrong - sde).abs().max().item() > 10 * errs[4]

    for l in (1, 2, 4):  # noqa: E741
        t, _, var = _run_quadratic(l, 10000, 2.0, seed=l)
        late = var[t >= 3.0].mean().item()
        assert late == pytest.approx(0.2, rel=0.06), (l, late)  # without amplification: ~0.2 / l
