"""Loss functions of the two tasks and chunked, sync-once evaluation."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def loss_fn(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss over the batch: cross-entropy on logits (N, C) vs labels (N,) for classification;
    mean squared error ``mean((out - y)^2)`` for regression, with (N, 1) outputs matched to (N,)
    targets."""
    if task == "classification":
        return F.cross_entropy(out, y)
    if out.dim() == y.dim() + 1 and out.shape[-1] == 1:
        out = out.squeeze(-1)  # (N, 1) -> (N,)
    if out.shape != y.shape:
        raise RuntimeError(f"output shape {tuple(out.shape)} does not match target shape {tuple(y.shape)}")
    # the mean squared error written out: F.mse_loss's forward-mode AD formula writes into an immutable
    # ZeroTensor, which breaks forward-over-reverse Hessian-vector products (sgdlab.hessian)
    return ((out - y.to(out.dtype)) ** 2).mean()


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    batch_size: int = 2048,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``model`` on ``(x, y)``.

    Runs in eval mode under ``torch.no_grad`` in chunks of ``batch_size``, accumulates sums on the
    device and syncs with the host once; the model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                with autocast if autocast is not None else contextlib.nullcontext():
                    out = model(xb)
                    loss = loss_fn(task, out, yb)
                loss_sum += loss.double() * xb.shape[0]  # mean -> sum over the chunk
                if task == "classification":
                    correct += (out.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    n = x.shape[0]
    if task == "classification":
        total_loss, total_correct = torch.stack([loss_sum, correct.double()]).tolist()
        return {"loss": total_loss / n, "acc": total_correct / n}
    return {"loss": loss_sum.item() / n}
