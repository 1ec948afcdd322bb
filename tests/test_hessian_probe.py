"""One-call probes: no side effects, clear errors, stability thresholds, SharpnessProbe."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import hessian as hs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def bn_model():
    """Train-mode model with BatchNorm, dropout (in eval), a frozen bias and mixed .grad."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).double()
    model.train()
    model[3].eval()  # mixed modes must survive
    model[4].bias.requires_grad_(False)
    X = torch.randn(24, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    model(X)  # non-trivial running stats and num_batches_tracked
    model[0].weight.grad = torch.randn(6, 4, dtype=torch.float64)  # existing grad; others None
    return model, (X, y)


def snapshot(model):
    return {
        "modes": [m.training for m in model.modules()],
        "track": [m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d)],
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: (None if p.grad is None else (id(p.grad), p.grad.clone())) for n, p in model.named_parameters()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "rng": torch.get_rng_state(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_same(a, b):
    assert a["modes"] == b["modes"] and a["track"] == b["track"]
    assert a["requires_grad"] == b["requires_grad"]
    assert a["grad_enabled"] == b["grad_enabled"]
    assert torch.equal(a["rng"], b["rng"])
    for key in ("buffers", "params"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), (key, n)
    for n, g in a["grads"].items():
        h = b["grads"][n]
        assert (g is None) == (h is None), n
        if g is not None:
            assert g[0] == h[0] and torch.equal(g[1], h[1]), n


def adam_for(model, data):
    X, y = data
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    saved = {n: p.grad for n, p in model.named_parameters()}
    loss = F.cross_entropy(model(X), y)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
        p.grad = g
    opt.step()
    for n, p in model.named_parameters():
        p.grad = saved[n]
    return opt


PROBES = {
    "top_eigenvalues": lambda m, d, o: hs.top_eigenvalues(m, F.cross_entropy, d, k=2),
    "top_eigenvalues_bn_train": lambda m, d, o: hs.top_eigenvalues(
        m, F.cross_entropy, d, bn_mode="train", batch_size=8
    ),
    "trace": lambda m, d, o: hs.trace(m, F.cross_entropy, d, n_probes=4),
    "trace_hutchpp": lambda m, d, o: hs.trace(m, F.cross_entropy, d, n_probes=9, method="hutch++", bn_mode="train"),
    "spectral_density": lambda m, d, o: hs.spectral_density(m, F.cross_entropy, d, 2, 5),
    "preconditioned_sharpness": lambda m, d, o: hs.preconditioned_sharpness(m, F.cross_entropy, d, o),
    "sharpness_probe": lambda m, d, o: hs.SharpnessProbe(F.cross_entropy, d, every_k=1, n_trace_probes=3)(0, m, o),
    "fwd_over_rev_train": lambda m, d, o: hs.HessianOperator(
        m, F.cross_entropy, d, backend="fwd_over_rev", bn_mode="train", batch_size=5
    ).matvec(torch.ones(60, dtype=torch.float64)),
    "power_iteration": lambda m, d, o: hs.power_iteration(hs.HessianOperator(m, F.cross_entropy, d), max_iter=5),
    "ggn": lambda m, d, o: hs.GGNOperator(m, F.cross_entropy, d, bn_mode="train").matvec(
        torch.ones(60, dtype=torch.float64)
    ),
}


@pytest.mark.parametrize("name", sorted(PROBES))
@pytest.mark.parametrize("no_grad", [False, True])
def test_probes_leave_no_side_effects(name, no_grad):
    model, data = bn_model()
    opt = adam_for(model, data)
    before = snapshot(model)
    with torch.set_grad_enabled(not no_grad):
        before["grad_enabled"] = torch.is_grad_enabled()
        PROBES[name](model, data, opt)
        after = snapshot(model)
    assert_same(before, after)


def test_bn_mode_changes_the_answer_and_is_explicit():
    model, data = bn_model()
    ev = hs.top_eigenvalues(model, F.cross_entropy, data, tol=1e-8).lambda_max
    tr = hs.top_eigenvalues(model, F.cross_entropy, data, tol=1e-8, bn_mode="train").lambda_max
    assert abs(ev - tr) > 1e-6


# ------------------------------------------------------------------------------- bad input ---


def test_probe_subset_larger_than_data():
    with pytest.raises(ValueError, match=r"size=11 is larger than the data \(n_total=10\)"):
        hs.probe_subset(10, 11, seed=0)
    with pytest.raises(ValueError, match="size must be a positive int, got 0"):
        hs.probe_subset(10, 0, seed=0)


def test_probe_subset_is_fixed_sorted_and_distinct():
    a, b = hs.probe_subset(1000, 100, seed=7), hs.probe_subset(1000, 100, seed=7)
    assert a.dtype == torch.long and torch.equal(a, b)
    assert torch.equal(a, a.sort().values) and len(a.unique()) == 100
    assert not torch.equal(a, hs.probe_subset(1000, 100, seed=8))


def test_model_without_trainable_parameters():
    model, data = bn_model()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hs.top_eigenvalues(model, F.cross_entropy, data)


def test_non_finite_loss_names_the_value():
    model, (X, y) = bn_model()
    X = X.clone()
    X[0, 0] = float("nan")
    with pytest.raises(hs.NonFiniteLossError, match=r"not finite \(loss=nan\)"):
        hs.top_eigenvalues(model, F.cross_entropy, (X, y))
    with pytest.raises(ValueError, match="not finite"):  # NonFiniteLossError is a ValueError
        hs.trace(model, F.cross_entropy, (X, y), batch_size=5)


def test_k_larger_than_parameter_count():
    model, data = bn_model()
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 60\].*got 61"):
        hs.top_eigenvalues(model, F.cross_entropy, data, k=61)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bn_mode": "batch"}, r"bn_mode must be one of \('eval', 'train'\), got 'batch'"),
        ({"backend": "jax"}, r"backend must be one of .*got 'jax'"),
        ({"params": ["9"]}, r"params entry '9' matches no parameter; available: \['0.weight'"),
        ({"batch_size": 0}, "batch_size must be a positive int or None, got 0"),
    ],
)
def test_bad_options(kwargs, match):
    model, data = bn_model()
    with pytest.raises(ValueError, match=match):
        hs.top_eigenvalues(model, F.cross_entropy, data, **kwargs)


def test_data_model_device_mismatch():
    model, (X, y) = bn_model()
    with pytest.raises(ValueError, match="data is on meta/meta but the model is on cpu"):
        hs.top_eigenvalues(model, F.cross_entropy, (X.to("meta"), y.to("meta")))


def test_bad_data_and_method():
    model, (X, y) = bn_model()
    with pytest.raises(ValueError, match="same, non-zero length; got 24 and 23"):
        hs.trace(model, F.cross_entropy, (X, y[:-1]))
    with pytest.raises(TypeError, match=r"data must be a tuple \(X, y\)"):
        hs.trace(model, F.cross_entropy, X)
    with pytest.raises(ValueError, match="method must be one of.*'exact'"):
        hs.trace(model, F.cross_entropy, (X, y), method="exact")


def test_adam_preconditioner_errors():
    model, data = bn_model()
    params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(TypeError, match="needs torch.optim.Adam or AdamW, got SGD"):
        hs.adam_preconditioner(torch.optim.SGD(params, lr=0.1), params)
    with pytest.raises(ValueError, match="has no Adam state yet"):
        hs.adam_preconditioner(torch.optim.Adam(params), params)


# ----------------------------------------------------------------------- stability thresholds ---


def test_stability_threshold_formulas():
    assert hs.stability_threshold("gd", 0.1) == pytest.approx(20.0)
    assert hs.stability_threshold("sgd", 0.1) == pytest.approx(20.0)
    assert hs.stability_threshold("momentum", 0.1, beta1=0.9) == pytest.approx(38.0)
    assert hs.stability_threshold("nesterov", 0.1, beta1=0.9) == pytest.approx(3.8 / 2.8 * 10)
    assert hs.stability_threshold("adam", 1e-3, beta1=0.9) == pytest.approx(38_000.0)
    assert hs.stability_threshold("adamw", 1e-3) == pytest.approx(38_000.0)  # beta1=0.9 default
    w = [nn.Parameter(torch.zeros(1))]
    assert hs.stability_threshold(torch.optim.Adam(w, lr=0.01, betas=(0.8, 0.99))) == pytest.approx(3.6 / 0.2 / 0.01)
    with pytest.raises(ValueError, match="optimizer kind must be one of.*'lion'"):
        hs.stability_threshold("lion", 0.1)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        hs.stability_threshold("gd", 0)
    with pytest.raises(ValueError, match="no stability threshold known for RMSprop"):
        hs.stability_threshold(torch.optim.RMSprop(w, lr=0.1))


@pytest.mark.parametrize(
    ("momentum", "nesterov", "dampening"), [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, False, 0.5)]
)
def test_threshold_separates_stable_from_unstable_torch_sgd(momentum, nesterov, dampening):
    """torch.optim.SGD on 0.5 * lam * x^2: converges just below the threshold, diverges above."""
    lr = 0.1

    def final_abs(lam):
        x = nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)
        for _ in range(2000):
            x.grad = lam * x.detach().clone()
            opt.step()
        return float(x.abs())

    probe_opt = torch.optim.SGD(
        [nn.Parameter(torch.ones(1))], lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening
    )
    lam_star = hs.stability_threshold(probe_opt)
    assert final_abs(0.98 * lam_star) < 1e-3
    assert final_abs(1.02 * lam_star) > 1e3


# ---------------------------------------------------------------------------- SharpnessProbe ---


def test_sharpness_probe_metrics_and_cadence():
    model, data = bn_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = hs.SharpnessProbe(F.cross_entropy, data, every_k=10, k_eigs=2, n_trace_probes=6, tol=1e-8)
    assert probe(5, model, sgd) == {}
    out = probe(10, model, sgd)
    assert out["hessian/threshold"] == pytest.approx(3.8 / 0.05)
    ref = hs.top_eigenvalues(model, F.cross_entropy, data, k=2, tol=1e-8).eigenvalues
    assert out["hessian/lambda_max"] == pytest.approx(float(ref[0]))
    assert out["hessian/lambda_2"] == pytest.approx(float(ref[1]))
    assert {"hessian/trace", "hessian/trace_stderr", "hessian/loss", "hessian/n_matvecs"} <= out.keys()
    assert "hessian/precond_lambda_max" not in out
    assert probe(20, model, sgd) == out  # same point, same seeded probes

    opt = adam_for(model, data)
    out = hs.SharpnessProbe(F.cross_entropy, data, every_k=1)(3, model, opt, lr=2e-3)
    assert out["hessian/threshold"] == pytest.approx(38 / 2e-3)
    pre = hs.preconditioned_sharpness(model, F.cross_entropy, data, opt).lambda_max
    assert out["hessian/precond_lambda_max"] == pytest.approx(pre)
    fresh = torch.optim.Adam(model.parameters())  # no state yet: precond metric skipped
    assert "hessian/precond_lambda_max" not in hs.SharpnessProbe(F.cross_entropy, data)(0, model, fresh)
    with pytest.raises(ValueError, match="every_k must be a positive int, got 0"):
        hs.SharpnessProbe(F.cross_entropy, data, every_k=0)
    with pytest.raises(ValueError, match="n_trace_probes must be >= 6 for hutch\\+\\+, got 4"):
        hs.SharpnessProbe(F.cross_entropy, data, n_trace_probes=4, trace_method="hutch++")


def test_spherical_sharpness_is_lambda_max_at_the_normalised_weights():
    """Lyu, Li, Arora 2022: spherical sharpness = lambda_max(H(w/||w||)); for a scale-invariant net the probe's
    ||w||^2 lambda_max(H(w)) equals it, computed directly at w/||w|| (float64)."""
    from sgdlab.models import build_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    m = build_model("mlp", (12,), 3, seed=1, widths=[6, 5], norm="layer", train_last_layer=False, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2.5)
    out = hs.SharpnessProbe(F.cross_entropy, (x, y), every_k=1, tol=1e-10, max_iter=200)(0, m)
    norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in m.parameters()))
    with torch.no_grad():
        for p in m.parameters():
            p.div_(norm)
    direct = hs.top_eigenvalues(m, F.cross_entropy, (x, y), tol=1e-10, max_iter=200).eigenvalues[0]
    assert out["hessian/spherical_lambda_max"] == pytest.approx(float(direct), rel=1e-7)
    assert out["hessian/spherical_lambda_max"] == pytest.approx(float(norm) ** 2 * out["hessian/lambda_max"])
    plain = build_model("mlp", (12,), 3, seed=1, widths=[6, 5], dtype=torch.float64)
    assert "hessian/spherical_lambda_max" not in hs.SharpnessProbe(F.cross_entropy, (x, y), every_k=1)(0, plain)
    one_block = hs.spherical_factor(m, [next(m.parameters())])
    assert one_block is None  # scale invariance is in all parameters jointly, not in one block
