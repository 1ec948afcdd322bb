"""Matrix-free symmetric linear operators on flat vectors, and the helpers the algorithms share.

Operators are kept separate from algorithms (pytorch-hessian-eigenthings habit): power iteration,
Lanczos, Hutchinson/Hutch++ and SLQ accept any :class:`LinearOperator`. An operator acts on flat
vectors of length ``n`` with a fixed ``dtype`` and ``device`` and counts its applications in
``n_matvecs``. ``scipy.sparse.linalg.LinearOperator`` is not used because it is numpy-only (no
GPU tensors, no autograd-produced vectors).

Here: :class:`LinearOperator` (base), :class:`ExplicitOperator` (a dense matrix, for tests),
:class:`PreconditionedOperator` (``P^{-1/2} A P^{-1/2}`` for a diagonal ``P``) and
:func:`adam_preconditioner` (``P = sqrt(v_hat) + eps`` from an Adam/AdamW state).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sgdlab.device import generator as seeded_generator


class LinearOperator:
    """Base class: a symmetric ``n x n`` operator applied to flat vectors.

    Subclasses implement ``_matvec(v)`` for a 1-D tensor ``v`` of shape (n,) and set ``n``,
    ``dtype`` and ``device``. ``matvec`` validates the input and counts applications.
    """

    n: int
    dtype: torch.dtype
    device: torch.device

    def __init__(self) -> None:
        self.n_matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``A v`` for ``v`` of shape (n,) (same dtype/device as the operator)."""
        if v.shape != (self.n,):
            raise ValueError(f"matvec expects a vector of shape ({self.n},), got {tuple(v.shape)}")
        self.n_matvecs += 1
        return self._matvec(v.to(device=self.device, dtype=self.dtype))

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``A V`` for ``V`` of shape (n, m), one matvec per column."""
        return torch.stack([self.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v) if v.dim() == 1 else self.matmat(v)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """Materialise the (n, n) matrix with n matvecs (tests and tiny problems only)."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        return self.matmat(eye)


class ExplicitOperator(LinearOperator):
    """A dense symmetric matrix as an operator (reference for tests)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square 2-D, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.n = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.n_matvecs += V.shape[1]
        return self.matrix @ V.to(device=self.device, dtype=self.dtype)


class PreconditionedOperator(LinearOperator):
    """``P^{-1/2} A P^{-1/2}`` for a positive diagonal preconditioner ``P``.

    Its eigenvalues are those of ``P^{-1} A``, the "preconditioned sharpness" that governs the
    stability of a preconditioned method with frozen preconditioner (Cohen et al. 2022, "Adaptive
    Gradient Methods at the Edge of Stability"). The wrapped operator's counter also advances.

    Args:
        op: the operator ``A``.
        diag_p: (n,) strictly positive, finite diagonal of ``P``.
    """

    def __init__(self, op: LinearOperator, diag_p: torch.Tensor) -> None:
        super().__init__()
        if diag_p.shape != (op.n,):
            raise ValueError(f"diag_p must have shape ({op.n},) to match the operator, got {tuple(diag_p.shape)}")
        if not bool(torch.isfinite(diag_p).all()) or not bool((diag_p > 0).all()):
            bad = float(diag_p[~(torch.isfinite(diag_p) & (diag_p > 0))][0])
            raise ValueError(f"diag_p must be finite and > 0 everywhere; found {bad}")
        self.op = op
        self.n, self.dtype, self.device = op.n, op.dtype, op.device
        self.scale = diag_p.to(device=op.device, dtype=op.dtype).rsqrt()  # (n,) P^{-1/2}

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matvec(self.scale * v)


def adam_preconditioner(
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.Tensor],
    eps: float | None = None,
) -> torch.Tensor:
    """Diagonal ``P = sqrt(v_hat) + eps`` of an Adam/AdamW state, flattened in ``params`` order.

    ``v_hat = v / (1 - beta2**t)`` is the bias-corrected second moment (``max_exp_avg_sq`` when
    ``amsgrad``), exactly the denominator torch.optim.Adam/AdamW divide by, so
    ``P^{-1/2} H P^{-1/2}`` is the preconditioned Hessian of Cohen et al. 2022 ("Adaptive Gradient
    Methods at the Edge of Stability"), whose top eigenvalue is compared with
    ``(2 + 2 beta1) / ((1 - beta1) lr)``.

    Args:
        optimizer: a ``torch.optim.Adam`` or ``torch.optim.AdamW`` that has taken >= 1 step.
        params: the parameters, in the order of the operator's flat vector
            (``HessianOperator.params``).
        eps: overrides the param group's ``eps`` when given.

    Returns:
        (n,) tensor on the parameters' device, in the state's dtype.
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"adam_preconditioner needs torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces = []
    for i, p in enumerate(params):
        if id(p) not in group_of:
            raise ValueError(f"parameter #{i} (shape {tuple(p.shape)}) is not in the optimizer")
        group = group_of[id(p)]
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            raise ValueError(
                f"parameter #{i} (shape {tuple(p.shape)}) has no Adam state yet: "
                "take at least one optimizer step before asking for the preconditioner"
            )
        step = float(state["step"])
        beta2 = float(group["betas"][1])
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        v_hat = v / (1.0 - beta2**step)
        e = float(group["eps"]) if eps is None else float(eps)
        pieces.append((v_hat.sqrt() + e).reshape(-1))
    if not pieces:
        raise ValueError("params is empty")
    return torch.cat(pieces)


# ---------------------------------------------------------------- random vectors and seeding ---


def make_generator(generator: torch.Generator | None = None, seed: int | None = None):
    """The explicit generator, else a fresh CPU generator seeded with ``seed`` (default 0).

    Never the global RNG: probes must not disturb a training loop's random stream.
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either generator or seed, not both")
        return generator
    return seeded_generator(0 if seed is None else seed)


def rademacher(shape, generator: torch.Generator, dtype, device) -> torch.Tensor:
    """Rademacher (+-1 with probability 1/2) tensor drawn on the generator's device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (bits.to(dtype) * 2 - 1).to(device)


def gaussian(shape, generator: torch.Generator, dtype, device) -> torch.Tensor:
    """Standard normal tensor drawn on the generator's device, then moved."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
