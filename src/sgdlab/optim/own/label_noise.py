"""Label-noise SGD: plain SGD on targets freshly corrupted at every step.

Blanc, Gupta, Valiant, Valiant 2020, "Implicit regularization for deep neural networks driven by an
Ornstein-Uhlenbeck like process"; Li, Wang, Arora 2022, "What Happens after SGD Reaches Zero Loss?
A Mathematical Framework": near the zero-loss manifold label noise drives a slow drift that
decreases tr(Hessian).

Why own code: no library ships it; the optimizer is torch SGD, the method is the target noise, which
the training loop applies to every minibatch through :meth:`LabelNoiseSGD.perturb_targets`.
"""

from __future__ import annotations

import torch

from ..registry import HParam, OptimizerConfigError, OptimizerSpec, register


class LabelNoiseSGD(torch.optim.SGD):
    """torch SGD (optional heavy-ball momentum, torch convention) plus target corruption.

    ``task="classification"``: each label is, with probability ``p``, replaced by a class drawn
    uniformly from the *other* ``num_classes - 1`` classes, so a fraction ``p`` of the labels
    changes in expectation. ``task="regression"``: ``y~ = y + sigma * xi``, ``xi ~ N(0, I)``.
    """

    def __init__(
        self,
        params,
        *,
        lr,
        momentum=0.0,
        weight_decay=0.0,
        task="classification",
        p=0.1,
        sigma=0.1,
        num_classes=None,
    ):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.task, self.p, self.sigma, self.num_classes = task, p, sigma, num_classes

    def perturb_targets(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Fresh noisy copy of targets ``y`` (``(B,)`` labels or ``(B, ...)`` real targets).

        Random numbers come only from ``generator`` (drawn on its device, moved to ``y``'s).
        """
        dev = generator.device
        if self.task == "classification":
            if y.is_floating_point():
                raise TypeError("label_noise_sgd (classification): targets must be integer labels")
            flip = torch.rand(y.shape, generator=generator, device=dev) < self.p  # (B,)
            # uniform over the C-1 other classes: shift by 1..C-1 modulo C
            shift = torch.randint(1, self.num_classes, y.shape, generator=generator, device=dev)
            flip, shift = flip.to(y.device), shift.to(y.device)
            noisy = (y + shift) % self.num_classes
            return torch.where(flip, noisy, y)
        noise = torch.randn(y.shape, generator=generator, device=dev, dtype=y.dtype)
        return y + self.sigma * noise.to(y.device)


def _validate(h: dict) -> None:
    if h["task"] == "classification" and (h["num_classes"] is None or h["num_classes"] < 2):
        raise OptimizerConfigError(
            f"optimizer 'label_noise_sgd': hparam 'num_classes' = {h['num_classes']!r} is invalid: "
            "task='classification' needs an integer >= 2"
        )


register(
    OptimizerSpec(
        name="label_noise_sgd",
        family="sde",
        source="sgdlab",
        summary=(
            "SGD on freshly noised targets. LOOP: apply opt.perturb_targets(y, generator) to every "
            "minibatch's targets before the loss (classification: prob p -> another uniform class, "
            "needs num_classes; regression: y + sigma*xi)"
        ),
        paper="Blanc et al. 2020; Li, Wang, Arora 2022 (What happens after SGD reaches zero loss?)",
        hparams=(
            HParam("lr", 0.1, "learning rate", float, "positive"),
            HParam("momentum", 0.0, "heavy-ball momentum (torch convention)", float, "unit"),
            HParam("weight_decay", 0.0, "L2 weight decay", float, "nonneg"),
            HParam(
                "task",
                "classification",
                "kind of targets",
                str,
                choices=("classification", "regression"),
            ),
            HParam("p", 0.1, "classification: probability of replacing a label", float, "prob"),
            HParam(
                "sigma",
                0.1,
                "regression: std of the additive Gaussian label noise",
                float,
                "nonneg",
            ),
            HParam(
                "num_classes",
                None,
                "classification: number of classes C",
                int,
                "posint",
                optional=True,
            ),
        ),
    ),
    lambda named, h: LabelNoiseSGD([p for _, p in named], **h),
    _validate,
)
