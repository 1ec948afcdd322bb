"""DP-SGD (``dp_sgd``, opacus) against float64 hand computations, opacus' accountants, and the loop.

Abadi et al. 2016, Algorithm 1: per-sample gradients clipped to norm C, summed, N(0, sigma^2 C^2 I) added,
divided by the batch size B; epsilon from the RDP (or PRV) accountant for q = B/n, sigma, T steps.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn

from sgdlab.models import build_model
from sgdlab.optim import OptimizerConfigError, build_optimizer, get_spec
from sgdlab.train import DataTensors, LoopConfig, load_checkpoint, train

# pytest resets warning filters per test: the one sgdlab.optim.dp sets at import (see there) is repeated here
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _linear(seed=0, out=1):
    torch.manual_seed(seed)
    return nn.Linear(3, out).double()  # 3 + 1 parameters (out=1)


def _batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, generator=g, dtype=torch.float64)
    y = torch.randn(b, 1, generator=g, dtype=torch.float64)
    return x, y


def _dp(model, b, **hp):
    opt = build_optimizer("dp_sgd", model.named_parameters(), {"noise_multiplier": 0.0, "seed": 0, **hp})
    opt.attach(model, batch_size=b, n_train=10 * b)
    return opt


def _closure(opt, model, x, y):
    def closure(k=0, backward=True):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss.detach()

    return closure


# ---- the update ---------------------------------------------------------------------------------------
def test_without_noise_and_clipping_it_is_plain_sgd():
    """sigma = 0, C huge: three steps (momentum, weight decay) equal torch SGD's to rounding (float64)."""
    x, y = _batch(0, b=8)
    a, b = _linear(0), _linear(0)
    hp = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    dp = _dp(a, 8, max_grad_norm=1e12, **hp)
    sgd = torch.optim.SGD(b.parameters(), **hp)
    for _ in range(3):
        loss_dp = dp.step(_closure(dp, a, x, y))
        loss_sgd = sgd.step(_closure(sgd, b, x, y))
        assert loss_dp == loss_sgd  # step returns the closure's loss
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def test_update_is_the_mean_of_per_sample_gradients_each_clipped_to_C():
    """Hand-computed: l_i = (w.x_i + c - y_i)^2, g_i = 2 r_i (x_i, 1), g_i min(1, C / (||g_i|| + 1e-6))."""
    x, y = _batch(1, b=4)
    model = _linear(1)
    w0, c0 = model.weight.detach().clone()[0], model.bias.detach().clone()[0]
    r = x @ w0 + c0 - y[:, 0]  # (B,) residuals
    g = 2 * r[:, None] * torch.cat([x, torch.ones(4, 1, dtype=torch.float64)], 1)  # (B, 4) per-sample grads
    norms = g.norm(dim=1)
    C = float(norms.sort().values[1:3].mean())  # between the 2nd and 3rd norms: two clipped, two not
    clipped = g * (C / (norms + 1e-6)).clamp(max=1.0)[:, None]
    expected = -0.5 * clipped.mean(0)  # lr 0.5
    assert (norms > C).sum() == 2

    opt = _dp(model, 4, lr=0.5, max_grad_norm=C)
    opt.step(_closure(opt, model, x, y))
    step = torch.cat([model.weight.detach()[0] - w0, model.bias.detach() - c0])
    torch.testing.assert_close(step, expected, rtol=1e-13, atol=1e-15)
    # clipping the mean gradient instead (what plain gradient clipping does) is far from it
    mean = g.mean(0)
    assert (-0.5 * mean * min(1.0, C / float(mean.norm())) - expected).abs().max() > 1e-2


def test_noise_is_sigma_C_over_B_from_the_seeded_private_generator():
    """The noisy update minus the noiseless one is -lr N(0, sigma^2 C^2 I) / B, drawn parameter by parameter
    (in optimizer order) from a generator seeded with the seed hparam; the global RNG is untouched."""
    x, y = _batch(2, b=4)
    lr, C, sigma, seed = 0.3, 0.7, 2.0, 11
    quiet, noisy = _linear(2), _linear(2)
    o1 = _dp(quiet, 4, lr=lr, max_grad_norm=C)
    o2 = _dp(noisy, 4, lr=lr, max_grad_norm=C, noise_multiplier=sigma, seed=seed)
    rng = torch.get_rng_state()
    o1.step(_closure(o1, quiet, x, y))
    o2.step(_closure(o2, noisy, x, y))
    assert torch.equal(torch.get_rng_state(), rng)
    gen = torch.Generator().manual_seed(seed)
    for p, q in zip(quiet.parameters(), noisy.parameters()):
        z = torch.normal(0.0, sigma * C, size=p.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(q - p, -lr * z / 4, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("name", "shape", "kw"),
    [
        ("mlp", (6,), {"widths": (8,), "norm": "layer"}),
        ("cnn", (1, 8, 8), {}),
        ("resnet", (3, 8, 8), {"depth": 8, "norm": "none"}),
        ("diag_linear", (6,), {}),  # own parameters on the root module: opacus' functorch fallback
    ],
)
def test_per_sample_gradients_of_sgdlab_models_are_the_one_sample_gradients(name, shape, kw):
    """What gets clipped: opacus' per-sample gradients equal autograd on each sample alone (float64)."""
    model = build_model(name, shape, 2, seed=0, dtype=torch.float64, **kw)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, *shape, generator=g, dtype=torch.float64), torch.randint(0, 2, (5,), generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    one = [torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params) for i in range(5)]
    opt = build_optimizer("dp_sgd", model.named_parameters(), {"noise_multiplier": 0.0})
    opt.attach(model)
    seen = {}
    clip = opt.clip_and_accumulate
    opt.clip_and_accumulate = lambda: (seen.update(gs=[opt._get_flat_grad_sample(p) for p in opt.params]), clip())

    def closure(k=0, backward=True):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    opt.step(closure)
    for j, gs in enumerate(seen["gs"]):
        torch.testing.assert_close(gs, torch.stack([o[j] for o in one]), rtol=1e-10, atol=1e-13)
    opt.detach()


def test_bad_hparams_and_misuse_are_named():
    m = _linear()
    for hp, key in [
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(OptimizerConfigError, match=f"'dp_sgd': hparam '{key}'"):
            build_optimizer("dp_sgd", m.named_parameters(), hp)
    opt = build_optimizer("dp_sgd", m.named_parameters(), {})
    x, y = _batch()
    with pytest.raises(RuntimeError, match="no model attached; call attach"):
        opt.step(_closure(opt, m, x, y))
    with pytest.raises(ValueError, match="trainable parameters are not the ones"):
        opt.attach(_linear())
    opt.attach(m)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="already attached"):
        opt.attach(m)
    assert get_spec("dp_sgd").per_sample_grads and get_spec("dp_sgd").family == "private"


# ---- in the training loop -------------------------------------------------------------------------------
N_TRAIN, B = 160, 16


def _data(task="classification", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=dtype)
    y = (x[:, 0] + x[:, 1] > 0).long() if task == "classification" else x[:, :2].sum(1, keepdim=True)
    return DataTensors(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def _mlp(seed=0, out=2, **kw):
    return build_model("mlp", (6,), out, widths=(16,), seed=seed, **kw)


def _rdp(sigma, steps, delta, q=B / N_TRAIN, accountant=RDPAccountant):
    acc = accountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta)


HP = {"lr": 0.2, "max_grad_norm": 1.0, "noise_multiplier": 1.1}


def test_epsilon_at_eval_points_is_opacus_rdp_for_q_sigma_t_delta():
    logs = []
    cfg = LoopConfig(steps=6, batch_size=B, eval_every=2, log_every=2)
    res = train(_mlp(), "dp_sgd", HP, _data(), cfg, metric_sink=lambda m, s: logs.append((s, m)))
    delta = 0.1 / N_TRAIN  # the default: 1/(10 n)
    eps = {s: m["dp/epsilon"] for s, m in logs if "dp/epsilon" in m}
    assert sorted(eps) == [2, 4, 6]  # eval points; 6 is the final evaluation
    for t, e in eps.items():
        assert e == _rdp(1.1, t, delta)
    assert 0 < eps[2] < eps[4] < eps[6]  # grows with T
    assert res.metrics["dp/epsilon"] == eps[6] and res.metrics["dp/delta"] == delta
    assert _rdp(2.0, 6, delta) < eps[6]  # falls with sigma


def test_prv_accountant_explicit_delta_and_no_final_eval():
    cfg = LoopConfig(steps=5, batch_size=B, final_eval=False)
    res = train(_mlp(), "dp_sgd", {**HP, "accountant": "prv", "delta": 1e-4}, _data(), cfg)
    assert set(res.metrics) == {"dp/epsilon", "dp/delta"} and res.metrics["dp/delta"] == 1e-4
    assert res.metrics["dp/epsilon"] == _rdp(1.1, 5, 1e-4, accountant=PRVAccountant)
    res0 = train(_mlp(), "dp_sgd", {**HP, "noise_multiplier": 0.0}, _data(), cfg)
    assert res0.metrics["dp/epsilon"] == math.inf  # no noise, no privacy


def test_loss_decreases_on_least_squares_with_noise():
    """The convex case of the shared family tests (their quadratic has no samples to clip)."""
    d = _data("regression")
    model = build_model("mlp", (6,), 1, widths=(), seed=0)  # linear regression
    with torch.no_grad():
        before = float(F.mse_loss(model(d.x_train), d.y_train))
    res = train(model, "dp_sgd", {**HP, "lr": 0.5}, d, LoopConfig(steps=60, batch_size=B, task="regression"))
    assert res.metrics["train/loss"] < 0.2 * before


def test_micro_batches_give_the_full_batch_update():
    """physical_batch_size = B/4: per-sample gradients of the 4 micro-batches, one noise draw per step."""
    d = _data(dtype=torch.float64)
    full, micro = _mlp(dtype=torch.float64), _mlp(dtype=torch.float64)
    r1 = train(full, "dp_sgd", HP, d, LoopConfig(steps=6, batch_size=B))
    r2 = train(micro, "dp_sgd", HP, d, LoopConfig(steps=6, batch_size=B, physical_batch_size=B // 4))
    for p, q in zip(full.parameters(), micro.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert r1.metrics["dp/epsilon"] == r2.metrics["dp/epsilon"]


def test_resume_is_exact_including_epsilon(tmp_path):
    d = _data()
    cfg = LoopConfig(steps=12, batch_size=B, eval_every=4, log_every=3, checkpoint_every=4)
    hp = {**HP, "momentum": 0.5}
    straight, logs_a = _mlp(), []
    res_a = train(
        straight,
        "dp_sgd",
        hp,
        d,
        cfg,
        checkpoint_path=tmp_path / "a.pt",
        metric_sink=lambda m, s: logs_a.append((s, m)),
    )

    class Kill(Exception):
        pass

    def kill(step, *_):
        if step == 6:
            raise Kill

    path = tmp_path / "b.pt"
    with pytest.raises(Kill):
        train(_mlp(), "dp_sgd", hp, d, cfg, checkpoint_path=path, on_step=kill)
    ck = load_checkpoint(path)
    assert ck["step"] == 4 and ck["optimizer"]["sgdlab_dp"]["accountant"]["history"] == [(1.1, B / N_TRAIN, 4)]
    resumed, logs_b = _mlp(seed=5), []
    res_b = train(resumed, "dp_sgd", hp, d, cfg, checkpoint_path=path, metric_sink=lambda m, s: logs_b.append((s, m)))
    assert res_b.resumed_from == 4
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert res_a.metrics == res_b.metrics
    assert [x for x in logs_a if x[0] > 4] == logs_b  # dp/epsilon at steps 8, 12 included
    assert any("dp/epsilon" in m for _, m in logs_b)


def test_batchnorm_is_refused_naming_the_module_before_anything_changes():
    model = _mlp(norm="batch")
    before = [p.detach().clone() for p in model.parameters()]
    bn = next(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d))
    with pytest.raises(ValueError, match=rf"dp_sgd: module '{bn}' \(BatchNorm1d\) is BatchNorm.*norm='none'"):
        train(model, "dp_sgd", HP, _data(), LoopConfig(steps=2, batch_size=B))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # nothing installed
    with pytest.raises(ValueError, match="compile=True is not supported"), pytest.warns(UserWarning, match="ignored"):
        train(_mlp(), "dp_sgd", HP, _data(), LoopConfig(steps=2, batch_size=B, compile=True))


def test_the_model_is_returned_without_hooks_or_opacus_attributes():
    model = _mlp(norm="layer")  # LayerNorm is per-sample: allowed
    train(model, "dp_sgd", HP, _data(), LoopConfig(steps=3, batch_size=B, physical_batch_size=B // 2))
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(hasattr(m, a) for m in model.modules() for a in ("activations", "autograd_grad_sample_hooks"))
    opacus_attrs = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")
    assert not any(hasattr(p, a) for p in model.parameters() for a in opacus_attrs)
    assert all(p.grad is None for p in model.parameters())
