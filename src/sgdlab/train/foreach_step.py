"""One update for a whole population of ``torch.optim`` SGD / Adam / AdamW optimizers, in ``torch._foreach_*`` calls.

Why this exists: a population (``population.py``) shares one vmapped forward/backward, but then stepped each
member's optimizer in turn. For small models that per-member ``optimizer.step`` (Python dispatch, profiler
hooks, one small kernel per tensor) was ~40% of a population step (``bench/bench_population.py``, diagonal
linear nets). No library steps many independent ``torch.optim`` optimizers with *different* hyper-parameters
at once (``torch.optim``'s own foreach path takes one lr per call; pytorch-optimizer has no such mode), so this
module does it for the families the studies use most.

It is ``torch.optim``'s own single-tensor algorithm (torch 2.13 ``_single_tensor_sgd`` / ``_single_tensor_adam``),
op for op, applied with the foreach variant of each op to every tensor that shares the op's scalar
arguments (tensors are grouped by their member's hyper-parameters and, for Adam, its step count). On the CPU a
foreach op is a loop of the very same per-tensor kernel, so every member's parameters and state are
**bit-identical** to its own ``optimizer.step()`` (tested in float32 and float64). The state lives where
``torch.optim`` keeps it (``opt.state[p]``: ``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``), so
``state_dict()``, checkpoints and resume are those of the single run.

SVAG's optimizers (``svag``, ``svag_momentum``, ``svag_adam``: torch SGD / Adam whose step first combines two
minibatch gradients, ``a g0 + b g1``) take it too: :func:`foreach_step` gets each parameter's minibatch-0
gradient in ``first_grads`` and combines in foreach ops the way their ``accumulate_gradient`` does (tested bit for
bit against their ``step(closure)``).

Only plain configurations take this path (:func:`foreach_eligible`); anything else (amsgrad, maximize,
``foreach``/``fused``/``capturable``/``differentiable`` set, step hooks, several parameter groups, sparse
gradients) keeps the per-member ``step``.
"""

from __future__ import annotations

import functools
import inspect
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch.optim.optimizer import _get_scalar_dtype, _global_optimizer_post_hooks, _global_optimizer_pre_hooks

__all__ = ["foreach_eligible", "foreach_step", "two_batch"]

# the torch classes whose step is reproduced here (sgdlab's exact_load subclasses add only load_state_dict)
_KINDS = ((torch.optim.AdamW, "adam"), (torch.optim.Adam, "adam"), (torch.optim.SGD, "sgd"))


def _kind(opt: torch.optim.Optimizer) -> str | None:
    return _kind_of(type(opt))[0]


def two_batch(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` is an SVAG optimizer (sgdlab.optim.own.svag): its step combines the gradients of two
    minibatches, ``a g0 + b g1``, then takes the plain SGD / Adam step (:func:`foreach_step` with
    ``first_grads``)."""
    return _kind_of(type(opt))[1]


@functools.cache
def _kind_of(t: type) -> tuple[str | None, bool]:
    from sgdlab.optim.own.svag import _TwoBatchMixin

    # the classes that define step, nearest first; torch wraps each class's step in a profiling hook, so the
    # functions underneath are compared
    # (a subclass's own entry may be that profiling wrapper around the step it inherits: counted once)
    defining = list(dict.fromkeys(inspect.unwrap(c.__dict__["step"]) for c in t.__mro__ if "step" in c.__dict__))
    two = bool(defining) and defining[0] is inspect.unwrap(_TwoBatchMixin.step)
    own = defining[1] if two and len(defining) > 1 else defining[0] if defining else None
    for cls, kind in _KINDS:
        if issubclass(t, cls):
            return (kind, two) if own is inspect.unwrap(cls.step) else (None, False)
    return None, False


def foreach_eligible(opt: torch.optim.Optimizer) -> str | None:
    """Why ``opt`` cannot be stepped by :func:`foreach_step`, or None if it can."""
    kind = _kind(opt)
    if kind is None:
        return f"{type(opt).__name__} is not torch.optim SGD/Adam/AdamW with its own step"
    if len(opt.param_groups) != 1:
        return "more than one parameter group"
    g = opt.param_groups[0]
    for flag in ("maximize", "differentiable", "capturable", "fused", "foreach", "amsgrad"):
        if g.get(flag):
            return f"{flag}=True"
    if isinstance(g["lr"], torch.Tensor):
        return "a tensor learning rate"
    if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
        return "step hooks on the optimizer"
    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return "global optimizer step hooks"
    return None


def foreach_step(
    opts: Sequence[torch.optim.Optimizer], first_grads: Mapping[torch.Tensor, torch.Tensor | None] | None = None
) -> None:
    """Step every optimizer in ``opts`` (each :func:`foreach_eligible`) from the gradients on its parameters.

    Equivalent to ``for opt in opts: opt.step()``; parameters without ``.grad`` are skipped, as there. SVAG
    optimizers (:func:`two_batch`) need ``first_grads``: parameter -> its gradient on minibatch 0, with the
    gradient on minibatch 1 on ``.grad``; equivalent to their ``step(closure)`` with a closure that leaves
    those gradients (the combined gradient stays on ``.grad``, as there).
    """
    two = [o for o in opts if two_batch(o)]
    if two:
        if first_grads is None:
            raise ValueError("foreach_step: SVAG optimizers need first_grads (each parameter's minibatch-0 gradient)")
        _combine(two, first_grads)
    sgd = [o for o in opts if _kind(o) == "sgd"]
    adam = [o for o in opts if _kind(o) == "adam"]
    with torch.no_grad():
        if sgd:
            _sgd(sgd)
        if adam:
            _adam(adam)


@torch.no_grad()
def _combine(opts, first_grads) -> None:
    """``p.grad = a * g0 + b * g1`` per parameter, as ``_TwoBatchMixin.accumulate_gradient`` (a missing gradient
    counts as zeros; none on either minibatch leaves ``p.grad`` None), in foreach ops grouped by (a, b)."""
    from sgdlab.optim.own.svag import svag_coefficients

    groups: dict[tuple[float, float], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for opt in opts:
        ab = svag_coefficients(opt._variance_multiplier())
        for p in (p for g in opt.param_groups for p in g["params"]):
            g0, g1 = first_grads.get(p), p.grad
            if g0 is None and g1 is None:
                continue
            g0 = torch.zeros_like(p) if g0 is None else g0
            g1 = torch.zeros_like(p) if g1 is None else g1.detach()
            groups[ab].append((p, g0, g1))
    for (a, b), members in groups.items():
        combined = torch._foreach_add(
            torch._foreach_mul([g0 for _, g0, _ in members], a), torch._foreach_mul([g1 for *_, g1 in members], b)
        )
        for (p, _, _), g in zip(members, combined):
            p.grad = g


def _with_grads(opt):
    return [p for p in opt.param_groups[0]["params"] if p.grad is not None]


def _sgd(opts) -> None:
    # key: the scalars of every op of _single_tensor_sgd, and whether the buffer exists yet
    groups: dict[tuple, list[tuple[torch.optim.Optimizer, torch.Tensor]]] = defaultdict(list)
    for opt in opts:
        g = opt.param_groups[0]
        for p in _with_grads(opt):
            if p.grad.is_sparse:
                raise ValueError("foreach_step: sparse gradients are not supported")
            fresh = g["momentum"] != 0 and opt.state[p].get("momentum_buffer") is None
            groups[(g["lr"], g["weight_decay"], g["momentum"], g["dampening"], g["nesterov"], fresh)].append((opt, p))
    for (lr, wd, momentum, dampening, nesterov, fresh), members in groups.items():
        params = [p for _, p in members]
        grads = [p.grad for p in params]
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)  # grad.add(param, alpha=wd)
        if momentum != 0:
            if fresh:  # buf = grad.detach().clone()
                bufs = [torch.clone(d).detach() for d in grads]
                for (opt, p), buf in zip(members, bufs):
                    opt.state[p]["momentum_buffer"] = buf
            else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                bufs = [opt.state[p]["momentum_buffer"] for opt, p in members]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads, alpha=1 - dampening)
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
        torch._foreach_add_(params, grads, alpha=-lr)  # param.add_(grad, alpha=-lr)


def _adam(opts) -> None:
    new_steps: list[torch.Tensor] = []
    groups: dict[tuple, list[tuple[torch.Tensor, dict]]] = defaultdict(list)
    for opt in opts:
        g = opt.param_groups[0]
        beta1, beta2 = g["betas"]
        for p in _with_grads(opt):
            if p.grad.is_sparse or torch.is_complex(p):
                raise ValueError("foreach_step: sparse gradients and complex parameters are not supported")
            state = opt.state[p]
            if len(state) == 0:  # Adam._init_group: the step counter on the CPU in the default scalar dtype
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            new_steps.append(state["step"])
            key = (g["lr"], beta1, beta2, g["eps"], g["weight_decay"], g["decoupled_weight_decay"])
            groups[key].append((p, state))
    torch._foreach_add_(new_steps, 1)  # step_t += 1
    by_step: dict[tuple, list[tuple[torch.Tensor, dict]]] = defaultdict(list)
    for key, members in groups.items():
        for p, state in members:
            by_step[(*key, state["step"].item())].append((p, state))
    for (lr, beta1, beta2, eps, wd, decoupled, step), members in by_step.items():
        params = [p for p, _ in members]
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for _, s in members]
        exp_avg_sqs = [s["exp_avg_sq"] for _, s in members]
        if wd != 0:
            if decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)  # param.mul_(1 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)  # grad.add(param, alpha=wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # exp_avg.lerp_(grad, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = torch._foreach_sqrt(exp_avg_sqs)  # (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)
