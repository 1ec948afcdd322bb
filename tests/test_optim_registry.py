"""The optimizer registry: specs, hparam validation and error messages."""

import math

import pytest
import torch
from torch import nn

from sgdlab.optim import (
    HParam,
    OptimizerSpec,
    batches_per_step,
    build_optimizer,
    get_spec,
    list_specs,
    resolve_hparams,
)

FAMILIES = {
    "sgd",
    "adaptive",
    "sign",
    "second-order",
    "sharpness-aware",
    "sde",
    "distributed",
    "orthogonalized",
    "zeroth-order",
    "weight-prediction",
    "private",
}
REQUIRED = {
    "sgd",
    "momentum",
    "nesterov",
    "adam",
    "adamw",
    "rmsprop",
    "rmsprop_bc",
    "adagrad",
    "nadam",
    "radam",
    "adafactor",
    "muon",
    "adan",
    "adabelief",
    "adabound",
    "lion",
    "apollo",
    "apollo_mini",
    "sgd_sai",
    "psgd_kron",
    "sam",
    "schedule_free_sgd",
    "schedule_free_adamw",
    "soap",
    "shampoo",
    "lamb",
    "lars",
    "adahessian",
    "label_noise_sgd",
    "svag",
    "normalized_gd",
    "local_sgd",
    "gam",
    "sps",
}
NEEDS = {"label_noise_sgd": {"num_classes": 3}}


def test_required_names_registered():
    assert REQUIRED <= {s.name for s in list_specs()}


@pytest.mark.parametrize("spec", list_specs(), ids=lambda s: s.name)
def test_spec_is_complete(spec: OptimizerSpec):
    assert spec.family in FAMILIES
    assert spec.source in {"torch.optim", "pytorch_optimizer", "opacus", "sgdlab"}
    assert spec.summary and spec.paper
    names = [h.name for h in spec.hparams]
    assert names[0] == "lr" and len(set(names)) == len(names)
    assert all(isinstance(h, HParam) and h.doc for h in spec.hparams)
    resolved = resolve_hparams(spec.name, NEEDS.get(spec.name, {}))  # defaults are valid
    assert set(resolved) == set(names)
    n = batches_per_step(spec.name, NEEDS.get(spec.name, {}))
    assert isinstance(n, int) and n >= 1


def test_own_code_cites_a_paper():
    for spec in list_specs():
        if spec.source == "sgdlab":
            assert any(ch.isdigit() for ch in spec.paper), spec.name  # a year


def test_unknown_optimizer_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'.*Did you mean: adam"):
        get_spec("adamm")
    with pytest.raises(ValueError, match="schedule_free_sgd"):
        build_optimizer("schedulefree_sgd", [], {})
    with pytest.raises(KeyError):  # also catchable as a lookup failure
        get_spec("no_such_optimizer")


def test_unknown_hparam_is_named_with_accepted_list():
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) \['betas1'\]; accepted: \['lr', 'betas'"):
        resolve_hparams("adam", {"betas1": 0.9})


@pytest.mark.parametrize("lr", [0.0, -0.1, math.inf, math.nan])
def test_nonpositive_lr_refused(lr):
    with pytest.raises(ValueError, match=rf"'sgd': hparam 'lr' = {lr!r} is invalid"):
        resolve_hparams("sgd", {"lr": lr})


@pytest.mark.parametrize(
    ("name", "hp", "pattern"),
    [
        ("adam", {"betas": (0.9, 1.0)}, r"'betas' = \(0.9, 1.0\) is invalid.*\[0, 1\)"),
        ("adam", {"betas": (-0.1, 0.99)}, r"'betas' = \(-0.1, 0.99\)"),
        ("adam", {"betas": (0.9,)}, r"'betas' = \(0.9,\) must have length 2"),
        ("adan", {"betas": (0.9, 0.9)}, r"'betas' .* must have length 3"),
        ("momentum", {"momentum": -0.5}, r"'momentum' = -0.5 is invalid"),
        ("momentum", {"momentum": 1.0}, r"'momentum' = 1.0 is invalid"),
        ("sgd", {"lr": True}, r"'lr' = True has type bool, expected float"),
        ("sgd", {"lr": "0.1"}, r"'lr' = '0.1' has type str"),
        ("adam", {"amsgrad": 1}, r"'amsgrad' = 1 has type int, expected bool"),
        ("local_sgd", {"workers": 0}, r"'workers' = 0 is invalid: expected an integer >= 1"),
        ("local_sgd", {"workers": 2.5}, r"'workers' = 2.5 has type float, expected int"),
        ("muon", {"adjust_lr_fn": "foo"}, r"'adjust_lr_fn' = 'foo' is not one of"),
        ("svag", {"l": 0.5}, r"'l' = 0.5 is invalid: expected a finite number >= 1"),
        ("label_noise_sgd", {}, r"'num_classes' = None is invalid"),
        ("label_noise_sgd", {"num_classes": 3, "p": 1.5}, r"'p' = 1.5 is invalid"),
        ("schedule_free_sgd", {"momentum": 0.0}, r"'momentum' = 0.0 is invalid.*\(0, 1\)"),
    ],
)
def test_invalid_values_are_named(name, hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_hparams(name, hp)


def test_lists_and_ints_are_coerced():
    h = resolve_hparams("adam", {"betas": [0.5, 0.9], "lr": 1})
    assert h["betas"] == (0.5, 0.9) and isinstance(h["lr"], float)
    assert resolve_hparams("local_sgd", {"workers": 4.0})["workers"] == 4


def test_batches_per_step():
    assert batches_per_step("sgd", {}) == 1
    assert batches_per_step("svag", {"l": 4}) == 2
    assert batches_per_step("svag_adam", {}) == 2
    assert batches_per_step("local_sgd", {"workers": 5}) == 5
    with pytest.raises(ValueError, match="'workers'"):
        batches_per_step("local_sgd", {"workers": -1})


def test_build_refuses_empty_and_duplicate_params():
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("sgd", [], {})
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("sgd", [("w", frozen)], {})
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="parameter 'b' given twice"):
        build_optimizer("sgd", [("a", p), ("b", p)], {})


def test_bad_hparam_fails_before_building():
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="'lr' = -1.0"):
        build_optimizer("adam", [("w", p)], {"lr": -1.0})


def test_muon_sends_input_and_output_layers_to_adamw_by_default():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    muon_group, adamw_group = build_optimizer("muon", model.named_parameters(), {"lr": 0.02}).param_groups
    assert [p is model[2].weight for p in muon_group["params"]] == [True]  # the one hidden matrix
    ids = {id(p) for p in adamw_group["params"]}
    assert {id(model[0].weight), id(model[4].weight), id(model[2].bias)} <= ids and len(ids) == 5


def test_muon_routes_matrices_to_muon_and_the_rest_to_adamw():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = build_optimizer("muon", model.named_parameters(), {"lr": 0.02, "adamw_lr": 1e-3, "io_to_adamw": False})
    muon_group, adamw_group = opt.param_groups
    assert all(p.ndim == 2 for p in muon_group["params"]) and len(muon_group["params"]) == 2
    assert all(p.ndim == 1 for p in adamw_group["params"]) and len(adamw_group["params"]) == 2
    assert (muon_group["lr"], adamw_group["lr"]) == (0.02, 1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)
    assert (muon_group["lr"], adamw_group["lr"]) == (0.01, 5e-4)
    x = torch.randn(5, 4)

    def closure(k=0):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss.detach()

    opt.step(closure)
    sched.step()
    assert len(opt.state_dict()["state"]) == 4  # momentum of 2 matrices + Adam moments of 2 biases
