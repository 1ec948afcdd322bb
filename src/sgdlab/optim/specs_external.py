"""Optimizer families taken from ``pytorch_optimizer`` (4.1), used through their classes.

Classes are imported directly (not ``load_optimizer``) because SAM is not in its name table and
the classes are what we wrap. Library methods that draw random numbers inside ``step`` (PSGD-Kron,
AdaHessian) get a private checkpointed RNG and a ``seed`` hparam (see ``wrappers``).
Not used from the library: ``APOLLO`` (4.1 projects the rescaled update back into the random
low-rank space instead of rescaling the raw gradient; see ``own/apollo.py``), ``MSVAG`` (Balles &
Hennig's M-SVAG, not SVAG), ``ApolloDQN`` (a 2020 quasi-Newton method, not APOLLO).
"""

from __future__ import annotations

import pytorch_optimizer as po
import torch

from .registry import HParam, OptimizerSpec, register
from .specs_torch import betas, eps, lr, params_only, wd
from .wrappers import ClosureSAM, exact_load, seeded

SRC = "pytorch_optimizer"
_SeededKron = exact_load(seeded(po.Kron))
_SeededAdaHessian = exact_load(seeded(po.AdaHessian))


def seed_hp() -> HParam:
    return HParam("seed", 0, "seed of the optimizer's private RNG (saved in state_dict)", int, "nonnegint")


def decouple(default: bool) -> HParam:
    return HParam("weight_decouple", default, "decoupled (AdamW-style) weight decay", bool)


def _spec(name, family, summary, paper, hparams, **kw) -> OptimizerSpec:
    return OptimizerSpec(name, family, SRC, summary, paper, tuple(hparams), **kw)


def _plain(cls, **fixed):
    """Factory passing every resolved hparam as a keyword (names match the class)."""
    cls = exact_load(cls)
    return lambda named, h: cls(params_only(named), **h, **fixed)


register(
    _spec(
        "adan",
        "adaptive",
        "Adan: Nesterov-momentum Adam with gradient-difference moments",
        "Xie et al. 2022",
        [
            lr(1e-3),
            betas((0.98, 0.92, 0.99), "(beta1, beta2, beta3)"),
            wd(),
            decouple(False),
            HParam("max_grad_norm", 0.0, "global grad-norm clip (0: off)", float, "nonneg"),
            eps(1e-8),
        ],
    ),
    _plain(po.Adan),
)

register(
    _spec(
        "adabelief",
        "adaptive",
        "AdaBelief: Adam with s = EMA((g - m)^2) as second moment",
        "Zhuang et al. 2020",
        [
            lr(1e-3),
            betas((0.9, 0.999)),
            wd(),
            decouple(True),
            HParam("rectify", False, "RAdam-style rectification", bool),
            eps(1e-16),
        ],
    ),
    _plain(po.AdaBelief),
)

register(
    _spec(
        "adabound",
        "adaptive",
        "AdaBound: Adam with per-coordinate lr clipped into bounds -> final_lr",
        "Luo et al. 2019",
        [
            lr(1e-3),
            HParam("final_lr", 0.1, "SGD lr the bounds converge to", float, "positive"),
            betas((0.9, 0.999)),
            HParam("gamma", 1e-3, "convergence speed of the bounds", float, "positive"),
            wd(),
            HParam("ams_bound", False, "AMSBound variant", bool),
            eps(1e-8),
        ],
    ),
    _plain(po.AdaBound),
)

register(
    _spec(
        "lion",
        "sign",
        "Lion: p <- p - lr sign(beta1 m + (1-beta1) g); m <- EMA_beta2(g)",
        "Chen et al. 2023",
        [lr(1e-4), betas((0.9, 0.99)), wd(0.0, "decoupled weight decay")],
    ),
    _plain(po.Lion),
)


register(
    _spec(
        "sgd_sai",
        "sgd",
        "SGD-SaI: SGD+momentum with per-tensor lr scaled once at init by g-SNR",
        "Xu et al. 2024, No More Adam: Learning Rate Scaling at Initialization is All You Need",
        [
            lr(1e-2),
            HParam("momentum", 0.9, "momentum", float, "unit"),
            wd(0.01, "decoupled weight decay"),
            eps(1e-8),
        ],
    ),
    _plain(po.SGDSaI),
)

register(
    _spec(
        "psgd_kron",
        "second-order",
        "PSGD with Kronecker-factored preconditioner (Kron); preconditioner updated with a "
        "probability schedule; private seeded RNG; preconditioner kept in the param dtype (the "
        "library's float32 default does not survive load_state_dict, which casts state to it)",
        "Li 2018, Preconditioned Stochastic Gradient Descent",
        [
            lr(1e-3),
            HParam("momentum", 0.9, "momentum (EMA)", float, "unit"),
            wd(0.0, "decoupled weight decay"),
            HParam(
                "pre_conditioner_update_probability",
                None,
                "fixed update probability (None: library's annealed schedule)",
                float,
                "prob",
                optional=True,
            ),
            HParam("max_size_triangular", 8192, "max dim for a dense triangular factor", int, "posint"),
            HParam("balance_prob", 0.01, "probability of rebalancing factors", float, "prob"),
            seed_hp(),
        ],
    ),
    _plain(_SeededKron, precondition_dtype=None),
)

register(
    _spec(
        "sam",
        "sharpness-aware",
        "SAM over SGD(+momentum): step(closure) calls closure() twice on the SAME minibatch "
        "(k=0): at w and at w + rho g/||g||; returns L(w)",
        "Foret et al. 2021, Sharpness-Aware Minimization",
        [
            lr(0.05),
            HParam("rho", 0.05, "neighbourhood radius", float, "nonneg"),
            HParam("adaptive", False, "ASAM: scale perturbation by |w|", bool),
            HParam("momentum", 0.9, "base SGD momentum (torch convention)", float, "unit"),
            HParam("nesterov", False, "base SGD Nesterov", bool),
            wd(),
        ],
    ),
    lambda named, h: exact_load(ClosureSAM)(
        params_only(named),
        torch.optim.SGD,
        rho=h["rho"],
        adaptive=h["adaptive"],
        lr=h["lr"],
        momentum=h["momentum"],
        nesterov=h["nesterov"],
        weight_decay=h["weight_decay"],
    ),
)

_SF = (
    " TRAIN/EVAL: loop must call opt.train() before training steps and opt.eval() before "
    "evaluation/checkpoint eval (params are y in train mode, the average x in eval mode; save "
    "model and optimizer state in the same mode)."
)
_SF_HP = [
    wd(),
    HParam("warmup_steps", 0, "linear lr warm-up steps", int, "nonnegint"),
    HParam("r", 0.0, "polynomial weighting power of the average", float, "nonneg"),
    HParam("weight_lr_power", 2.0, "weight of lr_max in the average", float, "nonneg"),
]
register(
    _spec(
        "schedule_free_sgd",
        "sgd",
        "Schedule-Free SGD (no lr schedule needed)." + _SF,
        "Defazio et al. 2024, The Road Less Scheduled",
        [lr(0.1), HParam("momentum", 0.9, "interpolation beta", float, "open_unit"), *_SF_HP],
        train_eval=True,
    ),
    _plain(po.ScheduleFreeSGD),
)
register(
    _spec(
        "schedule_free_adamw",
        "adaptive",
        "Schedule-Free AdamW." + _SF,
        "Defazio et al. 2024, The Road Less Scheduled",
        [lr(2.5e-3), betas((0.9, 0.999)), *_SF_HP, eps(1e-8)],
        train_eval=True,
    ),
    _plain(po.ScheduleFreeAdamW),
)

register(
    _spec(
        "soap",
        "second-order",
        "SOAP: Adam in the eigenbasis of Shampoo's preconditioner",
        "Vyas et al. 2024",
        [
            lr(3e-3),
            betas((0.95, 0.95)),
            HParam(
                "shampoo_beta",
                None,
                "EMA of the Kronecker factors (None: beta2)",
                float,
                "unit",
                optional=True,
            ),
            wd(0.01, "decoupled weight decay"),
            HParam("precondition_frequency", 10, "steps between eigenbasis updates", int, "posint"),
            HParam("max_precondition_dim", 10000, "larger dims are not preconditioned", int, "posint"),
            HParam("precondition_1d", False, "also precondition 1-D params", bool),
            eps(1e-8),
        ],
    ),
    _plain(po.SOAP),
)

register(
    _spec(
        "shampoo",
        "second-order",
        "Shampoo: Kronecker-factored full-matrix AdaGrad (L^-1/4 G R^-1/4)",
        "Gupta, Koren, Singer 2018",
        [
            lr(1e-3),
            HParam("momentum", 0.0, "momentum", float, "unit"),
            wd(),
            HParam("preconditioning_compute_steps", 1, "steps between inverse roots", int, "posint"),
            HParam("matrix_eps", 1e-6, "ridge added to the factors", float, "positive"),
        ],
    ),
    _plain(po.Shampoo),
)

register(
    _spec(
        "lamb",
        "adaptive",
        "LAMB: Adam update rescaled per layer by ||w||/||update|| (trust ratio)",
        "You et al. 2020",
        [
            lr(1e-3),
            betas((0.9, 0.999)),
            wd(0.0, "decoupled weight decay"),
            HParam("max_grad_norm", 1.0, "global grad-norm clip (0: off)", float, "nonneg"),
            eps(1e-6),
        ],
    ),
    _plain(po.Lamb),
)

register(
    _spec(
        "lars",
        "sgd",
        "LARS: SGD+momentum with per-layer lr scaled by trust ||w||/||g + wd w||",
        "You, Gitman, Ginsburg 2017",
        [
            lr(1e-3),
            wd(),
            HParam("momentum", 0.9, "momentum", float, "unit"),
            HParam("dampening", 0.0, "momentum dampening", float, "unit"),
            HParam("trust_coefficient", 1e-3, "trust coefficient eta", float, "positive"),
            HParam("nesterov", False, "Nesterov momentum", bool),
        ],
    ),
    _plain(po.LARS),
)

register(
    _spec(
        "adahessian",
        "second-order",
        "AdaHessian: Adam with Hutchinson diag-Hessian second moment. CREATE_GRAPH: the closure "
        "must call backward(create_graph=True). Private seeded RNG for the probes.",
        "Yao et al. 2021",
        [
            lr(0.1),
            betas((0.9, 0.999)),
            wd(),
            decouple(True),
            HParam(
                "hessian_power",
                1.0,
                "power k of the Hessian diag in the denominator",
                float,
                "prob",
            ),
            HParam("update_period", 1, "steps between Hessian estimates", int, "posint"),
            HParam("num_samples", 1, "Hutchinson probes per estimate", int, "posint"),
            HParam(
                "hessian_distribution",
                "rademacher",
                "probe distribution",
                str,
                choices=("rademacher", "gaussian"),
            ),
            eps(1e-16),
            seed_hp(),
        ],
        create_graph=True,
    ),
    _plain(_SeededAdaHessian),
)
