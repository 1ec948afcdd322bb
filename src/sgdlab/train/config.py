"""Typed, frozen inputs and outputs of the training loop: LoopConfig, DataTensors, TrainResult."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .schedules import Schedule

TASKS = ("classification", "regression")


def _int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"LoopConfig: {name}={value!r} must be an int >= {lo}")


@dataclass(frozen=True)
class LoopConfig:
    """Everything the loop needs besides model, optimizer and data.

    steps: optimizer updates (> 0); each uses ``batches_per_step`` minibatches of ``batch_size``.
    batch_size: the algorithm's batch B. physical_batch_size: micro-batch size that must divide B
    (None = B); gradients are accumulated so one update equals the full-batch update, except with
    BatchNorm (ghost BatchNorm: each micro-batch uses its own statistics; the loop warns).
    schedule: lr schedule (a :class:`Schedule` or a dict of its fields).
    log_every: steps between ``train/loss``, ``train/acc``, ``lr`` points (and divergence checks).
    eval_every: steps between test-set evaluations (0 = only the final one).
    eval_val: also evaluate the validation set (``DataTensors.x_val``) at each eval point, as ``val/*``
    (time-to-target scoring reads these curves; the final validation point is the caller's).
    checkpoint_every: steps between checkpoints (0 = only the final one); needs a checkpoint path.
    blowup_factor: train loss above ``blowup_factor * initial loss`` (or non-finite) = divergence.
    seed: seeds the batch order / label noise generator and the (forked) global RNG.
    device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    amp_bf16: bfloat16 autocast for forward passes (CUDA only; ignored with a warning on CPU).
    compile: ``torch.compile`` the model (CUDA only; ignored with a warning on CPU).
    task: "classification" (cross-entropy, int labels) or "regression" (mean squared error).
    final_eval: evaluate train and test sets fully at the end (TrainResult.metrics).
    sampling: "epoch" (each epoch a fresh permutation, no repeats within it) or "iid" (uniform with
    replacement, as the SDE theory assumes). Families drawing several minibatches per step (SVAG) draw
    each from its own independent stream.
    """

    steps: int
    batch_size: int = 128
    physical_batch_size: int | None = None
    schedule: Schedule = field(default_factory=Schedule)
    log_every: int = 50
    eval_every: int = 0
    eval_val: bool = False
    eval_batch_size: int = 2048
    checkpoint_every: int = 0
    blowup_factor: float = 1e4
    seed: int = 0
    device: str = "auto"
    amp_bf16: bool = False
    compile: bool = False
    task: str = "classification"
    final_eval: bool = True
    sampling: str = "epoch"

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            object.__setattr__(self, "schedule", Schedule(**self.schedule))
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"LoopConfig: schedule={self.schedule!r} must be a Schedule or a dict")
        _int("steps", self.steps, 1)
        _int("batch_size", self.batch_size, 1)
        _int("log_every", self.log_every, 1)
        _int("eval_every", self.eval_every, 0)
        if not isinstance(self.eval_val, bool):
            raise TypeError(f"LoopConfig: eval_val={self.eval_val!r} must be a bool")
        _int("eval_batch_size", self.eval_batch_size, 1)
        _int("checkpoint_every", self.checkpoint_every, 0)
        _int("seed", self.seed, 0)
        pb = self.physical_batch_size
        if pb is not None:
            _int("physical_batch_size", pb, 1)
            if pb > self.batch_size or self.batch_size % pb:
                raise ValueError(
                    f"LoopConfig: physical_batch_size={pb} must divide batch_size={self.batch_size} (and be at most it)"
                )
        if not (isinstance(self.blowup_factor, (int, float)) and self.blowup_factor > 1):
            raise ValueError(
                f"LoopConfig: blowup_factor={self.blowup_factor!r} must be > 1 (math.inf disables the check)"
            )
        if self.sampling not in ("epoch", "iid"):
            raise ValueError(f"LoopConfig: sampling={self.sampling!r} is not one of ['epoch', 'iid']")
        if self.task not in TASKS:
            raise ValueError(f"LoopConfig: task={self.task!r} is not one of {list(TASKS)}")
        if not isinstance(self.device, str):
            raise TypeError(f"LoopConfig: device={self.device!r} must be a str like 'auto', 'cpu'")

    @property
    def micro_batches(self) -> int:
        """Number of physical micro-batches per algorithmic batch."""
        return self.batch_size // (self.physical_batch_size or self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (nested schedule as dict); ``LoopConfig(**d)`` rebuilds it."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataTensors:
    """A dataset on its device: ``x_*`` of shape (N, *sample_shape), ``y_*`` of (N,) or (N, k).

    Classification labels are integer class indices; regression targets are floating point.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None  # evaluated at eval points as val/* when LoopConfig.eval_val
    y_val: torch.Tensor | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (no batch dimension)."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`sgdlab.train.train`.

    status: "finished" or "diverged"; reason: why it diverged (names the step and loss), else None.
    steps_done: updates completed (including those before a resume).
    metrics: final full-dataset evaluations ``train/loss``, ``train/acc``, ``test/loss``,
    ``test/acc`` (``*/acc`` only for classification; empty if ``final_eval=False``).
    wall_time_s: whole call; samples_per_s: training samples per second of the update loop in this
    call (periodic eval, logging and checkpoints included). resumed_from: step loaded (0 = fresh).
    quarantined: where a corrupt checkpoint found at ``checkpoint_path`` was moved (the run then started
    from step 0), else None.
    """

    status: str
    reason: str | None
    steps_done: int
    metrics: dict[str, float]
    wall_time_s: float
    samples_per_s: float
    resumed_from: int = 0
    quarantined: str | None = None
