"""Linear-stability thresholds that sharpness is compared with (Edge of Stability).

On a quadratic with curvature ``lambda`` (an eigenvalue of the Hessian), the iteration is stable
iff ``lambda`` is below (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs
at the Edge of Stability"; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability"):

=====================================  ======================================================
gradient descent / SGD, no momentum    ``2 / lr``
heavy-ball momentum (torch convention  ``(2 + 2 beta) / lr``
``v = beta v + g``, ``theta -= lr v``)
Nesterov (torch ``nesterov=True``)     ``(2 + 2 beta) / ((1 + 2 beta) lr)``
Adam/AdamW (preconditioned sharpness   ``(2 + 2 beta1) / ((1 - beta1) lr)``
``lambda_max(P^{-1/2} H P^{-1/2})``)
=====================================  ======================================================

torch's SGD ``dampening`` d scales the step by ``(1 - d)``, so the heavy-ball threshold divides
by ``(1 - d)``.
"""

from __future__ import annotations

import torch

KINDS = ("gd", "sgd", "momentum", "heavy_ball", "nesterov", "adam", "adamw")


def optimizer_kind(optimizer) -> tuple[str, float, float, float] | None:
    """(kind, lr, beta, dampening) of a torch optimizer, or None if no threshold is known."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return None
    g = optimizer.param_groups[0]
    lr = float(g["lr"])
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam", lr, float(g["betas"][0]), 0.0
    if isinstance(optimizer, torch.optim.SGD):  # incl. sgdlab.optim.wrappers.SGD (same update)
        beta = float(g.get("momentum", 0.0))
        if beta == 0.0:
            return "sgd", lr, 0.0, 0.0
        kind = "nesterov" if g.get("nesterov", False) else "momentum"
        return kind, lr, beta, float(g.get("dampening", 0.0))
    return None


def stability_threshold(optimizer_name_or_kind, lr: float | None = None, beta1: float | None = None) -> float:
    """Sharpness above which the optimizer is unstable on the local quadratic model.

    Args:
        optimizer_name_or_kind: one of ``"gd"``, ``"sgd"``, ``"momentum"``/``"heavy_ball"``,
            ``"nesterov"``, ``"adam"``, ``"adamw"``, or a ``torch.optim.SGD``/``Adam``/``AdamW``
            instance (its first param group gives lr, momentum/beta1, nesterov, dampening).
        lr: learning rate > 0 (default: the optimizer instance's).
        beta1: momentum (SGD kinds; ``"sgd"`` with beta1 > 0 means heavy ball) or Adam's
            beta1 (default 0.9 for Adam).

    Returns:
        ``2/lr`` (GD), ``(2+2b)/lr`` (heavy ball), ``(2+2b)/((1+2b) lr)`` (Nesterov) or
        ``(2+2b1)/((1-b1) lr)`` (Adam, for the preconditioned sharpness).
    """
    damp = 0.0
    if isinstance(optimizer_name_or_kind, torch.optim.Optimizer):
        info = optimizer_kind(optimizer_name_or_kind)
        if info is None:
            raise ValueError(
                f"no stability threshold known for {type(optimizer_name_or_kind).__name__}; "
                f"supported: torch.optim.SGD, Adam, AdamW or a kind in {KINDS}"
            )
        kind, opt_lr, opt_beta, damp = info
        lr = opt_lr if lr is None else lr
        beta1 = opt_beta if beta1 is None else beta1
    elif isinstance(optimizer_name_or_kind, str):
        kind = optimizer_name_or_kind.lower()
        if kind not in KINDS:
            raise ValueError(f"optimizer kind must be one of {KINDS}, got {optimizer_name_or_kind!r}")
    else:
        raise TypeError(f"expected a kind name or a torch optimizer, got {optimizer_name_or_kind!r}")
    if lr is None or not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    lr = float(lr)
    if kind in ("adam", "adamw"):
        b = 0.9 if beta1 is None else float(beta1)
        if not 0 <= b < 1:
            raise ValueError(f"beta1 must be in [0, 1), got {beta1!r}")
        return (2 + 2 * b) / ((1 - b) * lr)
    b = 0.0 if beta1 is None else float(beta1)
    if not 0 <= b < 1:
        raise ValueError(f"beta1 (momentum) must be in [0, 1), got {beta1!r}")
    if kind in ("momentum", "heavy_ball") and beta1 is None:
        raise ValueError(f"kind {kind!r} needs beta1 (the momentum)")
    if kind == "nesterov":
        return (2 + 2 * b) / ((1 + 2 * b) * lr)
    return (2 + 2 * b) / (lr * (1 - damp))
