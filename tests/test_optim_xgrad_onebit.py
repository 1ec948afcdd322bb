"""XGrad (weight prediction over SGD-momentum/Adam/AdamW) and simulated 1-bit Adam, against float64 hand references.

The shared family tests (loss decreases, state_dict round-trip, global RNG untouched) and the resume case run
from TEST_HPARAMS / RESUME_CASES; here: the exact maths on tiny quadratics.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab.optim import OptimizerConfigError, batches_per_step, build_optimizer
from sgdlab.optim.own.onebit_adam import compress_with_feedback, onebit_compress
from sgdlab.optim.testing import mlp_problem

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Quad(nn.Module):
    """f_k(W, b) = 1/2 sum a (W - W*_k)^2 + 1/2 sum c (b - b*_k)^2: worker/batch k has its own minimiser."""

    def __init__(self, n_targets: int = 1, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(2, 3, generator=g, dtype=D))
        self.b = nn.Parameter(torch.randn(3, generator=g, dtype=D))
        self.a = 0.5 + torch.rand(2, 3, generator=g, dtype=D)
        self.c = 0.5 + torch.rand(3, generator=g, dtype=D)
        self.W_star = torch.randn(n_targets, 2, 3, generator=g, dtype=D)
        self.b_star = torch.randn(n_targets, 3, generator=g, dtype=D)

    def loss(self, k: int = 0) -> torch.Tensor:
        return 0.5 * ((self.a * (self.W - self.W_star[k]) ** 2).sum() + (self.c * (self.b - self.b_star[k]) ** 2).sum())

    def grads(self, W, b, k: int = 0):
        """Hand gradient of f_k at (W, b)."""
        return self.a * (W - self.W_star[k]), self.c * (b - self.b_star[k])


def recording_closure(q: Quad, opt, seen: list):
    def closure(k: int = 0, backward: bool = True):
        seen.append((k, q.W.detach().clone(), q.b.detach().clone()))
        opt.zero_grad()
        loss = q.loss(k)
        loss.backward()
        return loss.detach()

    return closure


def close(a, b):
    return torch.allclose(a, b, rtol=1e-13, atol=1e-15)


# ---- XGrad -------------------------------------------------------------------------------------------------------
def _hand_xgrad(base: str, q: Quad, steps: int, lr: float, s: int, wd: float, mu=0.9, betas=(0.9, 0.999), eps=1e-8):
    """(predicted weights per step, final weights) of XGrad by the formulas in xgrad.py's docstring."""
    th = [q.W.detach().clone(), q.b.detach().clone()]
    b1, b2 = betas
    buf, m, v = None, [torch.zeros_like(x) for x in th], [torch.zeros_like(x) for x in th]
    predicted = []
    for t in range(1, steps + 1):
        if base == "sgd":
            delta = None if buf is None else buf
        else:
            tp = t - 1  # the state before this step
            delta = (
                None if tp == 0 else [(mi / (1 - b1**tp)) / ((vi / (1 - b2**tp)).sqrt() + eps) for mi, vi in zip(m, v)]
            )
        hat = th if delta is None else [x - s * lr * d for x, d in zip(th, delta)]
        predicted.append(hat)
        g = list(q.grads(*hat))
        if base in ("sgd", "adam"):  # L2 decay at theta_t, not at theta_hat
            g = [gi + wd * x for gi, x in zip(g, th)]
        if base == "sgd":
            buf = g if buf is None else [mu * bi + gi for bi, gi in zip(buf, g)]
            th = [x - lr * bi for x, bi in zip(th, buf)]
            continue
        if base == "adamw":
            th = [x * (1 - lr * wd) for x in th]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        th = [x - lr * (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + eps) for x, mi, vi in zip(th, m, v)]
    return predicted, th


@pytest.mark.parametrize("base", ["sgd", "adam", "adamw"])
def test_xgrad_gradient_at_predicted_weights_and_base_update(base):
    q = Quad()
    lr, s, wd = 0.1, 2, 0.05
    ref_pred, ref_final = _hand_xgrad(base, q, 3, lr, s, wd)
    hp = {"lr": lr, "prediction_steps": s, "weight_decay": wd}
    opt = build_optimizer(f"xgrad_{base}", q.named_parameters(), hp)
    seen = []
    for _ in range(3):
        loss = opt.step(recording_closure(q, opt, seen))
        assert torch.isfinite(loss)
    assert [k for k, *_ in seen] == [0, 0, 0]  # one closure(0) per step
    for t, ((_, W, b), (Wr, br)) in enumerate(zip(seen, ref_pred)):
        assert close(W, Wr) and close(b, br), f"{base}: step {t + 1} gradient not at the predicted weights"
    assert torch.equal(seen[0][1], ref_pred[0][0])  # step 1: empty state, no prediction
    assert not close(seen[2][1], seen[1][1])
    assert close(q.W.detach(), ref_final[0]) and close(q.b.detach(), ref_final[1])


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("xgrad_sgd", lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01)),
        ("xgrad_adam", lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.01)),
        ("xgrad_adamw", lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.01)),
    ],
)
def test_xgrad_with_zero_prediction_steps_is_the_base_bit_for_bit(name, ref):
    model, x, y = mlp_problem(0)
    model_ref, _, _ = mlp_problem(0)
    h = {"lr": 0.05, "prediction_steps": 0, "weight_decay": 0.01}
    if name == "xgrad_sgd":
        h["momentum"] = 0.9
    opt = build_optimizer(name, model.named_parameters(), h)
    opt_ref = ref(list(model_ref.parameters()))
    for step in range(5):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:16]

        def closure(k=0, backward=True, m=model, o=opt, idx=idx):
            o.zero_grad()
            loss = F.cross_entropy(m(x[idx]), y[idx])
            loss.backward()
            return loss.detach()

        opt.step(closure)
        opt_ref.zero_grad()
        F.cross_entropy(model_ref(x[idx]), y[idx]).backward()
        opt_ref.step()
    for p, pr in zip(model.parameters(), model_ref.parameters()):
        assert torch.equal(p, pr)


def test_xgrad_restores_weights_if_the_closure_raises_and_loads_its_s():
    q = Quad()
    opt = build_optimizer("xgrad_adam", q.named_parameters(), {"lr": 0.1, "prediction_steps": 3})
    opt.step(recording_closure(q, opt, []))
    before = q.W.detach().clone()

    def bad(k=0, backward=True):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(bad)
    assert torch.equal(q.W.detach(), before)
    opt2 = build_optimizer("xgrad_adam", q.named_parameters(), {"lr": 0.1, "prediction_steps": 1})
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["prediction_steps"] == 3


@pytest.mark.parametrize(
    ("name", "hp", "key"),
    [
        ("xgrad_sgd", {"momentum": 0.0}, "momentum"),
        ("xgrad_sgd", {"momentum": 1.0}, "momentum"),
        ("xgrad_sgd", {"prediction_steps": -1}, "prediction_steps"),
        ("xgrad_adam", {"prediction_steps": 1.5}, "prediction_steps"),
        ("xgrad_adam", {"betas": (0.9, 1.0)}, "betas"),
        ("xgrad_adamw", {"eps": 0.0}, "eps"),
        ("xgrad_adamw", {"weight_decay": -0.1}, "weight_decay"),
        ("xgrad_adam", {"momentum": 0.9}, "momentum"),  # not a key of the Adam base
    ],
)
def test_xgrad_bad_hparams_name_the_key(name, hp, key):
    with pytest.raises(OptimizerConfigError, match=key):
        build_optimizer(name, Quad().named_parameters(), {"lr": 0.1, **hp})


# ---- 1-bit Adam: the compressor ----------------------------------------------------------------------------------
def test_onebit_compressor_one_magnitude_per_tensor_and_signs():
    u = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    u[1, 2] = 0.0
    c = onebit_compress(u)
    scale = math.sqrt(float((u * u).sum()) / u.numel())
    assert c.abs().unique().numel() == 1  # one magnitude for the whole tensor
    assert math.isclose(float(c.abs()[0, 0]), scale, rel_tol=1e-15)
    assert torch.equal(torch.sign(c), torch.where(u >= 0, 1.0, -1.0).to(D))  # 1 bit: 0 -> +1
    assert math.isclose(float(c.norm()), float(u.norm()), rel_tol=1e-14)  # same magnitude as the input


def test_onebit_error_feedback_identity():
    # dyadic values: every operation is exact, so the identity must hold bit for bit
    x = torch.tensor([0.5, -1.5, 2.0, -4.0], dtype=D)
    old = torch.tensor([0.5, 0.5, 1.0, -1.0], dtype=D)
    err = old.clone()
    c = compress_with_feedback(x, err)
    assert torch.equal(c, torch.tensor([3.0, -3.0, 3.0, -3.0], dtype=D))  # ||[1,-1,3,-5]|| / 2 = 3
    assert torch.equal(c + err, x + old)
    # random values: identical up to the one rounding of new_error = u - c
    g = torch.Generator().manual_seed(1)
    x, old = torch.randn(5, 7, generator=g, dtype=D), 0.3 * torch.randn(5, 7, generator=g, dtype=D)
    err = old.clone()
    c = compress_with_feedback(x, err)
    u = x + old
    assert torch.equal(err, u - c)
    assert (c + err - u).abs().max() <= 2 * torch.finfo(D).eps * u.abs().max()


# ---- 1-bit Adam: the optimizer -----------------------------------------------------------------------------------
def test_onebit_warmup_is_adam_on_the_mean_gradient():
    K = 3
    q = Quad(n_targets=K)
    W_ref = q.W.detach().clone().requires_grad_(True)
    b_ref = q.b.detach().clone().requires_grad_(True)
    hp = {"lr": 0.05, "workers": K, "warmup_steps": 10, "bias_correction": True, "betas": (0.8, 0.9), "eps": 1e-6}
    opt = build_optimizer("onebit_adam", q.named_parameters(), hp)
    ref = torch.optim.Adam([W_ref, b_ref], lr=0.05, betas=(0.8, 0.9), eps=1e-6)
    assert batches_per_step("onebit_adam", hp) == K
    for _ in range(4):
        seen = []
        opt.step(recording_closure(q, opt, seen))
        assert [k for k, *_ in seen] == list(range(K))
        assert all(torch.equal(W, seen[0][1]) for _, W, _ in seen)  # all workers at the same weights
        gs = [q.grads(W_ref.detach(), b_ref.detach(), k) for k in range(K)]
        W_ref.grad = (gs[0][0] + gs[1][0] + gs[2][0]) / K
        b_ref.grad = (gs[0][1] + gs[1][1] + gs[2][1]) / K
        ref.step()
        assert close(q.W.detach(), W_ref.detach()) and close(q.b.detach(), b_ref.detach())
    assert opt.param_groups[0]["last_worker_error_norm"] == 0.0
    assert torch.count_nonzero(opt.state[q.W]["worker_error"]) == 0


def _C(u):
    """The paper's 1-bit compressor, written again by hand: sign (0 -> +1) times ||u||_2 / sqrt(d)."""
    return math.sqrt(float((u * u).sum()) / u.numel()) * torch.where(u >= 0, 1.0, -1.0).to(u.dtype)


def _hand_onebit(q: Quad, K: int, steps: int, lr, betas, eps, warmup, bc=False):
    """Algorithm 1 for params (W, b), all K workers at the same weights; ``bc``: the optional bias correction
    (m / (1 - b1^t), v_{T_w} / (1 - b2^{T_w}) once frozen)."""
    b1, b2 = betas
    th = [q.W.detach().clone(), q.b.detach().clone()]
    m = [torch.zeros_like(x) for x in th]
    v = [torch.zeros_like(x) for x in th]
    d_w = [[torch.zeros_like(x) for x in th] for _ in range(K)]
    d_s = [torch.zeros_like(x) for x in th]
    for t in range(1, steps + 1):
        gk = [q.grads(*th, k) for k in range(K)]
        if t <= warmup:
            g = [sum(gk[k][i] for k in range(K)) / K for i in range(2)]
            m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
            v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        else:
            new_m = []
            for i in range(2):  # per tensor
                cs = []
                for k in range(K):
                    u = b1 * m[i] + (1 - b1) * gk[k][i] + d_w[k][i]
                    cs.append(_C(u))
                    d_w[k][i] = u - cs[-1]
                u = sum(cs) / K + d_s[i]
                new_m.append(_C(u))
                d_s[i] = u - new_m[-1]
            m = new_m
        m1, v1 = (1 - b1**t, 1 - b2 ** min(t, warmup)) if bc else (1.0, 1.0)
        th = [x - lr * (mi / m1) / ((vi / v1).sqrt() + eps) for x, mi, vi in zip(th, m, v)]
    w_norm = math.sqrt(sum(float((d_w[k][i] ** 2).sum()) for k in range(K) for i in range(2)) / K)
    return th, v, w_norm, math.sqrt(sum(float((d**2).sum()) for d in d_s))


@pytest.mark.parametrize(("K", "bc"), [(1, False), (2, False), (2, True)])
def test_onebit_compression_stage_matches_hand_reference(K, bc):
    """warmup_steps = 1, then two compressed steps (the second uses the first's error feedback)."""
    q = Quad(n_targets=K, seed=3)
    lr, betas, eps = 0.01, (0.9, 0.99), 1e-8
    th, v, w_norm, s_norm = _hand_onebit(q, K, 3, lr, betas, eps, warmup=1, bc=bc)
    hp = {"lr": lr, "betas": betas, "eps": eps, "workers": K, "warmup_steps": 1, "bias_correction": bc}
    opt = build_optimizer("onebit_adam", q.named_parameters(), hp)
    v_frozen = None
    for t in range(3):
        opt.step(recording_closure(q, opt, []))
        if t == 0:
            v_frozen = opt.state[q.W]["exp_avg_sq"].clone()
    assert close(q.W.detach(), th[0]) and close(q.b.detach(), th[1])
    assert torch.equal(opt.state[q.W]["exp_avg_sq"], v_frozen) and close(v_frozen, v[0])  # v frozen after warm-up
    # the shared momentum is 1-bit: one magnitude per tensor
    assert opt.state[q.W]["exp_avg"].abs().unique().numel() == 1
    g0 = opt.param_groups[0]
    assert w_norm > 0 and math.isclose(g0["last_worker_error_norm"], w_norm, rel_tol=1e-12)
    assert math.isclose(g0["last_server_error_norm"], s_norm, rel_tol=1e-9, abs_tol=1e-15)
    assert opt.log_metrics()["onebit_adam/compressing"] == 1.0


def test_onebit_returns_mean_worker_loss_and_needs_a_closure():
    q = Quad(n_targets=2)
    opt = build_optimizer("onebit_adam", q.named_parameters(), {"lr": 0.01, "workers": 2, "warmup_steps": 1})
    with torch.no_grad():
        expected = (float(q.loss(0)) + float(q.loss(1))) / 2
    assert math.isclose(float(opt.step(recording_closure(q, opt, []))), expected, rel_tol=1e-15)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


@pytest.mark.parametrize(
    ("hp", "key"),
    [
        ({"workers": 0}, "workers"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"betas": (1.0, 0.99)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"bias_correction": 1}, "bias_correction"),
    ],
)
def test_onebit_bad_hparams_name_the_key(hp, key):
    with pytest.raises(OptimizerConfigError, match=key):
        build_optimizer("onebit_adam", Quad().named_parameters(), {"lr": 0.01, **hp})
