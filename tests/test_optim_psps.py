"""PSPS (preconditioned stochastic Polyak step) against hand-computed float64 updates."""

import math

import pytest
import torch
from torch import nn

from sgdlab.optim import build_optimizer, resolve_hparams
from sgdlab.optim.own.psps import psps_step_size
from sgdlab.optim.own.zo import spsa_directions

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _opt_and_closure(f, x0, hp, create_graph=True):
    x = nn.Parameter(x0.clone())
    opt = build_optimizer("psps", [("x", x)], hp)

    def closure(k=0):
        opt.zero_grad()
        loss = f(x)
        loss.backward(create_graph=create_graph)
        return loss.detach()

    return x, opt, closure


def _probe_seeds(seed, n):
    """The step seeds the optimizer's private generator (seeded ``seed``) hands out, in order."""
    rng = torch.Generator().manual_seed(seed)
    return [int(torch.randint(0, 2**62, (1,), generator=rng)) for _ in range(n)]


def test_hutchinson_on_a_diagonal_quadratic_halves_the_error_each_step():
    """H diagonal: z*(Hz) = diag(H) for every Rademacher z, so B = H (curvatures > alpha) and the step is
    Newton's direction with gamma = f / (g^T H^-1 g) = 1/2: x - x* halves exactly, every step."""
    a = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)
    x_star = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=F64)
    x0 = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64)
    x, opt, closure = _opt_and_closure(lambda v: 0.5 * (a * (v - x_star) ** 2).sum(), x0, {"init_probes": 3})
    for k in range(1, 6):
        opt.step(closure)
        torch.testing.assert_close(x.detach() - x_star, (x0 - x_star) / 2**k, rtol=0, atol=1e-14)
        assert opt.param_groups[0]["last_step_size"] == pytest.approx(0.5, abs=1e-14)
    assert x.grad.grad_fn is None  # the double-backward graph is dropped after the step


def test_hutchinson_step_matches_hand_computation_with_truncation():
    """Non-diagonal indefinite H: D_0 = mean of init probes, EMA with one probe per step, B = max(alpha, |D|)
    (at step 1 one coordinate's estimate is below alpha, another negative), two steps, lr multiplier, f_star."""
    A = torch.tensor([[1.0, 0.9, 0.0], [0.9, 0.2, 0.6], [0.0, 0.6, 2.0]], dtype=F64)
    x0 = torch.tensor([1.0, -0.5, 0.8], dtype=F64)
    hp = {"lr": 0.7, "init_probes": 2, "beta": 0.5, "alpha": 0.3, "f_star": -1.0, "seed": 11}

    def f(v):
        return 0.5 * v @ A @ v + 2.0

    x, opt, closure = _opt_and_closure(f, x0, hp)
    seeds = _probe_seeds(11, 4)  # two init probes, then one per step

    def zhz(s):
        z = next(spsa_directions([x0], s, "rademacher"))
        return z * (A @ z)

    D = (zhz(seeds[0]) + zhz(seeds[1])) / 2
    xs, truncated, negative = x0.clone(), [], []
    for s in seeds[2:]:
        D = 0.5 * D + 0.5 * zhz(s)
        B = D.abs().clamp(min=0.3)
        truncated.append(bool((D.abs() < 0.3).any()))
        negative.append(bool((D < -0.3).any()))  # |D| matters, not D
        g = A @ xs
        gamma = (float(f(xs)) + 1.0) / float(g @ (g / B))
        xs = xs - 0.7 * gamma * g / B
        opt.step(closure)
        torch.testing.assert_close(x.detach(), xs, rtol=0, atol=1e-14)
        assert opt.param_groups[0]["last_step_size"] == pytest.approx(gamma, rel=1e-14)
    assert truncated == negative == [True, False], "step 1 should exercise the truncation and |D|"


@pytest.mark.parametrize("precond", ["adam", "adagrad"])
def test_squared_gradient_preconditioners_match_hand_computation(precond):
    A = torch.diag(torch.tensor([0.5, 1.0, 4.0], dtype=F64))
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    beta2, eps, lr, cap = 0.9, 1e-3, 0.8, 0.7

    def f(v):
        return 0.5 * v @ A @ v

    hp = {"precond": precond, "beta2": beta2, "eps": eps, "lr": lr, "gamma_max": cap}
    x, opt, closure = _opt_and_closure(f, x0, hp, create_graph=False)  # no HVP needed: a plain backward will do
    u, xs, capped = torch.zeros(3, dtype=F64), x0.clone(), []
    for t in range(1, 4):
        g = A @ xs
        if precond == "adam":
            u = beta2 * u + (1 - beta2) * g * g
            B = (u / (1 - beta2**t)).sqrt() + eps
        else:
            u = u + g * g
            B = u.sqrt() + eps
        gamma = float(f(xs)) / float(g @ (g / B))
        capped.append(gamma > cap)
        xs = xs - lr * min(gamma, cap) * g / B
        opt.step(closure)
        torch.testing.assert_close(x.detach(), xs, rtol=0, atol=1e-14)
        assert opt.param_groups[0]["last_step_size"] == pytest.approx(min(gamma, cap), rel=1e-14)
    assert any(capped) and not all(capped)


def test_identity_preconditioner_is_sps_with_c_1_and_no_cap():
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    x0 = torch.tensor([1.0, -3.0], dtype=F64)

    def f(v):
        return 0.5 * v @ A @ v + 0.25 * (v**4).sum()

    x, opt, closure = _opt_and_closure(f, x0, {"precond": "none", "f_star": 0.1})
    y = nn.Parameter(x0.clone())
    sps = build_optimizer("sps", [("y", y)], {"lr": 1e9, "c": 1.0, "f_star": 0.1})

    def sps_closure(k=0):
        sps.zero_grad()
        loss = f(y)
        loss.backward()
        return loss.detach()

    for _ in range(4):
        opt.step(closure)
        sps.step(sps_closure)
        assert torch.equal(x.detach(), y.detach())


def _kkt_slack_step(slack, s_t, scale, lmd=0.2):
    """One adam-preconditioned step (first step: B = |g| + eps) from slack s_t; returns the KKT residuals."""
    eps = 1e-8
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)

    def f(v):
        return scale * 0.5 * ((v - c) ** 2).sum()

    x0 = torch.zeros(3, dtype=F64)
    hp = {"precond": "adam", "slack": slack, "slack_lambda": lmd, "eps": eps}
    x, opt, closure = _opt_and_closure(f, x0, hp, create_graph=False)
    opt.param_groups[0]["slack"] = s_t
    opt.step(closure)
    g = scale * (x0 - c)
    B = g.abs() + eps
    dw, s, gamma, fv = (
        x.detach() - x0,
        opt.param_groups[0]["slack"],
        opt.param_groups[0]["last_step_size"],
        float(f(x0)),
    )
    torch.testing.assert_close(dw, -gamma * g / B, rtol=0, atol=1e-14)  # w+ - w = -gamma B^-1 g
    lin = fv + float(g @ dw)  # linearised loss at w+
    # stationarity in s: L2: (s - s_t) + lambda s - gamma = 0; L1: (s - s_t) + lambda - gamma - mu = 0, mu >= 0
    mu = s - s_t + lmd - gamma if slack == "l1" else 0.0
    stat = 0.0 if slack == "l1" else s - s_t + lmd * s - gamma
    return {"gamma": gamma, "s": s, "stat": stat, "mu": mu, "feas": lin - s, "compl": gamma * (lin - s)}


SLACK_CASES = [("l2", 0.0, 1.0, 0.2), ("l2", 0.5, 1.0, 0.2), ("l2", 5.0, 0.1, 0.2),
               ("l1", 0.0, 1.0, 0.2), ("l1", 0.0, 0.01, 1.0), ("l1", 5.0, 0.1, 0.2)]  # fmt: skip


@pytest.mark.parametrize(("slack", "s_t", "scale", "lmd"), SLACK_CASES)
def test_slack_steps_solve_their_quadratic_programs(slack, s_t, scale, lmd):
    """w+, s+ are the exact minimisers (KKT): L2 min ||dw||_B^2/2 + (s - s_t)^2/2 + lambda s^2/2, L1 the same
    with lambda s and s >= 0, both s.t. f + <g, dw> <= s. Cases: constraint active, s+ = 0 (L1), inactive."""
    r = _kkt_slack_step(slack, s_t, scale, lmd)
    tol = 1e-12
    assert r["gamma"] >= 0 and r["s"] >= -tol and r["feas"] <= tol
    assert abs(r["stat"]) < tol and abs(r["compl"]) < tol
    if slack == "l1":
        assert r["mu"] >= -tol and abs(r["mu"] * r["s"]) < tol


def test_slack_cases_are_all_reached():
    r = {case: _kkt_slack_step(*case) for case in SLACK_CASES}
    assert r[SLACK_CASES[3]]["s"] > 0 and r[SLACK_CASES[3]]["gamma"] > 0  # L1: constraint active, s+ > 0
    assert r[SLACK_CASES[4]]["s"] == 0.0 and r[SLACK_CASES[4]]["gamma"] > 0  # L1: s+ = 0 branch (gamma = f/G)
    assert r[SLACK_CASES[5]]["gamma"] == 0.0 and r[SLACK_CASES[2]]["gamma"] == 0.0  # constraint inactive
    assert r[SLACK_CASES[0]]["gamma"] > 0 and r[SLACK_CASES[1]]["gamma"] > 0
    assert psps_step_size(1.0, 0.0) == (0.0, 0.0) and psps_step_size(-0.5, 2.0) == (0.0, 0.0)


def test_badly_scaled_least_squares_preconditioning_wins():
    """The paper's claim: on badly scaled data (features scaled over two decades) preconditioned Polyak steps
    reach a far lower loss than SPS in the same number of steps (interpolation: f_i^* = 0 holds)."""
    g = torch.Generator().manual_seed(0)
    n, d = 200, 6
    X = torch.randn(n, d, generator=g, dtype=F64) * torch.logspace(-1, 1, d, dtype=F64)  # (N, d)
    y = X @ torch.randn(d, generator=g, dtype=F64)
    batches = [torch.randint(0, n, (16,), generator=g) for _ in range(100)]
    rel = {}
    for precond in ("none", "hutchinson", "adam", "adagrad"):
        w = nn.Parameter(torch.zeros(d, dtype=F64))
        opt = build_optimizer("psps", [("w", w)], {"precond": precond})
        for idx in batches:

            def closure(k=0, idx=idx, opt=opt, w=w):
                opt.zero_grad()
                loss = 0.5 * ((X[idx] @ w - y[idx]) ** 2).mean()
                loss.backward(create_graph=True)
                return loss.detach()

            opt.step(closure)
        with torch.no_grad():
            rel[precond] = float(((X @ w - y) ** 2).mean() / (y**2).mean())
    assert rel["none"] > 1e-4, rel
    assert all(rel[p] < 1e-2 * rel["none"] for p in ("hutchinson", "adam", "adagrad")), rel


def test_hutchinson_needs_create_graph():
    x, opt, closure = _opt_and_closure(lambda v: (v**4).sum(), torch.ones(2, dtype=F64), {}, create_graph=False)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(closure)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


@pytest.mark.parametrize(
    ("hp", "pattern"),
    [
        ({"precond": "newton"}, r"'precond' = 'newton' is not one of \['hutchinson', 'adam', 'adagrad', 'none'\]"),
        ({"slack": "l3"}, r"'slack' = 'l3' is not one of"),
        ({"alpha": 0.0}, r"'alpha' = 0.0 is invalid: expected a finite number > 0"),
        ({"gamma_max": -1.0}, r"'gamma_max' = -1.0 is invalid"),
        ({"slack_lambda": -0.1}, r"'slack_lambda' = -0.1 is invalid"),
        ({"beta": 1.0}, r"'beta' = 1.0 is invalid: expected a number in \[0, 1\)"),
        ({"init_probes": -1}, r"'init_probes' = -1 is invalid"),
        ({"f_star": math.inf}, r"'f_star' = inf is invalid"),
        ({"c": 0.5}, r"unknown hparam\(s\) \['c'\]"),
    ],
)
def test_bad_hparams_are_named(hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_hparams("psps", hp)
