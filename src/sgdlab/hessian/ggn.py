"""Generalized Gauss-Newton ``G = J^T H_out J`` as a matrix-free operator.

For a network output ``z = f(theta)`` (all probe samples stacked) and loss ``L = l(z)``,
``G = J^T (d^2 l / dz^2) J`` with ``J = dz/dtheta`` (Schraudolph 2002, "Fast curvature
matrix-vector products for second-order gradient descent"). It drops the term
``sum_k (dl/dz_k) d^2 z_k / dtheta^2`` from the Hessian and is positive semi-definite whenever
``l`` is convex in ``z``: cross-entropy (``H_out = (diag(p) - p p^T) / N`` per sample) and MSE
(``H_out = 2 I / (N C)`` for ``F.mse_loss``) are.

``H_out u`` is obtained by differentiating the loss twice with respect to the outputs (exact for
any ``loss_fn``, so no per-loss formula is hard-coded); ``J v`` by the double-vjp trick
(``J v = d/du [ (J^T u) . v ]``) and ``J^T w`` by one vjp, all reusing the cached forward graph
when the probe set is one physical batch. Cost per matvec: about three backward passes.
"""

from __future__ import annotations

import torch

from ._model import ModelOperator


class GGNOperator(ModelOperator):
    """``G v = J^T H_out J v`` for the mean loss over ``data`` (PSD for convex losses).

    Args: as :class:`~sgdlab.hessian.hvp.HessianOperator` (no backend choice). ``retain_graph``
    defaults to keeping the forward graph when there is one physical batch.
    """

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        params=None,
        batch_size: int | None = None,
        bn_mode: str = "eval",
        retain_graph: bool | None = None,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            data,
            params=params,
            batch_size=batch_size,
            bn_mode=bn_mode,
            device=device,
            dtype=dtype,
        )
        if retain_graph is None:
            retain_graph = len(self.batches) == 1
        self._graphs = None
        if retain_graph:
            self._graphs = [self._graph(b) for b in range(len(self.batches))]
            loss = sum(float(g[4]) for g in self._graphs)
        else:
            loss = self.compute_loss()
        self.loss = self.check_loss(loss)

    def _graph(self, b: int):
        """(theta leaves, outputs z with graph, detached z leaf, dl/dz with graph, loss)."""
        theta = [t.detach().requires_grad_() for t in self._theta]
        with self.context():
            z = self.forward(theta, b)  # (B, C)
            z_leaf = z.detach().requires_grad_()
            loss = self.batch_loss(z_leaf, b)
            (dl_dz,) = torch.autograd.grad(loss, z_leaf, create_graph=True)
        return theta, z, z_leaf, dl_dz, loss.detach()

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        vs = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for b in range(len(self.batches)):
            theta, z, z_leaf, dl_dz, _ = self._graphs[b] if self._graphs is not None else self._graph(b)
            # J v via the double-vjp trick: J^T u is linear in the dummy u, its u-gradient
            # against v is J v.
            u = torch.zeros_like(z, requires_grad=True)  # (B, C)
            jt_u = torch.autograd.grad(
                z, theta, grad_outputs=u, create_graph=True, retain_graph=True, allow_unused=True
            )
            pairs = [(a, vi) for a, vi in zip(jt_u, vs) if a is not None and a.requires_grad]
            if not pairs:
                continue
            (jv,) = torch.autograd.grad(
                [a for a, _ in pairs],
                u,
                grad_outputs=[vi for _, vi in pairs],
                retain_graph=True,
                allow_unused=True,
            )
            if jv is None or not dl_dz.requires_grad:
                continue
            (h_jv,) = torch.autograd.grad(dl_dz, z_leaf, grad_outputs=jv, retain_graph=True)
            gv = torch.autograd.grad(z, theta, grad_outputs=h_jv, retain_graph=True, allow_unused=True)
            out += self.flatten(gv).detach()
        return out

    def release(self) -> None:
        """Drop the retained forward graphs; later matvecs rebuild them per batch."""
        self._graphs = None
