"""Curvature operators on tiny float64 models against explicit Hessians/GGNs (torch.func)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from sgdlab import hessian as hs

N = 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny float64 problems: intra-op threads only add spin-wait overhead on a shared 2-core box.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X = torch.randn(N, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (N,))
    return model, (X, y)


def tiny_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double()
    bn = model[1]
    with torch.no_grad():  # non-trivial running statistics and affine params
        bn.running_mean.copy_(torch.randn(2))
        bn.running_var.copy_(torch.rand(2) + 0.5)
        bn.weight.copy_(torch.randn(2))
        bn.bias.copy_(torch.randn(2))
    model.eval()
    X = torch.randn(N, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (N,))
    return model, (X, y)


def flat_fn(model, fn):
    """fn(flat params) via functional_call, for torch.func references."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(v):
        return fn({n: c.view(s) for n, c, s in zip(names, v.split(numels), shapes)})

    return f, flat


def explicit_hessian(model, loss_fn, data):
    X, y = data
    f, flat = flat_fn(model, lambda ps: loss_fn(functional_call(model, ps, (X,)), y))
    return hessian(f)(flat)


def offsets(model):
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = (i, i + p.numel())
        i += p.numel()
    return out


@pytest.fixture(params=["mlp", "cnn"])
def problem(request):
    model, data = tiny_mlp() if request.param == "mlp" else tiny_cnn()
    return model, data, explicit_hessian(model, F.cross_entropy, data)


@pytest.mark.parametrize("backend", ["double_backward", "fwd_over_rev"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_hvp_equals_explicit_hessian(problem, backend, batch_size):
    model, data, H = problem
    op = hs.HessianOperator(model, F.cross_entropy, data, backend=backend, batch_size=batch_size)
    assert op.n == H.shape[0] and len(op.batches) == (1 if batch_size is None else 6)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(op.n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, atol=1e-10, rtol=0)
    assert op.n_matvecs == 3


@pytest.mark.parametrize("backend", ["double_backward", "fwd_over_rev"])
def test_bn_train_mode_uses_batch_statistics(backend):
    model, (X, y) = tiny_cnn()
    f, flat = flat_fn(model, lambda ps: F.cross_entropy(functional_call(model, ps, (X,)), y))
    with hs.probe_state(model, "train"):  # batch statistics, running stats untouched
        # Reverse-over-reverse reference: torch.func.hessian (vmapped jacfwd of jacrev) returned
        # a non-symmetric matrix for train-mode BatchNorm with torch 2.13 (off by 0.04).
        H = torch.autograd.functional.hessian(f, flat)
    assert not model.training
    torch.testing.assert_close(H, H.T, atol=1e-12, rtol=0)
    op = hs.HessianOperator(model, F.cross_entropy, (X, y), bn_mode="train", backend=backend)
    torch.testing.assert_close(op.to_dense(), H, atol=1e-10, rtol=0)
    H_eval = explicit_hessian(model, F.cross_entropy, (X, y))
    assert (H - H_eval).abs().max() > 1e-3  # the mode matters, hence no default guessing


def test_retained_graph_survives_many_matvecs():
    model, data = tiny_mlp()
    H = explicit_hessian(model, F.cross_entropy, data)
    op = hs.HessianOperator(model, F.cross_entropy, data, batch_size=16, retain_graph=True)
    torch.testing.assert_close(op.to_dense(), H, atol=1e-10, rtol=0)
    op.release()  # falls back to rebuilding per matvec
    v = torch.ones(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, atol=1e-10, rtol=0)


@pytest.mark.parametrize("k", [1, 3])
def test_lanczos_top_k_equals_eigvalsh(problem, k):
    model, data, H = problem
    ref = torch.linalg.eigvalsh(H).flip(0)[:k]
    res = hs.top_eigenvalues(model, F.cross_entropy, data, k=k, tol=1e-10)
    assert res.converged and res.eigenvalues.shape == (k,)
    torch.testing.assert_close(res.eigenvalues, ref, atol=1e-8, rtol=0)
    assert res.n_matvecs <= H.shape[0]


def test_lanczos_eigenvectors_are_eigenvectors(problem):
    model, data, H = problem
    res = hs.top_eigenvalues(model, F.cross_entropy, data, k=2, tol=1e-10, return_eigenvectors=True)
    V = res.eigenvectors  # (n, 2)
    torch.testing.assert_close(H @ V, V * res.eigenvalues, atol=1e-8, rtol=0)


def test_power_iteration_converges_to_lambda_max(problem):
    model, data, H = problem
    ev = torch.linalg.eigvalsh(H)
    assert ev[-1] > -ev[0]  # lambda_max dominates in magnitude for these seeds
    op = hs.HessianOperator(model, F.cross_entropy, data)
    res = hs.power_iteration(op, tol=1e-9, max_iter=5000)
    assert res.converged
    assert abs(res.lambda_max - float(ev[-1])) < 1e-8


def test_block_hvp_matches_hessian_block(problem):
    model, data, H = problem
    name = "0" if isinstance(model[1], nn.Tanh) else "1"  # first Linear / the BatchNorm
    off = offsets(model)
    idx = torch.cat([torch.arange(*off[n]) for n in off if n.startswith(name + ".")])
    for backend in ("double_backward", "fwd_over_rev"):
        op = hs.HessianOperator(model, F.cross_entropy, data, params=[name], backend=backend, batch_size=9)
        assert op.param_names == [f"{name}.weight", f"{name}.bias"]
        torch.testing.assert_close(op.to_dense(), H[idx][:, idx], atol=1e-10, rtol=0)
    # a single tensor by exact name
    op = hs.HessianOperator(model, F.cross_entropy, data, params=f"{name}.bias")
    b = torch.arange(*off[f"{name}.bias"])
    torch.testing.assert_close(op.to_dense(), H[b][:, b], atol=1e-10, rtol=0)


def test_dtype_argument_computes_in_float64():
    model, data = tiny_mlp()
    H = explicit_hessian(model, F.cross_entropy, data)
    model32 = model.float()
    X, y = data
    op = hs.HessianOperator(model32, F.cross_entropy, (X.float(), y), dtype=torch.float64)
    assert op.dtype == torch.float64 and next(model32.parameters()).dtype == torch.float32
    H32 = explicit_hessian(model32.double(), F.cross_entropy, (X.float().double(), y))
    torch.testing.assert_close(op.to_dense(), H32, atol=1e-10, rtol=0)
    assert (H32 - H).abs().max() < 1e-5


def explicit_ggn(model, loss_fn, data):
    X, y = data
    f, flat = flat_fn(model, lambda ps: functional_call(model, ps, (X,)))
    z = f(flat).detach()  # (N, C)
    J = jacrev(f)(flat).reshape(z.numel(), -1)  # (N*C, n)
    H_out = hessian(lambda zz: loss_fn(zz.view_as(z), y))(z.reshape(-1))  # (N*C, N*C)
    return J.T @ H_out @ J


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("batch_size", [None, 11])
def test_ggn_equals_explicit_and_is_psd(problem, loss, batch_size):
    model, (X, y), _ = problem
    if loss == "mse":
        y = torch.randn(N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    G = explicit_ggn(model, loss_fn, (X, y))
    op = hs.GGNOperator(model, loss_fn, (X, y), batch_size=batch_size)
    dense = op.to_dense()
    torch.testing.assert_close(dense, G, atol=1e-10, rtol=0)
    torch.testing.assert_close(dense, dense.T, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(dense).min() > -1e-12


def test_preconditioned_sharpness_with_real_adam_state():
    model, data = tiny_mlp()
    X, y = data
    opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.9, 0.99), eps=1e-6)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    # The identity of Adam's last update pins P independently of adam_preconditioner's formula:
    # theta_new - theta_old = -lr * m_hat / P.
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(X), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    params = list(model.parameters())
    P = hs.adam_preconditioner(opt, params)
    step = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before)])
    m_hat = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params]) / (1 - 0.9**5)
    torch.testing.assert_close(step, -0.05 * m_hat / P, atol=1e-12, rtol=1e-10)

    H = explicit_hessian(model, F.cross_entropy, data)
    s = P.rsqrt()
    ref = torch.linalg.eigvalsh(s[:, None] * H * s[None, :]).flip(0)[:3]
    res = hs.preconditioned_sharpness(model, F.cross_entropy, data, opt, k=3, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues, ref, atol=1e-8, rtol=0)
    op = hs.PreconditionedOperator(hs.HessianOperator(model, F.cross_entropy, data), P)
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), s * (H @ (s * v)), atol=1e-10, rtol=0)
    assert op.n_matvecs == 1 and op.op.n_matvecs == 1


def test_adam_preconditioner_amsgrad_and_eps_override():
    model, (X, y) = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, amsgrad=True)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    params = list(model.parameters())
    v = torch.cat([opt.state[p]["max_exp_avg_sq"].reshape(-1) for p in params])
    ref = (v / (1 - 0.999**3)).sqrt() + 0.5
    torch.testing.assert_close(hs.adam_preconditioner(opt, params, eps=0.5), ref)


def test_explicit_and_preconditioned_operator_validation():
    A = torch.randn(5, 5, dtype=torch.float64)
    op = hs.ExplicitOperator(A + A.T)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        op.matvec(torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        hs.ExplicitOperator(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"diag_p must be finite and > 0.*-1"):
        hs.PreconditionedOperator(op, torch.tensor([1.0, 1, -1, 1, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"diag_p must have shape \(5,\)"):
        hs.PreconditionedOperator(op, torch.ones(3, dtype=torch.float64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_operator_matches_cpu_and_keeps_cuda_rng():
    model, (X, y) = tiny_cnn()
    H = explicit_hessian(model, F.cross_entropy, (X, y))
    gpu = copy.deepcopy(model).cuda()
    data = (X.cuda(), y.cuda())
    state = torch.cuda.get_rng_state()
    for backend in ("double_backward", "fwd_over_rev"):
        op = hs.HessianOperator(gpu, F.cross_entropy, data, backend=backend, batch_size=16)
        assert op.device.type == "cuda"
        v = torch.randn(op.n, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v.cuda()).cpu(), H @ v, atol=1e-10, rtol=0)
    res = hs.top_eigenvalues(gpu, F.cross_entropy, data, k=2, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(H).flip(0)[:2], atol=1e-8, rtol=0)
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_fwd_over_rev_works_on_the_regression_loss_and_names_the_limit_of_f_mse_loss():

    from sgdlab.hessian import HessianOperator
    from sgdlab.models import build_model
    from sgdlab.train import loss_fn

    torch.manual_seed(0)
    model = build_model("mlp", (4,), 1, seed=0, widths=[3], activation="tanh").double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def reg(out, t):
        return loss_fn("regression", out, t)

    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    hv_fwd = HessianOperator(model, reg, (x, y), backend="fwd_over_rev").matvec(v)
    hv_rev = HessianOperator(model, reg, (x, y), backend="double_backward").matvec(v)
    assert torch.allclose(hv_fwd, hv_rev, atol=1e-12) and hv_rev.abs().max() > 0

    def torch_mse(out, t):
        return F.mse_loss(out.squeeze(-1), t)

    with pytest.raises(RuntimeError, match=r"fwd_over_rev.*ZeroTensor.*backend='double_backward'"):
        HessianOperator(model, torch_mse, (x, y), backend="fwd_over_rev").matvec(v)
