"""Every registered optimizer, stepped through the closure protocol, on known problems.

One list (OPTIMIZERS_UNDER_TEST) drives all tests: loss decreases on a convex quadratic and on a
tiny MLP classification problem, and state_dict round-trips exactly (through torch.save /
torch.load(weights_only=True), as a checkpoint would).
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from sgdlab.optim import get_spec, list_specs
from sgdlab.optim.testing import (
    OPTIMIZERS_UNDER_TEST,
    Quadratic,
    build,
    drive,
    hparams_for,
    mlp_problem,
)

STEPS = 30


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems: intra-op threads only add overhead on the shared 2-core CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_list_under_test_is_the_registry():
    assert set(OPTIMIZERS_UNDER_TEST) == {s.name for s in list_specs()}
    assert len(OPTIMIZERS_UNDER_TEST) == len(set(OPTIMIZERS_UNDER_TEST))


def _mlp_loss_fn(model, x, y, batch=32):
    def loss_fn(seed, opt):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:batch]  # (B,)
        yb = y[idx]
        if hasattr(opt, "perturb_targets"):
            yb = opt.perturb_targets(yb, g)
        return F.cross_entropy(model(x[idx]), yb)

    return loss_fn


@pytest.mark.parametrize("name", OPTIMIZERS_UNDER_TEST)
def test_decreases_convex_quadratic(name):
    if get_spec(name).per_sample_grads:  # its convex case: tests/test_optim_dp_sgd.py (least squares)
        pytest.skip("per-sample gradients need a batch of samples; the quadratic has none")
    q = Quadratic(torch.Generator().manual_seed(0))
    with torch.no_grad():
        f0 = float(q())
    opt = build(name, q)
    losses = drive(opt, name, hparams_for(name), lambda s, o: q(), STEPS, torch.Generator().manual_seed(1))
    with torch.no_grad():
        f1 = float(q())
    assert all(map(lambda v: v == v, losses)), f"{name}: NaN loss"
    assert f1 < 0.7 * f0, f"{name}: quadratic {f0:.4g} -> {f1:.4g}"


@pytest.mark.parametrize("name", OPTIMIZERS_UNDER_TEST)
def test_decreases_mlp_classification(name):
    model, x, y = mlp_problem(0)
    with torch.no_grad():
        m0 = float(F.cross_entropy(model(x), y))
    opt = build(name, model)
    drive(
        opt,
        name,
        hparams_for(name),
        _mlp_loss_fn(model, x, y),
        STEPS,
        torch.Generator().manual_seed(1),
    )
    with torch.no_grad():  # schedule-free optimizers were put in eval mode by drive()
        m1 = float(F.cross_entropy(model(x), y))
    assert m1 < 0.7 * m0, f"{name}: MLP loss {m0:.4g} -> {m1:.4g}"
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", OPTIMIZERS_UNDER_TEST)
def test_state_dict_round_trip_is_exact(name):
    model, x, y = mlp_problem(1)
    h = hparams_for(name)
    opt = build(name, model)
    gen = torch.Generator().manual_seed(2)
    drive(opt, name, h, _mlp_loss_fn(model, x, y), 4, gen)

    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = copy.deepcopy(model)
    opt2 = build(name, model2)
    opt2.load_state_dict(saved)
    gen2 = torch.Generator()
    gen2.set_state(gen.get_state())

    drive(opt, name, h, _mlp_loss_fn(model, x, y), 4, gen)
    drive(opt2, name, h, _mlp_loss_fn(model2, x, y), 4, gen2)
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), f"{name}: parameter {n} differs after resume"


@pytest.mark.parametrize("name", OPTIMIZERS_UNDER_TEST)
def test_step_does_not_touch_global_rng(name):
    """Optimizers with internal randomness use a private, checkpointed RNG."""
    model, x, y = mlp_problem(2)
    opt = build(name, model)
    loss_fn = _mlp_loss_fn(model, x, y)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    drive(opt, name, hparams_for(name), loss_fn, 2, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before), f"{name} consumed global RNG"


def test_spec_flags():
    assert get_spec("adahessian").create_graph
    assert get_spec("schedule_free_sgd").train_eval and get_spec("schedule_free_adamw").train_eval
    assert not get_spec("adam").create_graph and not get_spec("adam").train_eval
    assert "train()" in get_spec("schedule_free_sgd").summary
    assert "create_graph" in get_spec("adahessian").summary


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", OPTIMIZERS_UNDER_TEST)
def test_cuda_float32_steps_and_round_trip(name):
    model, x, y = mlp_problem(0)
    model, x, y = model.float().cuda(), x.float().cuda(), y.cuda()
    h = hparams_for(name)
    opt = build(name, model)
    gen = torch.Generator().manual_seed(0)
    losses = drive(opt, name, h, _mlp_loss_fn(model, x, y), 10, gen)
    assert all(torch.isfinite(torch.tensor(losses)))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    model2 = copy.deepcopy(model)
    opt2 = build(name, model2)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    gen2 = torch.Generator()
    gen2.set_state(gen.get_state())
    drive(opt, name, h, _mlp_loss_fn(model, x, y), 3, gen)
    drive(opt2, name, h, _mlp_loss_fn(model2, x, y), 3, gen2)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, p2), name
