"""Hessian of the probe-set loss as a matrix-free operator (Hessian-vector products).

:class:`HessianOperator` applies ``H = d^2 L / d theta^2`` of the mean loss over the probe set
(``L = sum_b (B_b/N) loss_fn(f(X_b), y_b)``) to flat vectors, with two backends:

* ``"double_backward"`` (reverse-over-reverse; Pearlmutter 1994, "Fast Exact Multiplication by
  the Hessian"): build the graph of the gradient ``g = dL/dtheta`` (``create_graph=True``) and
  return ``d(g . v)/dtheta`` via ``autograd.grad(g, theta, grad_outputs=v, retain_graph=True)``.
  When the probe set is one physical batch (or ``retain_graph=True``) the gradient graph is built
  once and reused by every matvec, so a matvec is one backward pass through the gradient graph.
* ``"fwd_over_rev"``: ``torch.func.jvp(torch.func.grad(L), theta, v)`` through
  ``torch.func.functional_call``; every matvec redoes a forward and a backward pass in dual
  numbers.

``backend="auto"`` picks ``"double_backward"``. ``bench/bench_hessian.py --threads 1`` on the
shared 2-core CPU (torch 2.13, float32, 1024 Fashion-MNIST images), HVP time / gradient time,
median of 7 paired rounds in the last run (range over 5-6 runs on a machine shared with others):

==============================  =======================  =================================
backend                         MLP 784-256-256-10 tanh  CNN 2 conv + BatchNorm(eval) + fc
==============================  =======================  =================================
double backward, graph reused   1.5x (1.1-1.7)           2.9x (2.6-3.0)
double backward, rebuilt        2.5x (2.1-2.5)           4.0x (4.0-4.2)
fwd-over-rev                    3.7x (2.7-3.9)           4.2x (3.3-4.2)
==============================  =======================  =================================

With one physical batch (the default) the reused graph wins by 2-3x. Rebuilt per matvec (several
physical batches) double backward still won on the MLP and was within noise of fwd-over-rev on
the CNN, so ``"auto"`` does not switch.
(The CNN's HVP pays for BatchNorm's generic double-backward formula, ~1/4 of its time.) No GPU
was available to measure; ``"auto"`` makes the same choice there.
"""

from __future__ import annotations

import torch
from torch.func import grad, jvp

from ._model import ModelOperator

BACKENDS = ("auto", "double_backward", "fwd_over_rev")


class HessianOperator(ModelOperator):
    """``H v`` for the mean loss over ``data`` at the model's current parameters.

    Args:
        model, loss_fn, data, params, batch_size, bn_mode, device, dtype: see
            :class:`~sgdlab.hessian._model.ModelOperator`. ``loss_fn`` must return the batch
            *mean* of per-sample losses; the operator is then exactly the Hessian of the mean over
            all ``N`` samples whatever ``batch_size`` is. (With ``bn_mode="train"`` the batch
            statistics, hence the function itself, depend on ``batch_size``.)
        backend: ``"auto"``, ``"double_backward"`` or ``"fwd_over_rev"`` (see module docstring).
        retain_graph: keep the gradient graph of every physical batch between matvecs
            (double-backward only). Default: only when there is one physical batch, since the
            graphs hold all activations.

    Attributes:
        loss: mean loss over the probe set at the snapshot (checked finite at construction).
        params / param_names: the probed parameters, in flat-vector order.
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
        backend: str = "auto",
        retain_graph: bool | None = None,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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
        self.backend = "double_backward" if backend == "auto" else backend
        if retain_graph is None:
            retain_graph = len(self.batches) == 1
        self.retain_graph = bool(retain_graph) and self.backend == "double_backward"
        self._graphs = None
        if self.retain_graph:
            self._graphs = [self._gradient_graph(b) for b in range(len(self.batches))]
            loss = sum(float(g[2]) for g in self._graphs)
        else:
            loss = self.compute_loss()
        self.loss = self.check_loss(loss)

    # ------------------------------------------------------------------ double backward ---
    def _gradient_graph(self, b: int):
        """(theta leaves, gradient of batch b's weighted loss with its graph, loss)."""
        theta = [t.detach().requires_grad_() for t in self._theta]
        with self.context():
            loss = self.batch_loss(self.forward(theta, b), b)
            g = torch.autograd.grad(loss, theta, create_graph=True, allow_unused=True)
        return theta, g, loss.detach()

    def _hvp_graph(self, graph, vs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        theta, g, _ = graph
        # Gradients that do not depend on theta (e.g. loss linear in a block) contribute 0.
        pairs = [(gi, vi) for gi, vi in zip(g, vs) if gi is not None and gi.requires_grad]
        if not pairs:
            return [None] * len(theta)
        return list(
            torch.autograd.grad(
                [gi for gi, _ in pairs],
                theta,
                grad_outputs=[vi for _, vi in pairs],
                retain_graph=True,
                allow_unused=True,
            )
        )

    # --------------------------------------------------------------------- fwd over rev ---
    def _hvp_func(self, b: int, vs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        argnums = tuple(range(len(self._theta)))

        def loss_of(*theta):
            return self.batch_loss(self.forward(theta, b), b)

        with self.context():
            try:
                _, hv = jvp(grad(loss_of, argnums=argnums), tuple(self._theta), tuple(vs))
            except RuntimeError as exc:
                if "ZeroTensors are immutable" not in str(exc):
                    raise
                # torch's forward-mode formulas of some losses (F.mse_loss among them) write into a ZeroTensor
                raise RuntimeError(
                    "HessianOperator(backend='fwd_over_rev') cannot differentiate this loss (torch forward-mode "
                    "AD hits an immutable ZeroTensor, e.g. in F.mse_loss): use backend='double_backward' (the "
                    "default) or write the loss without it, e.g. ((out - y) ** 2).mean()"
                ) from None
        return hv

    # ---------------------------------------------------------------------------- matvec ---
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        vs = self.unflatten(v)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for b in range(len(self.batches)):
            if self.backend == "fwd_over_rev":
                hv = self._hvp_func(b, vs)
            else:
                graph = self._graphs[b] if self._graphs is not None else self._gradient_graph(b)
                hv = self._hvp_graph(graph, vs)
            out += self.flatten(hv).detach()
        return out

    def gradient(self) -> torch.Tensor:
        """Flat (n,) gradient of the probe-set mean loss at the snapshot (not counted)."""
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for b in range(len(self.batches)):
            graph = self._graphs[b] if self._graphs is not None else self._gradient_graph(b)
            out += self.flatten(graph[1]).detach()
        return out

    def release(self) -> None:
        """Drop the retained gradient graphs (frees activations); later matvecs rebuild them."""
        self._graphs = None
