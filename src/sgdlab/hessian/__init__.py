"""Matrix-free curvature of neural-network losses: operators, algorithms, one-call probes.

Operators (flat vectors of length ``n``, count their matvecs):
:class:`HessianOperator` (double-backward or forward-over-reverse HVPs, physical batches, a
parameter block, explicit ``bn_mode``), :class:`GGNOperator` (``J^T H_out J``),
:class:`PreconditionedOperator` (``P^{-1/2} A P^{-1/2}``; :func:`adam_preconditioner`),
:class:`ExplicitOperator` (dense, for tests).

Algorithms (any operator, seeded by an explicit generator or seed): :func:`power_iteration`,
:func:`lanczos` (top-k, full reorthogonalization), :func:`hutchinson` and :func:`hutchpp` (trace
with standard error), :func:`slq` (spectral density). Results: :class:`EigenResult`,
:class:`TraceResult`, :class:`DensityResult`.

One-call probes (no side effects on the model, its grads, modes, buffers or the global RNG)::

    from sgdlab import hessian
    hessian.top_eigenvalues(model, loss_fn, data, k=1, tol=1e-3, max_iter=None,
                            batch_size=None, bn_mode="eval", seed=0, params=None) -> EigenResult
    hessian.trace(model, loss_fn, data, n_probes=100, method="hutchinson" | "hutch++",
                  seed=0, ...) -> TraceResult
    hessian.spectral_density(model, loss_fn, data, n_probes=4, lanczos_steps=80, ...)
        -> DensityResult
    hessian.preconditioned_sharpness(model, loss_fn, data, optimizer, ...) -> EigenResult
    hessian.stability_threshold("sgd" | "momentum" | "nesterov" | "adam" | optimizer, lr,
                                beta1=None) -> float
    hessian.probe_subset(n_total, size, seed) -> LongTensor
    hessian.SharpnessProbe(loss_fn, data, every_k=100, k_eigs=1, tol=1e-3, n_trace_probes=0)
        (step, model, optimizer, lr) -> {"hessian/lambda_max": ..., "hessian/threshold": ...}

``data`` is a tuple ``(X, y)``; ``loss_fn(outputs, y)`` returns the batch mean (as
``torch.nn.functional.cross_entropy``); the probed function is the mean loss over all samples.
"""

from ._model import NonFiniteLossError, probe_state
from .ggn import GGNOperator
from .hutchinson import hutchinson, hutchpp
from .hvp import HessianOperator
from .lanczos import lanczos
from .operators import (
    ExplicitOperator,
    LinearOperator,
    PreconditionedOperator,
    adam_preconditioner,
)
from .power import power_iteration
from .probe import (
    SharpnessProbe,
    preconditioned_sharpness,
    probe_subset,
    spectral_density,
    spherical_factor,
    top_eigenvalues,
    trace,
)
from .results import DensityResult, EigenResult, TraceResult
from .slq import slq
from .stability import optimizer_kind, stability_threshold

__all__ = [
    "DensityResult",
    "EigenResult",
    "ExplicitOperator",
    "GGNOperator",
    "HessianOperator",
    "LinearOperator",
    "NonFiniteLossError",
    "PreconditionedOperator",
    "SharpnessProbe",
    "TraceResult",
    "adam_preconditioner",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "power_iteration",
    "preconditioned_sharpness",
    "probe_state",
    "probe_subset",
    "slq",
    "spectral_density",
    "spherical_factor",
    "optimizer_kind",
    "stability_threshold",
    "top_eigenvalues",
    "trace",
]
