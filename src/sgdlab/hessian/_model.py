"""Shared machinery of the model-based operators (Hessian, Gauss-Newton).

* :func:`probe_state` — context manager that sets the probe's module modes and restores the
  caller's modes, BatchNorm flags and the global RNG state on exit.
* :class:`ModelOperator` — validates inputs, selects a parameter block, snapshots parameters and
  buffers (copies: later optimizer steps do not change the operator, and the caller's tensors are
  never touched: no ``.grad`` writes, no ``requires_grad`` flips, no running-stat updates), splits
  the probe set into physical batches and evaluates the per-batch weighted loss through
  ``torch.func.functional_call``.

The loss over the probe set is the mean over all ``N`` samples, assembled exactly from physical
batches as ``L = sum_b (B_b / N) * loss_fn(f(X_b), y_b)`` where ``loss_fn`` returns the batch mean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .operators import LinearOperator

BN_MODES = ("eval", "train")
_BN = nn.modules.batchnorm._BatchNorm


class NonFiniteLossError(ValueError):
    """The loss at the probe point is NaN or infinite, so its Hessian is undefined."""


@contextlib.contextmanager
def probe_state(model: nn.Module, bn_mode: str = "eval", device=None) -> Iterator[None]:
    """Temporarily put ``model`` in probe mode; restore everything on exit.

    ``bn_mode="eval"``: every module in eval mode (BatchNorm uses running statistics, dropout off).
    ``bn_mode="train"``: BatchNorm modules use batch statistics (train mode with
    ``track_running_stats`` off, so running stats and ``num_batches_tracked`` are not updated);
    every other module is in eval mode (dropout off keeps the operator deterministic).

    Grad mode is enabled inside (probes may be called under ``torch.no_grad()``), and the global
    CPU (and ``device``'s CUDA) RNG state is forked so nothing the forward pass draws leaks out.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    bn_flags = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BN)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    rng_devices = []
    if dev.type == "cuda":
        rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
            model.eval()
            if bn_mode == "train":
                for m, _ in bn_flags:
                    m.train()
                    m.track_running_stats = False
            yield
    finally:
        for m, training in modes:
            m.training = training
        for m, flag in bn_flags:
            m.track_running_stats = flag


def select_params(model: nn.Module, params) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of the probed block.

    ``params=None``: every parameter with ``requires_grad``. A string or a sequence of strings:
    each selects the parameter of that exact name or every parameter under that module prefix
    (``"0"`` selects ``"0.weight"`` and ``"0.bias"``).
    """
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError(
                "model has no trainable parameters (every requires_grad is False); "
                "pass params=[names] to probe frozen ones explicitly"
            )
        return chosen
    keys = [params] if isinstance(params, str) else list(params)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"params must be None, a name or a sequence of names, got {params!r}")
    chosen, seen = [], set()
    for key in keys:
        hits = [(n, p) for n, p in named if n == key or n.startswith(key + ".")]
        if not hits:
            raise ValueError(f"params entry {key!r} matches no parameter; available: {[n for n, _ in named]}")
        for n, p in hits:
            if n not in seen:
                seen.add(n)
                chosen.append((n, p))
    return chosen


def check_data(data) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data must be a tuple (X, y) of tensors, got {type(data).__name__}")
    X, y = data
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("data must be a tuple (X, y) of tensors")
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"data X and y must have the same, non-zero length; got {X.shape[0]} and {y.shape[0]}")
    return X, y


class ModelOperator(LinearOperator):
    """Base of operators defined by (model, loss_fn, data) at the current parameters.

    Args:
        model: the network; never modified (its tensors are copied into a snapshot).
        loss_fn: ``loss_fn(outputs, y) -> scalar`` mean over the batch (e.g.
            ``torch.nn.functional.cross_entropy``).
        data: ``(X, y)`` tensors, the probe set (use :func:`probe_subset` to fix one).
        params: block to differentiate (see :func:`select_params`); default all trainable.
        batch_size: physical batch; default ``N`` (one batch).
        bn_mode: ``"eval"`` or ``"train"`` (see :func:`probe_state`); no default guessing.
        device: where to compute; default the model's device. Data on another device is an error
            unless ``device`` is given (then both are copied there).
        dtype: compute dtype; default the probed parameters' dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Sequence[torch.Tensor],
        *,
        params=None,
        batch_size: int | None = None,
        bn_mode: str = "eval",
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, y)")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        X, y = check_data(data)
        chosen = select_params(model, params)
        model_device = chosen[0][1].device
        if device is None:
            if X.device != model_device or y.device != model_device:
                raise ValueError(
                    f"data is on {X.device}/{y.device} but the model is on {model_device}; "
                    "move them to one device or pass device=..."
                )
            device = model_device
        device = torch.device(device)
        dtype = chosen[0][1].dtype if dtype is None else dtype
        N = X.shape[0]
        if batch_size is None:
            batch_size = N
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")

        self.model, self.loss_fn, self.bn_mode = model, loss_fn, bn_mode
        self.device, self.dtype = device, dtype
        self.param_names = [n for n, _ in chosen]
        self.params = [p for _, p in chosen]  # the caller's Parameter objects (for Adam state)
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.n = sum(self.numels)

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(device)
            return (t.to(dtype) if t.is_floating_point() else t).clone()

        # Snapshot (copies): theta is the point the operator lives at; _fixed holds every other
        # parameter and buffer, so the forward pass never reads or writes the caller's tensors.
        self._theta = [cast(p) for p in self.params]
        chosen_names = set(self.param_names)
        self._fixed = {n: cast(p) for n, p in model.named_parameters() if n not in chosen_names}
        self._fixed.update({n: cast(b) for n, b in model.named_buffers()})
        self._X = X.to(device, dtype) if X.is_floating_point() else X.to(device)
        self._y = y.to(device, dtype) if y.is_floating_point() else y.to(device)
        self.n_samples = N
        self.batches = [(s, min(s + batch_size, N)) for s in range(0, N, batch_size)]

    # ---------------------------------------------------------------------------- helpers ---
    def context(self):
        """The probe-mode context for this operator's model (see :func:`probe_state`)."""
        return probe_state(self.model, self.bn_mode, self.device)

    def forward(self, theta: Sequence[torch.Tensor], b: int) -> torch.Tensor:
        """Model outputs on physical batch ``b`` with the probed block set to ``theta``."""
        s, e = self.batches[b]
        tensors = dict(self._fixed)
        tensors.update(zip(self.param_names, theta))
        return functional_call(self.model, tensors, (self._X[s:e],), strict=False)

    def batch_loss(self, outputs: torch.Tensor, b: int) -> torch.Tensor:
        """Batch-mean loss weighted by ``B_b / N``; summing over batches gives the mean loss."""
        s, e = self.batches[b]
        return self.loss_fn(outputs, self._y[s:e]) * ((e - s) / self.n_samples)

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (None = zeros) into a flat (n,) vector."""
        return torch.cat(
            [
                (torch.zeros(n, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1))
                for t, n in zip(tensors, self.numels)
            ]
        )

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat (n,) vector into views shaped like the probed parameters."""
        return [c.view(s) for c, s in zip(v.split(self.numels), self.shapes)]

    def check_loss(self, loss: float) -> float:
        if not torch.isfinite(torch.tensor(loss)):
            raise NonFiniteLossError(
                f"loss at the probe point is not finite (loss={loss}); the Hessian is undefined "
                "there (diverged run or bad data?)"
            )
        return loss

    def compute_loss(self) -> float:
        """Mean loss over the probe set at the snapshot (no graph kept)."""
        total = 0.0
        with self.context(), torch.no_grad():
            for b in range(len(self.batches)):
                total += float(self.batch_loss(self.forward(self._theta, b), b))
        return total
