"""Optimizer families that ``torch.optim`` provides (torch 2.13).

Momentum convention (torch): ``v <- mu v + (1 - dampening) g``, ``p <- p - lr v``; with the default
``dampening=0`` this is heavy ball with the *un-normalised* buffer, i.e. the EMA-style momentum
``m <- beta m + (1 - beta) g`` with step ``lr_ema`` equals the torch one with ``lr = lr_ema (1 - beta)``.
"""

from __future__ import annotations

import torch

from .registry import HParam, OptimizerSpec, register
from .wrappers import exact_load

SRC = "torch.optim"
_optim = {  # torch classes whose load_state_dict keeps saved state dtypes (see wrappers)
    n: exact_load(getattr(torch.optim, n))
    for n in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adafactor")
}


# ---- shared hparam builders -------------------------------------------------------------------
def lr(default: float) -> HParam:
    return HParam("lr", default, "learning rate (step size)", float, "positive")


def wd(default: float = 0.0, doc: str = "L2 weight decay added to the gradient") -> HParam:
    return HParam("weight_decay", default, doc, float, "nonneg")


def eps(default: float) -> HParam:
    return HParam("eps", default, "denominator epsilon", float, "positive")


def betas(default: tuple[float, ...], doc: str = "(beta1, beta2) EMA coefficients") -> HParam:
    return HParam("betas", default, doc, tuple, "betas", length=len(default))


def params_only(named):
    return [p for _, p in named]


# ---- SGD family --------------------------------------------------------------------------------
register(
    OptimizerSpec(
        name="sgd",
        family="sgd",
        source=SRC,
        summary="plain SGD: p <- p - lr (g + wd p)",
        paper="Robbins & Monro 1951",
        hparams=(lr(0.1), wd()),
    ),
    lambda named, h: _optim["SGD"](params_only(named), lr=h["lr"], weight_decay=h["weight_decay"]),
)

register(
    OptimizerSpec(
        name="momentum",
        family="sgd",
        source=SRC,
        summary=(
            "heavy-ball SGD, torch convention: v <- momentum v + (1-dampening) g, p <- p - lr v "
            "(dampening=0: un-normalised buffer; effective lr is lr/(1-momentum) in EMA terms)"
        ),
        paper="Polyak 1964",
        hparams=(
            lr(0.05),
            HParam("momentum", 0.9, "momentum coefficient mu", float, "unit"),
            HParam("dampening", 0.0, "dampening of the gradient in the buffer", float, "unit"),
            wd(),
        ),
    ),
    lambda named, h: _optim["SGD"](
        params_only(named),
        lr=h["lr"],
        momentum=h["momentum"],
        dampening=h["dampening"],
        weight_decay=h["weight_decay"],
    ),
)

register(
    OptimizerSpec(
        name="nesterov",
        family="sgd",
        source=SRC,
        summary="Nesterov momentum SGD, torch convention: v <- mu v + g, p <- p - lr (g + mu v)",
        paper="Nesterov 1983; Sutskever et al. 2013",
        hparams=(lr(0.05), HParam("momentum", 0.9, "momentum coefficient mu", float, "unit"), wd()),
    ),
    lambda named, h: _optim["SGD"](
        params_only(named),
        lr=h["lr"],
        momentum=h["momentum"],
        nesterov=True,
        weight_decay=h["weight_decay"],
    ),
)


# ---- Adam family -------------------------------------------------------------------------------
def _adam_spec(name: str, summary: str, paper: str, weight_decay: float) -> OptimizerSpec:
    return OptimizerSpec(
        name=name,
        family="adaptive",
        source=SRC,
        summary=summary,
        paper=paper,
        hparams=(
            lr(1e-3),
            betas((0.9, 0.999)),
            eps(1e-8),
            wd(weight_decay, "weight decay (L2 for adam, decoupled for adamw)"),
            HParam("amsgrad", False, "use the AMSGrad max of second moments", bool),
        ),
    )


def _adam(cls):
    return lambda named, h: cls(
        params_only(named),
        lr=h["lr"],
        betas=h["betas"],
        eps=h["eps"],
        weight_decay=h["weight_decay"],
        amsgrad=h["amsgrad"],
    )


register(
    _adam_spec("adam", "Adam with bias correction, L2 weight decay", "Kingma & Ba 2015", 0.0),
    _adam(_optim["Adam"]),
)

register(
    _adam_spec(
        "adamw",
        "AdamW: Adam with decoupled weight decay p <- p - lr wd p",
        "Loshchilov & Hutter 2019",
        0.01,
    ),
    _adam(_optim["AdamW"]),
)

register(
    OptimizerSpec(
        name="rmsprop",
        family="adaptive",
        source=SRC,
        summary=(
            "torch RMSprop: v <- alpha v + (1-alpha) g^2, p <- p - lr g/(sqrt(v)+eps); NO bias "
            "correction (the SDE papers' RMSprop is rmsprop_bc)"
        ),
        paper="Tieleman & Hinton 2012",
        hparams=(
            lr(1e-3),
            HParam("alpha", 0.99, "EMA coefficient of squared gradients (beta2)", float, "unit"),
            eps(1e-8),
            wd(),
            HParam("momentum", 0.0, "momentum on the preconditioned step", float, "unit"),
            HParam("centered", False, "subtract the squared mean gradient", bool),
        ),
    ),
    lambda named, h: _optim["RMSprop"](
        params_only(named),
        lr=h["lr"],
        alpha=h["alpha"],
        eps=h["eps"],
        weight_decay=h["weight_decay"],
        momentum=h["momentum"],
        centered=h["centered"],
    ),
)

register(
    OptimizerSpec(
        name="rmsprop_bc",
        family="adaptive",
        source=SRC,
        summary=(
            "the SDE papers' RMSprop = torch Adam(betas=(0, beta2)): bias-corrected second moment "
            "v_hat = v/(1-beta2^t), p <- p - lr g/(sqrt(v_hat)+eps)"
        ),
        paper="Malladi, Lyu, Panigrahi, Arora 2022 (RMSprop as analysed there)",
        hparams=(
            lr(1e-3),
            HParam("beta2", 0.999, "EMA coefficient of squared gradients", float, "unit"),
            eps(1e-8),
            wd(),
        ),
    ),
    lambda named, h: _optim["Adam"](
        params_only(named),
        lr=h["lr"],
        betas=(0.0, h["beta2"]),
        eps=h["eps"],
        weight_decay=h["weight_decay"],
    ),
)

register(
    OptimizerSpec(
        name="adagrad",
        family="adaptive",
        source=SRC,
        summary="Adagrad: s <- s + g^2, p <- p - lr/(1+(t-1) lr_decay) g/(sqrt(s)+eps)",
        paper="Duchi, Hazan, Singer 2011",
        hparams=(
            lr(1e-2),
            HParam("lr_decay", 0.0, "learning-rate decay", float, "nonneg"),
            wd(),
            HParam("initial_accumulator_value", 0.0, "initial s", float, "nonneg"),
            eps(1e-10),
        ),
    ),
    lambda named, h: _optim["Adagrad"](
        params_only(named),
        lr=h["lr"],
        lr_decay=h["lr_decay"],
        weight_decay=h["weight_decay"],
        initial_accumulator_value=h["initial_accumulator_value"],
        eps=h["eps"],
    ),
)

register(
    OptimizerSpec(
        name="nadam",
        family="adaptive",
        source=SRC,
        summary="NAdam: Adam with Nesterov momentum and momentum decay schedule",
        paper="Dozat 2016",
        hparams=(
            lr(2e-3),
            betas((0.9, 0.999)),
            eps(1e-8),
            wd(),
            HParam("momentum_decay", 4e-3, "momentum decay psi", float, "nonneg"),
            HParam("decoupled_weight_decay", False, "AdamW-style weight decay", bool),
        ),
    ),
    lambda named, h: _optim["NAdam"](
        params_only(named),
        lr=h["lr"],
        betas=h["betas"],
        eps=h["eps"],
        weight_decay=h["weight_decay"],
        momentum_decay=h["momentum_decay"],
        decoupled_weight_decay=h["decoupled_weight_decay"],
    ),
)

register(
    OptimizerSpec(
        name="radam",
        family="adaptive",
        source=SRC,
        summary="RAdam: Adam with variance rectification of the adaptive lr (SGD+momentum early on)",
        paper="Liu et al. 2020",
        hparams=(
            lr(1e-3),
            betas((0.9, 0.999)),
            eps(1e-8),
            wd(),
            HParam("decoupled_weight_decay", False, "AdamW-style weight decay", bool),
        ),
    ),
    lambda named, h: _optim["RAdam"](
        params_only(named),
        lr=h["lr"],
        betas=h["betas"],
        eps=h["eps"],
        weight_decay=h["weight_decay"],
        decoupled_weight_decay=h["decoupled_weight_decay"],
    ),
)

register(
    OptimizerSpec(
        name="adafactor",
        family="adaptive",
        source=SRC,
        summary=(
            "torch Adafactor: factored second moments for >=2-D params, beta2_t = 1 - t^beta2_decay, "
            "no first moment; lr used as given (no relative step)"
        ),
        paper="Shazeer & Stern 2018",
        hparams=(
            lr(1e-2),
            HParam("beta2_decay", -0.8, "exponent of the beta2 schedule", float, "finite"),
            HParam(
                "eps1",
                None,
                "epsilon added to g^2 (None: dtype eps)",
                float,
                "positive",
                optional=True,
            ),
            HParam("eps2", 1e-3, "relative-step floor on the param RMS", float, "positive"),
            HParam("d", 1.0, "update clipping threshold", float, "positive"),
            wd(),
        ),
    ),
    lambda named, h: _optim["Adafactor"](
        params_only(named),
        lr=h["lr"],
        beta2_decay=h["beta2_decay"],
        eps=(h["eps1"], h["eps2"]),
        d=h["d"],
        weight_decay=h["weight_decay"],
    ),
)


# ---- Muon (2-D params) + AdamW (the rest) --------------------------------------------------------
def _build_muon(named, h):
    from .composite import MuonWithAdamW  # local import keeps module import order simple

    return exact_load(MuonWithAdamW)(named, h)


register(
    OptimizerSpec(
        name="muon",
        family="orthogonalized",
        source=SRC,
        summary=(
            "torch.optim.Muon (Newton-Schulz orthogonalised momentum, bf16 iteration) on the hidden 2-D "
            "weight matrices; the input and output layers (the reference recipe; io_to_adamw=false puts "
            "them on Muon too) and all other params (biases, norms, conv kernels) go to an AdamW with adamw_* "
            "hparams inside ONE composite optimizer (step/state_dict/param_groups cover both; group "
            "0.. are Muon groups, the last group is AdamW - lr schedulers scale both)"
        ),
        paper="Jordan et al. 2024 (Muon); torch 2.13 torch.optim.Muon",
        hparams=(
            lr(0.02),
            HParam("momentum", 0.95, "Muon momentum", float, "unit"),
            HParam("nesterov", True, "Nesterov momentum in Muon", bool),
            wd(0.1, "Muon decoupled weight decay"),
            HParam("ns_steps", 5, "Newton-Schulz iterations", int, "posint"),
            HParam(
                "adjust_lr_fn",
                "original",
                "Muon per-shape lr adjustment",
                str,
                choices=("original", "match_rms_adamw"),
            ),
            HParam("adamw_lr", 1e-3, "lr of the AdamW for non-2-D params", float, "positive"),
            HParam("adamw_betas", (0.9, 0.999), "AdamW betas", tuple, "betas", length=2),
            HParam("adamw_eps", 1e-8, "AdamW eps", float, "positive"),
            HParam("adamw_weight_decay", 0.0, "AdamW decoupled weight decay", float, "nonneg"),
            HParam(
                "io_to_adamw",
                True,
                "first and last 2-D weight matrices (input layer, output head) to "
                "AdamW, as in Jordan et al.'s recipe (Muon is for hidden layers)",
                bool,
            ),
        ),
    ),
    _build_muon,
)
