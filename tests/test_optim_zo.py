"""Zeroth-order families (zo_sgd = MeZO, zo_adamu = ZO-AdaMU) against float64 hand computations.

The directions are regenerated here from the documented seed scheme (private generator seeded with the
``seed`` hparam draws s = randint(0, 2**62) per perturbation; a generator seeded with s draws each
parameter's noise in order), independently of the optimizer's code.
"""

import math

import pytest
import torch
from torch import nn

from sgdlab.optim import OptimizerConfigError, build_optimizer, resolve_hparams
from sgdlab.optim.own.zo import zo_adamu_anneal
from sgdlab.optim.testing import build, mlp_problem


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Quad(nn.Module):
    """f = 1/2 sum a (W - W*)^2 + 1/2 sum c (b - b*)^2 with a cross term, so grad f is not diagonal."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        kw = {"generator": g, "dtype": torch.float64}
        self.W = nn.Parameter(torch.randn(2, 3, **kw))
        self.b = nn.Parameter(torch.randn(3, **kw))
        self.register_buffer("a", 0.5 + torch.rand(2, 3, **kw))
        self.register_buffer("c", 0.5 + torch.rand(3, **kw))
        self.register_buffer("Ws", torch.randn(2, 3, **kw))
        self.register_buffer("bs", torch.randn(3, **kw))

    def f(self, W, b):
        dW, db = W - self.Ws, b - self.bs
        return 0.5 * (self.a * dW**2).sum() + 0.5 * (self.c * db**2).sum() + 0.3 * (dW[0] * db).sum()

    def forward(self):
        return self.f(self.W, self.b)

    def grad(self, W, b):
        dW, db = W - self.Ws, b - self.bs
        gW = self.a * dW
        gW[0] += 0.3 * db
        return gW, self.c * db + 0.3 * dW[0]


class Recorder:
    """closure(k, backward) that records each call's arguments and the parameters it saw."""

    def __init__(self, model, loss):
        self.model, self.loss, self.calls = model, loss, []

    def __call__(self, k=0, backward=True):
        self.calls.append((k, backward, [p.detach().clone() for p in self.model.parameters()]))
        assert not backward, "a zeroth-order step asked for a backward pass"
        with torch.no_grad():
            return self.loss().detach()


def step_seeds(seed, n):
    g = torch.Generator().manual_seed(seed)
    return [int(torch.randint(0, 2**62, (1,), generator=g)) for _ in range(n)]


def spsa_z(shapes, s, kind):
    g = torch.Generator().manual_seed(s)
    if kind == "gaussian":
        return [torch.randn(sh, generator=g, dtype=torch.float64) for sh in shapes]
    return [torch.randint(0, 2, sh, generator=g, dtype=torch.float64) * 2 - 1 for sh in shapes]


# ---- zo_sgd ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("q", [1, 3])
def test_zo_sgd_step_is_the_hand_formula(kind, q):
    m = Quad()
    W0, b0 = m.W.detach().clone(), m.b.detach().clone()
    lr, eps, wd, seed = 0.05, 1e-3, 0.1, 7
    h = {"lr": lr, "eps": eps, "weight_decay": wd, "n_perturbations": q, "perturbation": kind, "seed": seed}
    opt = build_optimizer("zo_sgd", m.named_parameters(), h)
    rec = Recorder(m, m)
    loss = opt.step(rec)

    seeds = step_seeds(seed, q)
    gW, gb = m.grad(W0, b0)
    dW, db = wd * W0, wd * b0
    evals = []
    for j, s in enumerate(seeds):
        zW, zb = spsa_z([(2, 3), (3,)], s, kind)
        p = float((zW * gW).sum() + (zb * gb).sum())  # exact for a quadratic: (f(x+ez)-f(x-ez))/2e = z.grad f
        assert opt.last_projected_grads[j] == pytest.approx(p, rel=1e-8)
        dW, db = dW + p * zW / q, db + p * zb / q
        evals += [m.f(W0 + eps * zW, b0 + eps * zb), m.f(W0 - eps * zW, b0 - eps * zb)]
        # the closure saw theta + eps z_j, then theta - eps z_j, on minibatch k = 0
        for (k, _, seen), sign in zip(rec.calls[2 * j : 2 * j + 2], (1, -1)):
            assert k == 0
            torch.testing.assert_close(seen[0], W0 + sign * eps * zW, rtol=0, atol=1e-14)
            torch.testing.assert_close(seen[1], b0 + sign * eps * zb, rtol=0, atol=1e-14)
    assert opt.last_seeds == seeds and len(rec.calls) == 2 * q
    torch.testing.assert_close(m.W.detach(), W0 - lr * dW, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(m.b.detach(), b0 - lr * db, rtol=1e-12, atol=1e-13)
    assert float(loss) == pytest.approx(float(torch.stack(evals).mean()), rel=1e-13)
    assert m.W.grad is None and m.b.grad is None


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_spsa_estimate_converges_to_the_gradient(kind):
    """E[p z] = grad f. One step with q = N draws and lr = 1 moves theta by exactly -mean_j p_j z_j.

    Per coordinate the estimator's variance is g_i^2 + ||g||^2 (Gaussian; Rademacher: ||g||^2 - g_i^2,
    smaller), so the mean of N draws is within 5 sqrt((g_i^2 + ||g||^2) / N) of g_i (5 sigma).
    """
    n = 2000
    m = Quad(1)
    W0, b0 = m.W.detach().clone(), m.b.detach().clone()
    h = {"lr": 1.0, "n_perturbations": n, "perturbation": kind, "seed": 3}
    opt = build_optimizer("zo_sgd", m.named_parameters(), h)
    opt.step(Recorder(m, m))
    est = torch.cat([(W0 - m.W.detach()).flatten(), (b0 - m.b.detach()).flatten()])
    g = torch.cat([t.flatten() for t in m.grad(W0, b0)])
    tol = 5 * torch.sqrt((g**2 + (g**2).sum()) / n)
    assert torch.all((est - g).abs() < tol), (est - g).abs() / tol
    assert torch.linalg.vector_norm(est - g) < 0.2 * torch.linalg.vector_norm(g)


@pytest.mark.parametrize("name", ["zo_sgd", "zo_adamu"])
def test_no_backward_and_no_grad_on_an_mlp(name):
    model, x, y = mlp_problem(0)
    opt = build(name, model)
    rec = Recorder(model, lambda: nn.functional.cross_entropy(model(x[:32]), y[:32]))
    for _ in range(3):
        opt.step(rec)
    assert len(rec.calls) == 3 * 2 * opt.n_perturbations
    assert all(not backward and k == 0 for k, backward, _ in rec.calls)
    assert all(p.grad is None for p in model.parameters())


# ---- zo_adamu -------------------------------------------------------------------------------------
def anneal_hand(t, t1, t2, t3, phi, rule):
    """Eq. (7) written out again: 1 before T1; the cosine on [T1, T2); 0.9 (printed) / held (continuous)."""
    if t < t1:
        return 1.0
    if rule == "printed":
        if t >= t2:
            return 0.9
        return 0.5 + 0.5 * math.cos(math.pi * (t3 - t1) / (t3 - t * phi * (t3 - t2) / (t2 - t1)))
    u = min(t, t2) - t1
    return 0.5 + 0.5 * math.cos(math.pi * u / (t3 - u * phi * (t3 - t2) / (t2 - t1)))


def test_anneal_schedule():
    t1, t2, t3 = 4, 10, 16
    for rule in ("printed", "continuous"):
        for phi in (1.0, 0.1, 1.5):
            for t in range(1, 25):
                assert zo_adamu_anneal(t, t1, t2, t3, phi, rule) == pytest.approx(anneal_hand(t, t1, t2, t3, phi, rule))
    # continuous: 1 at T1 (no jump), decreasing on the phase, held after T2
    vals = [zo_adamu_anneal(t, t1, t2, t3, 1.0, "continuous") for t in range(1, 25)]
    assert vals[t1 - 1] == 1.0 and all(a > b for a, b in zip(vals[t1 - 1 : t2 - 1], vals[t1 : t2 - 1]))
    assert len(set(vals[t2 - 1 :])) == 1
    # printed, with the paper's T1, T2 (Table 3) and T3 = 20000: ~0 right after the warm-up, 0.9 after T2
    paper = [zo_adamu_anneal(1024, 1024, 16000, 20000, f) for f in (1.0, 0.1, 1.5)]
    assert paper == pytest.approx([0.0036, 0.0062, 0.0024], abs=5e-4)
    assert zo_adamu_anneal(1023, 1024, 16000, 20000, 1.0) == 1.0
    assert zo_adamu_anneal(16000, 1024, 16000, 20000, 0.1) == 0.9


@pytest.mark.parametrize("rule", ["printed", "continuous"])
@pytest.mark.parametrize("q", [1, 2])
def test_zo_adamu_two_steps_are_the_hand_formulas(rule, q):
    t1, t2, t3, phi = 1, 4, 7, (1.0, 0.1, 1.5)
    lr, eps, sigma, wd, seed = 0.01, 1e-3, 1e-8, 0.05, 5
    m = Quad(2)
    h = {"lr": lr, "eps": eps, "t1": t1, "t2": t2, "t3": t3, "phi": phi, "anneal": rule, "weight_decay": wd}
    opt = build_optimizer("zo_adamu", m.named_parameters(), {**h, "n_perturbations": q, "seed": seed})
    rec = Recorder(m, m)

    theta = [m.W.detach().clone(), m.b.detach().clone()]
    mom = [torch.zeros_like(t) for t in theta]  # m_0 = 0
    seeds = iter(step_seeds(seed, 2 * q))
    for t in (1, 2):  # step 1: m_0 = 0; step 2: from step 1's momentum; both inside [T1, T2)
        a, b1, b2 = (anneal_hand(t, t1, t2, t3, f, rule) for f in phi)
        upd = [wd * x for x in theta]
        new_mom = [torch.zeros_like(x) for x in theta]
        for _ in range(q):
            gen = torch.Generator().manual_seed(next(seeds))
            zd, zdd = [], []
            for x, mo in zip(theta, mom):
                xi1 = torch.randn(x.shape, generator=gen, dtype=torch.float64)
                xi2 = torch.randn(x.shape, generator=gen, dtype=torch.float64)
                zd.append(math.sqrt(a) * xi1)
                zdd.append(mo + math.sqrt(1 - a) * xi2)
            mt = [b1 * u + (1 - b1) * w for u, w in zip(zd, zdd)]
            g = (m.f(*[x + eps * d for x, d in zip(theta, mt)]) - m.f(*[x - eps * d for x, d in zip(theta, mt)])) / (
                2 * eps
            )
            for i in range(2):
                v = b2 * zd[i] ** 2 + (1 - b2) * zdd[i] ** 2
                upd[i] = upd[i] + g * mt[i] / torch.sqrt(v + sigma) / q
                new_mom[i] = new_mom[i] + mt[i] / q
        theta = [x - lr * u for x, u in zip(theta, upd)]
        mom = new_mom
        loss = opt.step(rec)
        assert opt.last_anneal == pytest.approx((a, b1, b2))
        assert a < 1 or t == 1  # the annealing is live (continuous: 1 exactly at T1, then below)
        for p, x, mo in zip(m.parameters(), theta, mom):
            torch.testing.assert_close(p.detach(), x, rtol=1e-11, atol=1e-13)
            torch.testing.assert_close(opt.state[p]["m"], mo, rtol=1e-11, atol=1e-13)
    assert opt.param_groups[0]["zo_step"] == 2 and len(rec.calls) == 4 * q
    assert torch.isfinite(loss) and all(p.grad is None for p in m.parameters())


def test_zo_adamu_warmup_update_is_signlike():
    """Before T1 (alpha = beta1 = beta2 = 1): m = xi1, v = xi1^2, so each coordinate moves by lr |g| (up to sigma)."""
    m = Quad(3)
    W0 = m.W.detach().clone()
    opt = build_optimizer("zo_adamu", m.named_parameters(), {"lr": 1e-3, "t1": 10, "t2": 20, "t3": 30})
    opt.step(Recorder(m, m))
    g = abs(opt.last_projected_grads[0])
    torch.testing.assert_close((W0 - m.W.detach()).abs(), torch.full_like(W0, 1e-3 * g), rtol=1e-3, atol=0)


# ---- configuration errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "hp", "key"),
    [
        ("zo_sgd", {"eps": 0.0}, "'eps'"),
        ("zo_sgd", {"n_perturbations": 0}, "'n_perturbations'"),
        ("zo_sgd", {"perturbation": "uniform"}, "'perturbation'"),
        ("zo_sgd", {"weight_decay": -1.0}, "'weight_decay'"),
        ("zo_adamu", {"t1": 20, "t2": 10}, "'t1'"),
        ("zo_adamu", {"t2": 30000}, "'t3'"),
        ("zo_adamu", {"phi": (1.0, -0.1, 1.5)}, "'phi'"),
        ("zo_adamu", {"phi": (1.0, 0.1)}, "'phi'"),
        ("zo_adamu", {"anneal": "cosine"}, "'anneal'"),
        ("zo_adamu", {"t3": 100000}, "'phi'"),  # the paper's 100K steps: Eq. 7's denominator changes sign
        ("zo_adamu", {"t1": 2, "t2": 10, "t3": 40, "anneal": "continuous"}, "'phi'"),
    ],
)
def test_bad_hparams_name_the_key(name, hp, key):
    with pytest.raises(OptimizerConfigError, match=key):
        resolve_hparams(name, hp)


def test_defaults_are_valid():
    assert resolve_hparams("zo_adamu")["t3"] == 20000
    assert resolve_hparams("zo_sgd")["perturbation"] == "gaussian"
