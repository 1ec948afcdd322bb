"""One registry of optimizer families: name -> (spec, factory).

Every optimizer is built through one signature, ``build_optimizer(name, named_params, hparams)``,
and stepped by the training loop through one protocol::

    loss = optimizer.step(closure)      # closure(k: int = 0) -> detached scalar loss

where ``closure(k)`` zeroes grads, runs forward on the k-th independent minibatch drawn for this
step (``0 <= k < batches_per_step(name, hparams)``), calls ``backward`` (with
``create_graph=True`` when ``spec.create_graph``) and returns the loss. ``closure(k, backward=False)``
evaluates the same minibatch's loss without a graph and leaves ``.grad`` alone (zeroth-order families).

Hyper-parameters are validated *before* anything is built: unknown keys, wrong types and values out
of range raise :class:`OptimizerConfigError` (a ``ValueError``) naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "HParam",
    "OptimizerSpec",
    "OptimizerConfigError",
    "UnknownOptimizerError",
    "register",
    "get_spec",
    "list_specs",
    "resolve_hparams",
    "build_optimizer",
    "batches_per_step",
]


class OptimizerConfigError(ValueError):
    """Bad optimizer name or hyper-parameter; the message names the key, the value and what is allowed."""


class UnknownOptimizerError(OptimizerConfigError, KeyError):
    """Unknown optimizer name (a ValueError that ``except KeyError`` also catches)."""

    __str__ = BaseException.__str__  # KeyError would repr() the message


# Named range checks an HParam may carry. Each maps to (predicate, description of allowed values).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "": (lambda v: True, "any value"),
    "positive": (lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
    "nonneg": (lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0"),
    "nonneg_or_inf": (lambda v: v >= 0, "a number >= 0 (inf allowed)"),
    "unit": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "open_unit": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "prob": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "posint": (lambda v: v >= 1, "an integer >= 1"),
    "nonnegint": (lambda v: v >= 0, "an integer >= 0"),
    "ge1": (lambda v: v >= 1 and math.isfinite(v), "a finite number >= 1"),
    "betas": (lambda v: all(0 <= b < 1 for b in v), "a tuple of numbers each in [0, 1)"),
    "finite": (lambda v: math.isfinite(v), "a finite number"),
}


@dataclass(frozen=True)
class HParam:
    """One accepted hyper-parameter.

    ``kind`` is the Python type of the value (float/int/bool/tuple/str). ``check`` names a range
    rule from ``_CHECKS`` ("positive", "unit", "betas", ...). ``choices`` restricts str values.
    ``optional`` allows ``None`` (e.g. "no cap"). ``length`` fixes a tuple's length.
    """

    name: str
    default: Any
    doc: str
    kind: type
    check: str = ""
    choices: tuple[str, ...] = ()
    optional: bool = False
    length: int | None = None

    def validate(self, value: Any, optimizer: str) -> Any:
        """Coerce ``value`` to ``kind`` and check its range; raise naming key and value."""
        where = f"optimizer {optimizer!r}: hparam {self.name!r}"
        if value is None:
            if self.optional:
                return None
            raise OptimizerConfigError(f"{where} = None is not allowed (expected {self.kind.__name__})")
        value = self._coerce(value, where)
        if self.choices and value not in self.choices:
            raise OptimizerConfigError(f"{where} = {value!r} is not one of {list(self.choices)}")
        pred, allowed = _CHECKS[self.check]
        try:
            ok = pred(value)
        except TypeError:
            ok = False
        if not ok:
            raise OptimizerConfigError(f"{where} = {value!r} is invalid: expected {allowed}")
        return value

    def _coerce(self, value: Any, where: str) -> Any:
        kind = self.kind
        bad = OptimizerConfigError(f"{where} = {value!r} has type {type(value).__name__}, expected {kind.__name__}")
        if kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if isinstance(value, bool):  # bool is an int subclass; True as an lr is a config bug
            raise bad
        if kind is float:
            if not isinstance(value, (int, float)):
                raise bad
            return float(value)
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if not isinstance(value, int):
                raise bad
            return value
        if kind is tuple:
            if not isinstance(value, (tuple, list)):
                raise bad
            if self.length is not None and len(value) != self.length:
                raise OptimizerConfigError(f"{where} = {value!r} must have length {self.length}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                raise bad
            return tuple(float(v) for v in value)
        if kind is str:
            if not isinstance(value, str):
                raise bad
            return value
        raise TypeError(f"{where}: unsupported HParam kind {kind!r}")


@dataclass(frozen=True)
class OptimizerSpec:
    """What the training loop needs to know about one registered optimizer family.

    ``batches_per_step`` is an int or a function of the *resolved* hparams giving how many
    independent minibatches one ``step(closure)`` consumes (svag: 2, local_sgd: K, else 1).
    ``create_graph``: the closure must call ``backward(create_graph=True)`` (AdaHessian).
    ``train_eval``: call ``opt.train()`` before training steps and ``opt.eval()`` before any
    evaluation or checkpoint evaluation (schedule-free methods).
    ``per_sample_grads``: ``step`` needs the per-sample gradients of the minibatch (DP-SGD's clipping),
    recorded by hooks on the model's layers. Whoever builds it from a model calls
    ``optimizer.attach(model, batch_size=..., n_train=...)`` before the first step and ``detach()`` after
    (the training loop does; ``attach(model)`` alone suffices for unit tests). Its ``step(closure)`` records
    them only while it runs the closure, so evaluations and probes see the plain model.
    """

    name: str
    family: str
    source: str
    summary: str
    paper: str
    hparams: tuple[HParam, ...]
    batches_per_step: Callable[[Mapping], int] | int = 1
    create_graph: bool = False
    train_eval: bool = False
    per_sample_grads: bool = False

    def hparam(self, key: str) -> HParam:
        for h in self.hparams:
            if h.name == key:
                return h
        raise KeyError(key)

    @property
    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}


# factory(named_params: list[(name, Parameter)], resolved hparams) -> Optimizer
Factory = Callable[[list[tuple[str, nn.Parameter]], dict], torch.optim.Optimizer]
# extra cross-field validation on resolved hparams (raise OptimizerConfigError)
Validator = Callable[[dict], None]

_REGISTRY: dict[str, tuple[OptimizerSpec, Factory, Validator | None]] = {}
_SOURCES = ("torch.optim", "pytorch_optimizer", "opacus", "sgdlab")


def register(spec: OptimizerSpec, factory: Factory, validator: Validator | None = None) -> None:
    """Add one optimizer family. Names are unique; every spec accepts ``lr``."""
    if spec.name in _REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    if spec.source not in _SOURCES:
        raise ValueError(f"optimizer {spec.name!r}: source {spec.source!r} not in {_SOURCES}")
    names = [h.name for h in spec.hparams]
    if "lr" not in names or len(set(names)) != len(names):
        raise ValueError(f"optimizer {spec.name!r}: hparams must contain 'lr' once, got {names}")
    _REGISTRY[spec.name] = (spec, factory, validator)


def _entry(name: str) -> tuple[OptimizerSpec, Factory, Validator | None]:
    if not isinstance(name, str):
        raise OptimizerConfigError(f"optimizer name must be a str, got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownOptimizerError(
            f"unknown optimizer {name!r}.{hint} Registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_spec(name: str) -> OptimizerSpec:
    """Spec of a registered optimizer; unknown names raise naming it and suggesting close names."""
    return _entry(name)[0]


def list_specs() -> list[OptimizerSpec]:
    """All registered specs, sorted by name."""
    return [_REGISTRY[k][0] for k in sorted(_REGISTRY)]


def resolve_hparams(name: str, hparams: Mapping | None = None) -> dict:
    """Validated hparams with defaults filled in.

    Unknown keys raise naming the key and listing the accepted ones; invalid values (lr <= 0,
    negative momentum, betas outside [0, 1), ...) raise naming key and value.
    """
    spec, _, validator = _entry(name)
    hparams = dict(hparams or {})
    accepted = [h.name for h in spec.hparams]
    unknown = [k for k in hparams if k not in accepted]
    if unknown:
        raise OptimizerConfigError(f"optimizer {name!r}: unknown hparam(s) {unknown}; accepted: {accepted}")
    out = {}
    for h in spec.hparams:
        out[h.name] = h.validate(hparams.get(h.name, h.default), name)
    if validator is not None:
        validator(out)
    return out


def batches_per_step(name: str, hparams: Mapping | None = None) -> int:
    """Independent minibatches one ``step(closure)`` of this optimizer consumes."""
    spec = get_spec(name)
    bps = spec.batches_per_step
    if callable(bps):
        bps = bps(resolve_hparams(name, hparams))
    return int(bps)


def build_optimizer(
    name: str,
    named_params: Iterable[tuple[str, nn.Parameter]],
    hparams: Mapping | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` over ``named_params`` (e.g. ``model.named_parameters()``).

    Parameters with ``requires_grad=False`` are skipped. Hparams are validated first.
    """
    _, factory, _ = _entry(name)
    resolved = resolve_hparams(name, hparams)
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if not named:
        raise OptimizerConfigError(f"optimizer {name!r}: no trainable parameters given")
    seen: set[int] = set()
    for n, p in named:
        if id(p) in seen:
            raise OptimizerConfigError(f"optimizer {name!r}: parameter {n!r} given twice")
        seen.add(id(p))
    return factory(named, resolved)
