"""foreach_step: a population's torch.optim SGD/Adam/AdamW update equals each optimizer's own step, bit for bit."""

from __future__ import annotations

import pytest
import torch

from sgdlab.optim import build_optimizer
from sgdlab.train.foreach_step import foreach_eligible, foreach_step

# per family, the members' hyper-parameters: every scalar the update reads differs somewhere
HPARAMS = {
    "sgd": [{"lr": 0.1}, {"lr": 0.05, "weight_decay": 1e-2}, {"lr": 0.1}],
    "momentum": [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.02, "momentum": 0.5, "dampening": 0.3},
                 {"lr": 0.07, "momentum": 0.9, "weight_decay": 5e-3}],
    "nesterov": [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.8, "weight_decay": 1e-2}],
    "adam": [{"lr": 1e-2}, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6}, {"lr": 1e-2, "weight_decay": 1e-2}],
    "adamw": [{"lr": 1e-2, "weight_decay": 0.1}, {"lr": 2e-3, "weight_decay": 0.0}, {"lr": 1e-2}],
    "rmsprop_bc": [{"lr": 1e-2, "beta2": 0.99}, {"lr": 5e-3}],
}  # fmt: skip


def _net(seed: int, dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(dtype)


def _grads(nets, step: int, dtype) -> None:
    """Each net's gradient of its own loss on its own batch at this step (seeded, so both paths see the same)."""
    for i, net in enumerate(nets):
        g = torch.Generator().manual_seed(1000 * step + i)
        x = torch.randn(8, 4, generator=g, dtype=dtype)
        y = torch.randint(0, 3, (8,), generator=g)
        net.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", sorted(HPARAMS))
def test_foreach_step_equals_each_optimizers_own_step_bit_for_bit(family, dtype):
    hps = HPARAMS[family]
    nets_a = [_net(i, dtype) for i in range(len(hps))]
    nets_b = [_net(i, dtype) for i in range(len(hps))]
    opts_a = [build_optimizer(family, n.named_parameters(), h) for n, h in zip(nets_a, hps)]
    opts_b = [build_optimizer(family, n.named_parameters(), h) for n, h in zip(nets_b, hps)]
    assert all(foreach_eligible(o) is None for o in opts_b)
    for step in range(6):
        for o in opts_a + opts_b:  # a schedule: the lr changes between steps
            o.param_groups[0]["lr"] *= 0.9
        _grads(nets_a, step, dtype)
        _grads(nets_b, step, dtype)
        for o in opts_a:
            o.step()
        foreach_step(opts_b)
    for na, nb, oa, ob in zip(nets_a, nets_b, opts_a, opts_b):
        for p, q in zip(na.parameters(), nb.parameters()):
            assert torch.equal(p, q)
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys() and (sa or family == "sgd")  # the state a checkpoint saves (plain SGD: none)
        for k in sa:
            assert sa[k].keys() == sb[k].keys()
            for name in sa[k]:
                assert torch.equal(sa[k][name], sb[k][name]), (k, name)
                assert sa[k][name].dtype == sb[k][name].dtype


def test_a_parameter_without_gradient_is_left_alone_as_by_step():
    net = _net(0, torch.float64)
    opt = build_optimizer("adam", net.named_parameters(), {"lr": 0.1})
    _grads([net], 0, torch.float64)
    frozen = net[0].bias
    frozen.grad = None
    before = frozen.detach().clone()
    foreach_step([opt])
    assert torch.equal(frozen, before) and frozen not in opt.state


def test_configurations_outside_the_plain_algorithm_are_refused_by_name():
    net = _net(0, torch.float32)
    named = list(net.named_parameters())
    assert "amsgrad" in foreach_eligible(build_optimizer("adam", named, {"amsgrad": True}))
    assert "Lion" in foreach_eligible(build_optimizer("lion", named, None))
    hooked = build_optimizer("sgd", named, None)
    hooked.register_step_post_hook(lambda *a: None)
    assert "hooks" in foreach_eligible(hooked)
    two_groups = torch.optim.SGD([{"params": [named[0][1]]}, {"params": [named[1][1]]}], lr=0.1)
    assert "group" in foreach_eligible(two_groups)
    assert "maximize" in foreach_eligible(torch.optim.SGD(net.parameters(), lr=0.1, maximize=True))


SVAG_HPARAMS = {
    "svag": [{"lr": 0.1, "l": 2}, {"lr": 0.05, "l": 4, "weight_decay": 1e-2}, {"lr": 0.1, "l": 2}],
    "svag_momentum": [{"lr": 0.1, "l": 2, "momentum": 0.9}, {"lr": 0.05, "l": 8}],
    "svag_adam": [{"lr": 1e-2, "l": 2}, {"lr": 3e-3, "l": 4}],
}


def _two_grads(nets, step: int, dtype):
    """Each net's gradients on its minibatches 0 and 1 at this step: ({param: g0}, and g1 left on .grad)."""
    first = {}
    for i, net in enumerate(nets):
        for k in (0, 1):
            g = torch.Generator().manual_seed(1000 * step + 10 * i + k)
            x, y = torch.randn(8, 4, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)
            net.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            if k == 0:
                first.update({p: p.grad.detach().clone() for p in net.parameters()})
    return first


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", sorted(SVAG_HPARAMS))
def test_svag_members_combine_two_minibatch_gradients_as_their_own_step(family, dtype):
    """SVAG's step(closure): g = a g0 + b g1, then the SGD / Adam step; foreach_step(first_grads=...) does the
    same for every member at once, bit for bit (the combined gradient left on .grad too)."""
    from sgdlab.train.foreach_step import two_batch

    hps = SVAG_HPARAMS[family]
    nets_a = [_net(i, dtype) for i in range(len(hps))]
    nets_b = [_net(i, dtype) for i in range(len(hps))]
    opts_a = [build_optimizer(family, n.named_parameters(), h) for n, h in zip(nets_a, hps)]
    opts_b = [build_optimizer(family, n.named_parameters(), h) for n, h in zip(nets_b, hps)]
    assert all(foreach_eligible(o) is None and two_batch(o) for o in opts_b)
    with pytest.raises(ValueError, match="SVAG optimizers need first_grads"):
        foreach_step(opts_b)
    for step in range(5):
        for i, (net, opt) in enumerate(zip(nets_a, opts_a)):

            def closure(k, net=net, i=i, step=step):  # the same minibatches as _two_grads draws for net i
                g = torch.Generator().manual_seed(1000 * step + 10 * i + k)
                x, y = torch.randn(8, 4, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)
                net.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
                return loss.detach()

            opt.step(closure)
        foreach_step(opts_b, _two_grads(nets_b, step, dtype))
    for na, nb, oa, ob in zip(nets_a, nets_b, opts_a, opts_b):
        for p, q in zip(na.parameters(), nb.parameters()):
            assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            for name in sa[k]:
                assert torch.equal(sa[k][name], sb[k][name]), (k, name)
