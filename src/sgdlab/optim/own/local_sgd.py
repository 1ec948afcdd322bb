"""Local SGD simulated on one device, with the Quadratic Synchronization Rule (QSR).

Gu, Lyu, Huang, Arora 2023, "Why (and When) does Local SGD Generalize Better than SGD?" (ICLR):
K workers start from the same parameters; each makes H local SGD(+momentum) steps on its own
minibatches, then all parameters are averaged (one *round*).
Gu, Lyu, Arora, Zhang, Huang 2024, "A Quadratic Synchronization Rule for Distributed Deep
Learning" (ICLR): at the start of every round pick

    H = max(H_base, floor((alpha / lr_t)^2))

from the current learning rate lr_t, so rounds lengthen as lr decays.

Simulation: ``step(closure)`` runs every worker once: it loads worker k's parameters into the
model, calls ``closure(k)`` (worker k's own minibatch), applies worker k's SGD update to its copy;
after H such steps it averages the copies. Between steps the model holds the mean of the worker
copies (= the synchronised parameters right after a round). Worker copies live in
``state[p]["workers"]`` (K, *p.shape) and the counters in ``param_groups[0]`` ("local_step",
"round", "H"), so ``state_dict`` round-trips everything. Module buffers (BatchNorm statistics)
are shared by all workers: a limitation of the simulation.

Why own code: no library simulates Local SGD/QSR in one process.
"""

from __future__ import annotations

import math

import torch

from ..registry import HParam, OptimizerConfigError, OptimizerSpec, register


def qsr_period(lr: float, alpha: float, h_base: int) -> int:
    """QSR's number of local steps: max(H_base, floor((alpha / lr)^2)); alpha = 0 gives H_base."""
    if lr <= 0:
        raise ValueError(f"qsr_period: lr = {lr!r} must be > 0")
    return max(int(h_base), int(math.floor((alpha / lr) ** 2)))


class LocalSGD(torch.optim.Optimizer):
    """K simulated workers, H local SGD steps (torch momentum convention), then averaging."""

    def __init__(
        self,
        params,
        *,
        lr,
        workers=2,
        local_steps=1,
        qsr_alpha=0.0,
        momentum=0.0,
        weight_decay=0.0,
        average_momentum=False,
    ):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.workers, self.h_base, self.qsr_alpha = workers, local_steps, qsr_alpha
        self.average_momentum = average_momentum
        g0 = self.param_groups[0]
        g0.update(local_step=0, round=0, H=local_steps)

    def _all(self):
        return [(g, p) for g in self.param_groups for p in g["params"]]

    def log_metrics(self) -> dict[str, float]:
        """Logged by the training loop at every log point: the current round's H and the rounds done."""
        g0 = self.param_groups[0]
        return {"local_sgd/H": float(g0["H"]), "local_sgd/rounds": float(g0["round"])}

    def _init_state(self) -> None:
        for g, p in self._all():
            st = self.state[p]
            if "workers" not in st:
                st["workers"] = p.detach().unsqueeze(0).repeat(self.workers, *([1] * p.ndim)).clone()  # (K, *p.shape)
                if g["momentum"] > 0:
                    st["momentum"] = torch.zeros_like(st["workers"])  # (K, *p.shape)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("local_sgd: step() needs a closure(k), one minibatch per worker")
        self._init_state()
        g0 = self.param_groups[0]
        if g0["local_step"] == 0:  # a new round: QSR looks at the current lr
            g0["H"] = qsr_period(g0["lr"], self.qsr_alpha, self.h_base)
        losses = []
        for k in range(self.workers):
            for _, p in self._all():
                p.copy_(self.state[p]["workers"][k])
            with torch.enable_grad():
                losses.append(closure(k))
            for g, p in self._all():
                if p.grad is None:
                    continue
                st = self.state[p]
                d = p.grad if g["weight_decay"] == 0 else p.grad + g["weight_decay"] * p
                if g["momentum"] > 0:
                    buf = st["momentum"][k]
                    buf.mul_(g["momentum"]).add_(d)  # v <- mu v + g (torch convention)
                    d = buf
                st["workers"][k].sub_(d, alpha=g["lr"])
        g0["local_step"] += 1
        if g0["local_step"] >= g0["H"]:
            for _, p in self._all():
                st = self.state[p]
                st["workers"].copy_(st["workers"].mean(0, keepdim=True).expand_as(st["workers"]))
                if self.average_momentum and "momentum" in st:
                    st["momentum"].copy_(st["momentum"].mean(0, keepdim=True).expand_as(st["momentum"]))
            g0["local_step"] = 0
            g0["round"] += 1
        for _, p in self._all():
            p.copy_(self.state[p]["workers"].mean(0))
        return torch.stack([torch.as_tensor(v) for v in losses]).mean()


def _validate(h: dict) -> None:
    if h["average_momentum"] and h["momentum"] == 0:
        raise OptimizerConfigError("optimizer 'local_sgd': hparam 'average_momentum' = True needs momentum > 0")


register(
    OptimizerSpec(
        name="local_sgd",
        family="distributed",
        source="sgdlab",
        summary=(
            "simulated Local SGD: K=workers copies, each an SGD(+momentum) step on its OWN minibatch "
            "closure(k) per step, parameter averaging every H steps; QSR H=max(local_steps, "
            "floor((qsr_alpha/lr)^2)) per round. LOOP: batches_per_step = workers; the model holds "
            "the worker mean between steps; returns the mean worker loss"
        ),
        paper="Gu, Lyu, Huang, Arora 2023 (Local SGD); Gu et al. 2024 (QSR)",
        hparams=(
            HParam("lr", 0.1, "local SGD learning rate", float, "positive"),
            HParam("workers", 2, "number K of simulated workers", int, "posint"),
            HParam("local_steps", 1, "H (H_base under QSR): local steps per round", int, "posint"),
            HParam("qsr_alpha", 0.0, "QSR alpha (0: fixed H = local_steps)", float, "nonneg"),
            HParam("momentum", 0.0, "local heavy-ball momentum (torch convention)", float, "unit"),
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
            HParam("average_momentum", False, "also average momentum buffers each round", bool),
        ),
        batches_per_step=lambda h: h["workers"],
    ),
    lambda named, h: LocalSGD([p for _, p in named], **h),
    _validate,
)
