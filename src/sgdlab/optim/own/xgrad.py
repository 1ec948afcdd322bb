"""XGrad: gradient-based optimizers boosted by weight prediction (SGD-momentum, Adam, AdamW bases).

Guan, Li, Shi, Meng 2024, "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction"
(IEEE TPAMI; arXiv 2305.18240). Ahead of each minibatch the weights ``s`` steps in the future are
predicted from the base optimizer's current state, assuming its update direction stays fixed for
``s`` steps; forward and backward run at the predicted weights; the base optimizer then updates the
*current* weights with that gradient:

    theta_hat = theta_t - s * lr_t * Delta_t          (weight prediction)
    g         = grad f(theta_hat)                      (closure(0) at theta_hat)
    theta_{t+1} = base_update(theta_t, g)              (state updated with g, as the base would)

with Delta_t the base's update direction from its state *before* this step:

    SGD-momentum (torch convention v <- mu v + g + wd theta):   Delta_t = v
    Adam / AdamW (bias-corrected, t = steps taken so far):       Delta_t = m_hat / (sqrt(v_hat) + eps),
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)

Step 1: the state is empty (no momentum buffer, t = 0 so the bias correction is undefined), so no
prediction is made and theta_hat = theta_1; this is also what the authors' released code does (it
predicts only once state exists). ``prediction_steps = 0`` is exactly the base optimizer.

Checked against the paper's abstract/method description and the authors' public code
(github.com/guanleics/XGrad): the SGD-momentum and Adam directions above. NOT verified from the
paper's full text: (1) whether the paper's AdamW direction also contains the decoupled decay term
``wd * theta`` (the authors' code predicts with m_hat/(sqrt(v_hat)+eps) only, which is what is used
here); (2) the paper's default ``s`` (1 here: predict the weights after the next update). The L2
(sgd, adam) or decoupled (adamw) weight decay of the base update acts on theta_t, not theta_hat.

Design: one registered name per base (``xgrad_sgd``, ``xgrad_adam``, ``xgrad_adamw``) rather than one
``xgrad`` with a ``base`` choice: each base takes a different set of hparams (momentum vs betas/eps,
L2 vs decoupled decay, different defaults), so a single name would accept keys that silently do
nothing for some bases; and every base then goes through the shared family tests and the resume test.

The base update is torch.optim's own (SGD / Adam / AdamW ``step``); only the prediction is computed
here, from the base's state, and ``prediction_steps`` lives in ``param_groups`` so ``state_dict``
round-trips everything. The returned loss is the minibatch loss at theta_hat.

Why own code: no maintained library ships XGrad; the authors' repository is unlicensed research code.
"""

from __future__ import annotations

import torch

from ..registry import HParam, OptimizerConfigError, OptimizerSpec, register


class _WeightPrediction:
    """Mixin over a torch optimizer: gradient at the predicted weights, then the base update."""

    def _direction(self, group: dict, p: torch.Tensor) -> torch.Tensor | None:
        """The base's update direction Delta_t for ``p`` from its current state; None if empty."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("xgrad: step() needs a closure (the gradient is taken at the predicted weights)")
        saved = []  # (param, theta_t) for every parameter moved to its prediction
        for group in self.param_groups:
            s = group["prediction_steps"]
            if s == 0:
                continue
            for p in group["params"]:
                d = self._direction(group, p)
                if d is None:
                    continue
                saved.append((p, p.detach().clone()))
                p.add_(d, alpha=-s * group["lr"])  # theta_hat = theta_t - s lr Delta_t
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            for p, theta in saved:  # back to theta_t (exact: a copy, not an inverse update)
                p.copy_(theta)
        super().step()
        return loss


class XGradSGD(_WeightPrediction, torch.optim.SGD):
    """XGrad over torch SGD with heavy-ball momentum (torch convention), L2 weight decay."""

    def __init__(self, params, *, lr, prediction_steps=1, momentum=0.9, weight_decay=0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        for g in self.param_groups:
            g["prediction_steps"] = prediction_steps

    def _direction(self, group, p):
        buf = self.state[p].get("momentum_buffer")
        return buf  # v: torch SGD steps p <- p - lr v


class _XGradAdamMixin(_WeightPrediction):
    def _direction(self, group, p):
        st = self.state[p]
        if "exp_avg" not in st:
            return None
        t = float(st["step"])
        beta1, beta2 = group["betas"]
        m_hat = st["exp_avg"] / (1 - beta1**t)
        v_hat = st["exp_avg_sq"] / (1 - beta2**t)
        return m_hat / (v_hat.sqrt() + group["eps"])


class XGradAdam(_XGradAdamMixin, torch.optim.Adam):
    """XGrad over torch Adam (bias-corrected, L2 weight decay)."""

    def __init__(self, params, *, lr, prediction_steps=1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for g in self.param_groups:
            g["prediction_steps"] = prediction_steps


class XGradAdamW(_XGradAdamMixin, torch.optim.AdamW):
    """XGrad over torch AdamW (bias-corrected, decoupled weight decay p <- p - lr wd p)."""

    def __init__(self, params, *, lr, prediction_steps=1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for g in self.param_groups:
            g["prediction_steps"] = prediction_steps


_S = HParam(
    "prediction_steps",
    1,
    "weight-prediction steps s: gradient at theta - s lr Delta (0: the plain base optimizer)",
    int,
    "nonnegint",
)
_PAPER = "Guan, Li, Shi, Meng 2024, XGrad: Boosting Gradient-Based Optimizers With Weight Prediction (TPAMI)"
_LOOP = " closure() once per step, at the predicted weights; returns the loss there"


def _validate_sgd(h: dict) -> None:
    if h["momentum"] == 0:
        raise OptimizerConfigError(
            "optimizer 'xgrad_sgd': hparam 'momentum' = 0 is invalid: XGrad predicts from the momentum "
            "buffer, so momentum must be in (0, 1) (use 'sgd' for plain SGD)"
        )


def _adam_hparams(weight_decay: float, wd_doc: str) -> tuple[HParam, ...]:
    return (
        HParam("lr", 1e-3, "base learning rate", float, "positive"),
        _S,
        HParam("betas", (0.9, 0.999), "(beta1, beta2) EMA coefficients", tuple, "betas", length=2),
        HParam("eps", 1e-8, "denominator epsilon", float, "positive"),
        HParam("weight_decay", weight_decay, wd_doc, float, "nonneg"),
    )


register(
    OptimizerSpec(
        name="xgrad_sgd",
        family="weight-prediction",
        source="sgdlab",
        summary=(
            "XGrad over SGD-momentum (torch convention v <- mu v + g): gradient at theta - s lr v, "
            "then torch SGD's update of theta; step 1 (no buffer) has no prediction." + _LOOP
        ),
        paper=_PAPER,
        hparams=(
            HParam("lr", 0.05, "base SGD learning rate", float, "positive"),
            _S,
            HParam("momentum", 0.9, "heavy-ball momentum (torch convention), > 0", float, "unit"),
            HParam("weight_decay", 0.0, "L2 weight decay (at theta_t)", float, "nonneg"),
        ),
    ),
    lambda named, h: XGradSGD([p for _, p in named], **h),
    _validate_sgd,
)

register(
    OptimizerSpec(
        name="xgrad_adam",
        family="weight-prediction",
        source="sgdlab",
        summary=(
            "XGrad over Adam: gradient at theta - s lr m_hat/(sqrt(v_hat)+eps) (bias-corrected, from the "
            "state before the step), then torch Adam's update; step 1 has no prediction." + _LOOP
        ),
        paper=_PAPER,
        hparams=_adam_hparams(0.0, "L2 weight decay (at theta_t)"),
    ),
    lambda named, h: XGradAdam([p for _, p in named], **h),
)

register(
    OptimizerSpec(
        name="xgrad_adamw",
        family="weight-prediction",
        source="sgdlab",
        summary=(
            "XGrad over AdamW: gradient at theta - s lr m_hat/(sqrt(v_hat)+eps) (decay term not in the "
            "prediction), then torch AdamW's update; step 1 has no prediction." + _LOOP
        ),
        paper=_PAPER,
        hparams=_adam_hparams(0.01, "decoupled weight decay p <- p - lr wd p (at theta_t)"),
    ),
    lambda named, h: XGradAdamW([p for _, p in named], **h),
)
