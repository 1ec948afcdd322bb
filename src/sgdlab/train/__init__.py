"""sgdlab.train — the training engine.

>>> from sgdlab.train import LoopConfig, DataTensors, train
>>> result = train(model, "sgd", {"lr": 0.1}, data, LoopConfig(steps=100))   # doctest: +SKIP

See :func:`train` for the step protocol, metrics, checkpoints and divergence handling.
"""

from .batching import EpochSampler
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DataTensors, LoopConfig, TrainResult
from .divergence import find_divergence
from .evaluate import evaluate, loss_fn
from .loop import resolve_device, train
from .schedules import KINDS, Schedule, lr_at, lr_factor

__all__ = [
    "KINDS",
    "DataTensors",
    "EpochSampler",
    "LoopConfig",
    "Schedule",
    "TrainResult",
    "evaluate",
    "find_divergence",
    "load_checkpoint",
    "loss_fn",
    "lr_at",
    "lr_factor",
    "resolve_device",
    "save_checkpoint",
    "train",
]
