"""Input checks run by :func:`sgdlab.train.train` before anything changes: config vs data,
optimizer name and hparams, and one probe forward that turns shape errors into clear messages."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sgdlab.device import resolve_device  # noqa: F401  (re-exported: the loop's device)
from sgdlab.optim import batches_per_step, get_spec, resolve_hparams

from .config import DataTensors, LoopConfig
from .evaluate import loss_fn


def check_data(data: Any, cfg: LoopConfig) -> None:
    """Tensors present, sample counts and shapes consistent, batch fits, targets fit the task."""
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if not isinstance(getattr(data, key, None), torch.Tensor):
            got = type(getattr(data, key, None)).__name__
            raise TypeError(f"data.{key} must be a torch.Tensor, got {got}")
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data: x_{split} has {x.shape[0]} samples, y_{split} {y.shape[0]}")
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        raise ValueError(
            f"data: train samples have shape {tuple(data.x_train.shape[1:])}, test "
            f"samples {tuple(data.x_test.shape[1:])}"
        )
    n = data.x_train.shape[0]
    if cfg.batch_size > n:
        raise ValueError(f"LoopConfig: batch_size={cfg.batch_size} exceeds the number of training samples ({n})")
    for split in ("train", "test"):
        y = getattr(data, f"y_{split}")
        if cfg.task == "classification" and (y.is_floating_point() or y.is_complex()):
            raise ValueError(
                f"task='classification' needs integer class labels, but y_{split} has dtype "
                f"{y.dtype} (regression targets? set task='regression')"
            )
        if cfg.task == "regression" and not y.is_floating_point():
            raise ValueError(
                f"task='regression' needs floating-point targets, but y_{split} has "
                f"dtype {y.dtype} (class labels? set task='classification')"
            )


def probe_model(model: nn.Module, data: DataTensors, cfg: LoopConfig) -> None:
    """One eval-mode forward on 2 samples: shape mismatches surface here, naming both shapes. Warns when
    gradient accumulation meets BatchNorm (ghost BatchNorm: the update is no longer the full-batch one)."""
    name, shape = type(model).__name__, tuple(data.x_train.shape[1:])
    if cfg.micro_batches > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        import warnings

        warnings.warn(
            f"physical_batch_size={cfg.physical_batch_size} < batch_size={cfg.batch_size} with BatchNorm in "
            f"{name}: ghost BatchNorm. Each of the {cfg.micro_batches} micro-batches is normalised with its own "
            "statistics and updates the running statistics once, so the update differs from the full-batch "
            "one (gradient accumulation is exact only without BatchNorm)",
            UserWarning,
            stacklevel=3,
        )
    was_training = model.training
    model.eval()  # eval: BatchNorm must not update its running statistics here
    try:
        with torch.no_grad():
            out = model(data.x_train[:2])
    except (RuntimeError, ValueError, IndexError) as e:
        raise ValueError(f"model {name} cannot take dataset samples of shape {shape}: {e}") from None
    finally:
        model.train(was_training)
    y = data.y_train[:2]
    if cfg.task == "classification":
        lo, hi = (
            int(torch.minimum(data.y_train.min(), data.y_test.min())),
            int(torch.maximum(data.y_train.max(), data.y_test.max())),
        )
        if out.dim() != 2 or lo < 0 or hi >= out.shape[1]:
            raise ValueError(
                f"model {name} outputs shape {tuple(out.shape[1:])} per sample but the dataset "
                f"(samples {shape}) has labels in [{lo}, {hi}]; classification needs "
                "(num_classes,) logits with num_classes > max label"
            )
    else:
        try:
            loss_fn("regression", out, y)
        except RuntimeError as e:
            raise ValueError(
                f"model {name} outputs shape {tuple(out.shape[1:])} per sample, targets have "
                f"shape {tuple(y.shape[1:])}: {e}"
            ) from None


def check_optimizer(name: str, hparams: dict | None, task: str) -> tuple[Any, dict, int]:
    """(spec, resolved hparams, batches per step); the registry's errors name bad names/keys."""
    spec = get_spec(name)  # unknown names raise here, naming them
    resolved = resolve_hparams(name, hparams)  # unknown / invalid hparams raise here
    lr = resolved.get("lr")
    if lr is None or not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"optimizer {name!r}: hparam 'lr'={lr!r} must be a finite number > 0")
    if "task" in resolved and resolved["task"] != task:  # e.g. label-noise SGD's noise model
        raise ValueError(
            f"optimizer {name!r}: hparam 'task'={resolved['task']!r} differs from LoopConfig task={task!r}"
        )
    return spec, resolved, batches_per_step(name, resolved)
