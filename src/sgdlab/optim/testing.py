"""The one list of optimizers under test, small known problems, and a reference step driver.

``OPTIMIZERS_UNDER_TEST`` must equal the registered names (a test asserts it): adding a family to
the registry without adding it here (with sensible small-problem hparams) fails the suite.
:func:`drive` is the step protocol the training loop follows, written once so tests of every
optimizer (and of the loop) can share it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import batches_per_step, build_optimizer, get_spec

# hparams for the tiny test problems (float64, a few dozen steps); {} = registry defaults
TEST_HPARAMS: dict[str, dict] = {
    "sgd": {"lr": 0.2},
    "momentum": {"lr": 0.05},
    "nesterov": {"lr": 0.05},
    "adam": {"lr": 0.05},
    "adamw": {"lr": 0.05, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01},
    "rmsprop_bc": {"lr": 0.02},
    "adagrad": {"lr": 0.2},
    "nadam": {"lr": 0.05},
    "radam": {"lr": 0.1},
    "adafactor": {"lr": 0.05},
    "muon": {"lr": 0.05, "weight_decay": 0.0, "adamw_lr": 0.05},
    "adan": {"lr": 0.05},
    "adabelief": {"lr": 0.05},
    "adabound": {"lr": 0.05, "final_lr": 0.1},
    "lion": {"lr": 0.02},
    "apollo": {"lr": 0.05, "rank": 2},
    "apollo_mini": {"lr": 0.01},
    "sgd_sai": {"lr": 0.05, "weight_decay": 0.0},
    "psgd_kron": {"lr": 0.02},
    "sam": {"lr": 0.05, "rho": 0.02},
    "schedule_free_sgd": {"lr": 0.2},
    "schedule_free_adamw": {"lr": 0.05},
    "soap": {"lr": 0.05, "weight_decay": 0.0, "precondition_frequency": 2},
    "shampoo": {"lr": 0.2},
    "lamb": {"lr": 0.05},
    "lars": {"lr": 1.0, "trust_coefficient": 0.02},
    "adahessian": {"lr": 0.1},
    "label_noise_sgd": {"lr": 0.2, "num_classes": 3, "p": 0.1},
    "svag": {"lr": 0.2, "l": 2.0},
    "svag_adam": {"lr": 0.05, "l": 2.0},
    "normalized_gd": {"lr": 0.1},
    "local_sgd": {"lr": 0.2, "workers": 2, "local_steps": 2},
    "gam": {"lr": 0.05, "rho": 0.02, "fd_radius": 0.01},
    "sps": {"lr": 1.0, "c": 0.5},
    "zo_sgd": {"lr": 0.15, "n_perturbations": 8},  # q=1 needs far more than 30 steps on the MLP
    # printed Eq. 7: steps 1-19 warm-up, 20-27 annealing, 28-30 final phase
    "zo_adamu": {"lr": 0.15, "t1": 20, "t2": 28, "t3": 31, "n_perturbations": 8},
    "xgrad_sgd": {"lr": 0.05, "momentum": 0.9},
    "xgrad_adam": {"lr": 0.05},
    "xgrad_adamw": {"lr": 0.05, "weight_decay": 0.0},
    "onebit_adam": {"lr": 0.005, "workers": 2, "warmup_steps": 5},  # 25 of the 30 steps compressed
    "dp_sgd": {"lr": 0.5, "max_grad_norm": 1.0, "noise_multiplier": 0.5},  # noise std sigma C / B = 0.016
    "psps": {"init_probes": 10},
    "gam_sam": {"lr": 0.05, "rho": 0.02, "sam_rho": 0.02, "fd_radius": 0.01},
    "svag_momentum": {"lr": 0.05, "l": 2.0},
}
OPTIMIZERS_UNDER_TEST: tuple[str, ...] = tuple(TEST_HPARAMS)


def hparams_for(name: str, **overrides) -> dict:
    """The small-problem hparams of ``name`` with overrides."""
    return {**TEST_HPARAMS[name], **overrides}


# ---- known problems (float64) ----------------------------------------------------------------------
class Quadratic(nn.Module):
    """f(W, b) = 1/2 sum a (W - W*)^2 + 1/2 sum c (b - b*)^2, curvatures in [0.5, 2]."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        kw = {"generator": generator, "dtype": torch.float64}
        self.W = nn.Parameter(torch.randn(4, 5, **kw))  # 2-D: exercises Muon/APOLLO/Shampoo paths
        self.b = nn.Parameter(torch.randn(5, **kw))
        self.register_buffer("W_star", torch.randn(4, 5, **kw))
        self.register_buffer("b_star", torch.randn(5, **kw))
        self.register_buffer("a", 0.5 + 1.5 * torch.rand(4, 5, **kw))
        self.register_buffer("c", 0.5 + 1.5 * torch.rand(5, **kw))

    def forward(self) -> torch.Tensor:
        return 0.5 * ((self.a * (self.W - self.W_star) ** 2).sum() + (self.c * (self.b - self.b_star) ** 2).sum())


def mlp_problem(seed: int = 0, n: int = 64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 10 -> 16 -> 3 tanh MLP (float64) and n labelled points from a random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g, dtype=torch.float64)  # (N, 10)
    teacher = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = (x @ teacher).argmax(1)  # (N,)
    torch.manual_seed(seed)  # nn.Linear init uses the global RNG; seeded here on purpose
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    return model, x, y


# ---- the step protocol -------------------------------------------------------------------------
def drive(
    optimizer: torch.optim.Optimizer,
    name: str,
    hparams: dict,
    loss_fn: Callable[[int, torch.optim.Optimizer], torch.Tensor],
    steps: int,
    generator: torch.Generator,
) -> list[float]:
    """Take ``steps`` optimizer steps exactly as the training loop does.

    Per step, one seed per independent minibatch (``batches_per_step``) is drawn from
    ``generator``; ``closure(k)`` zeroes grads, computes ``loss_fn(seed_k, optimizer)`` (the mean
    loss on the minibatch that seed selects; ``loss_fn`` applies ``optimizer.perturb_targets``
    when the optimizer has it), runs backward (``create_graph`` per spec) and returns the
    detached loss. Schedule-free optimizers are put in train mode and back in eval mode.
    Returns the loss each step reported.
    """
    spec = get_spec(name)
    n_batches = batches_per_step(name, hparams)
    if spec.train_eval:
        optimizer.train()
    losses = []
    for _ in range(steps):
        draws = [torch.randint(0, 2**31 - 1, (1,), generator=generator).item() for _ in range(n_batches)]
        closure = _closure(optimizer, loss_fn, draws, spec.create_graph)
        losses.append(float(optimizer.step(closure)))
    if spec.train_eval:
        optimizer.eval()
    return losses


def _closure(optimizer, loss_fn, draws: list[int], create_graph: bool):
    """closure(k) for one step: k-th minibatch of this step, mean loss, backward, detached loss."""

    def closure(k: int = 0, backward: bool = True) -> torch.Tensor:
        if not 0 <= k < len(draws):
            raise IndexError(f"closure(k={k}) outside 0..{len(draws) - 1}")
        if not backward:  # zeroth-order families: the loss only
            with torch.no_grad():
                return loss_fn(draws[k], optimizer).detach()
        optimizer.zero_grad()
        loss = loss_fn(draws[k], optimizer)
        loss.backward(create_graph=create_graph)
        return loss.detach()

    return closure


def build(name: str, model: nn.Module, **overrides) -> torch.optim.Optimizer:
    """``build_optimizer`` with the small-problem hparams; per-sample-gradient families (DP-SGD) get the
    model attached (no batch size: the step divides by the minibatch's size, no privacy accounting)."""
    opt = build_optimizer(name, model.named_parameters(), hparams_for(name, **overrides))
    if get_spec(name).per_sample_grads:
        opt.attach(model)
    return opt
