"""One-call curvature probes of a model, and a probe to run along training.

Each function builds a :class:`~sgdlab.hessian.hvp.HessianOperator` at the model's current
parameters and runs one algorithm on it. None of them changes the caller's state: module modes,
BatchNorm buffers, ``.grad`` (None stays None), ``requires_grad`` and the global RNG are as
before (the operator works on copies and forks the RNG; see ``probe_state``)::

    from sgdlab import hessian
    idx = hessian.probe_subset(len(X), 1000, seed=0)        # fixed, recorded probe subset
    data = (X[idx], y[idx])
    res = hessian.top_eigenvalues(model, F.cross_entropy, data, k=1, tol=1e-3)
    res.eigenvalues[0], res.converged, res.n_matvecs
    tr = hessian.trace(model, F.cross_entropy, data, n_probes=100, method="hutch++")
    tr.estimate, tr.stderr
    dens = hessian.spectral_density(model, F.cross_entropy, data, n_probes=4, lanczos_steps=80)
    dens.grid, dens.density
    pre = hessian.preconditioned_sharpness(model, F.cross_entropy, data, adam)
    pre.eigenvalues[0] / hessian.stability_threshold(adam, lr)   # ~1 at the adaptive EoS

    probe = hessian.SharpnessProbe(F.cross_entropy, data, every_k=100, n_trace_probes=20)
    metrics = probe(step, model, optimizer, lr)   # {"hessian/lambda_max": ..., ...} or {}
"""

from __future__ import annotations

import torch

from sgdlab.device import generator as seeded_generator

from .hutchinson import hutchinson, hutchpp
from .hvp import HessianOperator
from .lanczos import lanczos
from .operators import PreconditionedOperator, adam_preconditioner
from .results import DensityResult, EigenResult, TraceResult
from .slq import slq
from .stability import optimizer_kind, stability_threshold

TRACE_METHODS = ("hutchinson", "hutch++")


def probe_subset(n_total: int, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted LongTensor of ``size`` distinct indices in ``[0, n_total)``, fixed by ``seed``.

    Probe curvature on the same subset at every step (Cohen et al. 2021 use a fixed abridged
    training subset) and record ``seed`` with the run.
    """
    for name, val in (("n_total", n_total), ("size", size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if size > n_total:
        raise ValueError(f"probe subset size={size} is larger than the data (n_total={n_total})")
    gen = seeded_generator(seed)
    return torch.randperm(n_total, generator=gen)[:size].sort().values


def top_eigenvalues(
    model,
    loss_fn,
    data,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    batch_size: int | None = None,
    bn_mode: str = "eval",
    seed: int = 0,
    params=None,
    *,
    backend: str = "auto",
    device=None,
    dtype=None,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """Top-k Hessian eigenvalues (largest algebraic) of the mean loss over ``data`` by Lanczos.

    ``tol`` is the relative Ritz residual, a bound on the relative eigenvalue error (see
    :func:`~sgdlab.hessian.lanczos.lanczos`);
    ``max_iter`` caps matvecs (default ``min(n, max(100, 10k))``); ``params`` probes one block.
    """
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        bn_mode=bn_mode,
        backend=backend,
        device=device,
        dtype=dtype,
    )
    return lanczos(op, k, tol=tol, max_iter=max_iter, seed=seed, return_eigenvectors=return_eigenvectors)


def trace(
    model,
    loss_fn,
    data,
    n_probes: int = 100,
    method: str = "hutchinson",
    seed: int = 0,
    batch_size: int | None = None,
    bn_mode: str = "eval",
    params=None,
    *,
    backend: str = "auto",
    device=None,
    dtype=None,
) -> TraceResult:
    """Hessian trace with standard error: Hutchinson (``n_probes`` probes) or Hutch++
    (``n_probes`` matvecs in total)."""
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        bn_mode=bn_mode,
        backend=backend,
        device=device,
        dtype=dtype,
    )
    if method == "hutchinson":
        return hutchinson(op, n_probes, seed=seed)
    return hutchpp(op, n_probes, seed=seed)


def spectral_density(
    model,
    loss_fn,
    data,
    n_probes: int = 4,
    lanczos_steps: int = 80,
    seed: int = 0,
    batch_size: int | None = None,
    bn_mode: str = "eval",
    params=None,
    *,
    sigma: float | None = None,
    n_grid: int = 1000,
    backend: str = "auto",
    device=None,
    dtype=None,
) -> DensityResult:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019)."""
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        bn_mode=bn_mode,
        backend=backend,
        device=device,
        dtype=dtype,
    )
    return slq(op, n_probes, lanczos_steps, sigma=sigma, n_grid=n_grid, seed=seed)


def preconditioned_sharpness(
    model,
    loss_fn,
    data,
    optimizer,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    batch_size: int | None = None,
    bn_mode: str = "eval",
    seed: int = 0,
    params=None,
    *,
    eps: float | None = None,
    backend: str = "auto",
    device=None,
    dtype=None,
) -> EigenResult:
    """Top eigenvalues of ``P^{-1/2} H P^{-1/2}`` with ``P = sqrt(v_hat) + eps`` from the
    Adam/AdamW ``optimizer`` state (Cohen et al. 2022); compare with
    ``stability_threshold(optimizer)`` = ``(2 + 2 beta1) / ((1 - beta1) lr)``."""
    op = HessianOperator(
        model,
        loss_fn,
        data,
        params=params,
        batch_size=batch_size,
        bn_mode=bn_mode,
        backend=backend,
        device=device,
        dtype=dtype,
    )
    pre = PreconditionedOperator(op, adam_preconditioner(optimizer, op.params, eps=eps))
    return lanczos(pre, k, tol=tol, max_iter=max_iter, seed=seed)


def spherical_factor(model, params, bn_mode: str = "eval") -> float | None:
    """``||w||^2`` over ``params`` when ``model`` is scale-invariant in them, else None.

    For a loss with ``L(c w) = L(w)`` for all ``c > 0`` (normalization layers and a fixed last layer, see
    :meth:`sgdlab.models.MLP.is_scale_invariant`), differentiating twice gives ``H(c w) = H(w) / c^2``, so the
    *spherical sharpness* of Lyu, Li, Arora 2022, lambda_max of the Hessian at the normalised weights ``w/||w||``,
    is ``||w||^2 lambda_max(H(w))``: one factor on the probe's lambda_max, no second Lanczos run. Only when
    ``params`` are all of the model's trainable parameters (scale invariance is in all of them jointly).
    """
    check = getattr(model, "is_scale_invariant", None)
    if check is None or not check(bn_mode):
        return None
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids = {id(p) for p in params}
    if len(ids) != len(trainable) or any(id(p) not in ids for p in trainable):
        return None
    return float(sum((p.detach().double() ** 2).sum() for p in trainable))


class SharpnessProbe:
    """Curvature metrics at a fixed cadence along training, without touching training state.

    ``probe(step, model, optimizer=None, lr=None)`` returns ``{}`` unless ``step % every_k == 0``;
    otherwise a dict with

    * ``hessian/lambda_max`` (and ``hessian/lambda_2`` ... for ``k_eigs > 1``),
    * ``hessian/trace``, ``hessian/trace_stderr`` when ``n_trace_probes > 0``,
    * ``hessian/threshold``: :func:`stability_threshold` of the optimizer at ``lr`` (default the
      optimizer's current lr); absent for optimizers without a known threshold,
    * ``hessian/precond_lambda_max`` for Adam/AdamW (to compare with the threshold),
    * ``hessian/spherical_lambda_max`` for a scale-invariant model (:func:`spherical_factor`): lambda_max at
      the normalised weights ``w/||w||``, the sharpness of Lyu, Li, Arora 2022,
    * ``hessian/n_matvecs``, ``hessian/loss`` (the probe-set loss).

    Every probe draws its random vectors from a fresh generator seeded with ``seed`` (the same
    probes each time: common random numbers make successive values comparable); the global RNG
    is forked, so training runs stay reproducible. ``data`` is moved once to the model's device.
    ``tol``/``max_iter`` go to :func:`~sgdlab.hessian.lanczos.lanczos`.
    """

    def __init__(
        self,
        loss_fn,
        data,
        every_k: int = 100,
        k_eigs: int = 1,
        tol: float = 1e-3,
        n_trace_probes: int = 0,
        *,
        max_iter: int | None = None,
        trace_method: str = "hutchinson",
        batch_size: int | None = None,
        bn_mode: str = "eval",
        params=None,
        backend: str = "auto",
        seed: int = 0,
        precondition: bool = True,
    ) -> None:
        if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
            raise ValueError(f"every_k must be a positive int, got {every_k!r}")
        if not isinstance(n_trace_probes, int) or n_trace_probes < 0 or n_trace_probes == 1:
            raise ValueError(f"n_trace_probes must be 0 (off) or >= 2, got {n_trace_probes!r}")
        if trace_method not in TRACE_METHODS:
            raise ValueError(f"trace_method must be one of {TRACE_METHODS}, got {trace_method!r}")
        if trace_method == "hutch++" and 0 < n_trace_probes < 6:
            raise ValueError(f"n_trace_probes must be >= 6 for hutch++, got {n_trace_probes}")
        if isinstance(k_eigs, bool) or not isinstance(k_eigs, int) or k_eigs < 1:
            raise ValueError(f"k_eigs must be a positive int, got {k_eigs!r}")
        if bn_mode not in ("eval", "train"):
            raise ValueError(f"bn_mode must be one of ('eval', 'train'), got {bn_mode!r}")
        self.loss_fn, self.data = loss_fn, tuple(data)
        self.every_k, self.k_eigs, self.tol, self.max_iter = every_k, k_eigs, tol, max_iter
        self.n_trace_probes, self.trace_method = n_trace_probes, trace_method
        self.op_kw = {
            "batch_size": batch_size,
            "bn_mode": bn_mode,
            "params": params,
            "backend": backend,
        }
        self.seed, self.precondition = seed, precondition

    def should_probe(self, step: int) -> bool:
        return step % self.every_k == 0

    def __call__(self, step: int, model, optimizer=None, lr: float | None = None) -> dict:
        if not self.should_probe(step):
            return {}
        first = next(model.parameters(), None)  # None: HessianOperator raises a clear error
        device = self.data[0].device if first is None else first.device
        if self.data[0].device != device:
            self.data = tuple(t.to(device) for t in self.data)
        op = HessianOperator(model, self.loss_fn, self.data, **self.op_kw)
        lz = {"tol": self.tol, "max_iter": self.max_iter, "seed": self.seed}
        res = lanczos(op, self.k_eigs, **lz)
        # 1.0 / 0.0: whether the Ritz values met ``tol`` within ``max_iter`` (the report marks 0.0 points)
        out = {"hessian/lambda_max": float(res.eigenvalues[0]), "hessian/converged": float(res.converged)}
        for i in range(1, len(res.eigenvalues)):
            out[f"hessian/lambda_{i + 1}"] = float(res.eigenvalues[i])
        spherical = spherical_factor(model, op.params, self.op_kw["bn_mode"])
        if spherical is not None:
            out["hessian/spherical_lambda_max"] = spherical * out["hessian/lambda_max"]
        if self.n_trace_probes:
            est = (hutchinson if self.trace_method == "hutchinson" else hutchpp)(
                op, self.n_trace_probes, seed=self.seed
            )
            out["hessian/trace"], out["hessian/trace_stderr"] = est.estimate, est.stderr
        info = optimizer_kind(optimizer) if optimizer is not None else None
        if info is not None:
            out["hessian/threshold"] = stability_threshold(optimizer, lr)
            has_state = all("exp_avg_sq" in optimizer.state.get(p, {}) for p in op.params)
            if info[0] == "adam" and self.precondition and has_state:
                pre = PreconditionedOperator(op, adam_preconditioner(optimizer, op.params))
                out["hessian/precond_lambda_max"] = float(lanczos(pre, 1, **lz).eigenvalues[0])
        elif optimizer is not None and hasattr(optimizer, "stability_threshold"):  # e.g. normalized GD: 2||g||/lr
            out["hessian/threshold"] = float(optimizer.stability_threshold(lr))
        elif optimizer is None and lr is not None:
            out["hessian/threshold"] = stability_threshold("gd", lr)
        out["hessian/n_matvecs"] = float(op.n_matvecs)
        out["hessian/loss"] = float(op.loss)
        return out
