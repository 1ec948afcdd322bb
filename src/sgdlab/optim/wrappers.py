"""Thin adapters that make library optimizers fit sgdlab's step protocol and checkpoints.

* :class:`PrivateRNGMixin` — some pytorch_optimizer methods draw random numbers from the *global*
  torch/numpy RNGs inside ``step`` (AdaHessian's Hutchinson probes, PSGD-Kron's preconditioner
  probes and balancing). That couples the optimizer to whatever else
  uses the global RNG (dropout, data order) and breaks exact resume. The mixin gives the optimizer
  a private ``torch.Generator`` (seeded by the ``seed`` hparam, saved in ``state_dict``) and runs
  the library step inside ``torch.random.fork_rng`` seeded from it, restoring the global RNGs.
  The closure is evaluated *outside* the fork, so the caller's forward pass keeps its own RNG.
* :class:`ClosureSAM` — ``pytorch_optimizer.SAM.step(closure)`` expects gradients at the current
  weights to exist already and returns ``None``; here ``step(closure)`` computes them with one
  ``closure()`` and returns that loss (SAM's second pass calls ``closure()`` again, same batch).
* :func:`exact_load` — ``torch.optim.Optimizer.load_state_dict`` casts every floating state
  tensor (except "step") to its parameter's dtype. State deliberately kept in another dtype
  (NAdam's float32 ``mu_product`` next to float64/bf16 params) then changes precision on resume,
  and the resumed run diverges from the uninterrupted one. The mixin casts such entries back to
  the dtype they were saved with.
"""

from __future__ import annotations

import functools

import numpy as np
import pytorch_optimizer as po
import torch

from .rngstate import CheckpointedGenerator


class PrivateRNGMixin(CheckpointedGenerator):
    """Run the library ``step`` under a private, checkpointed RNG (see module docstring)."""

    def _cuda_devices(self) -> list[int]:
        return sorted({p.device.index or 0 for g in self.param_groups for p in g["params"] if p.is_cuda})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        seed = self._new_seed()
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            try:
                super().step()
            finally:
                np.random.set_state(np_state)
        return loss


def seeded(cls: type) -> type:
    """Subclass of library optimizer ``cls`` taking ``seed=`` and using a private RNG."""

    def __init__(self, params, *, seed: int = 0, **kwargs):
        cls.__init__(self, params, **kwargs)
        self._init_rng(seed)

    return type(f"Seeded{cls.__name__}", (PrivateRNGMixin, cls), {"__init__": __init__})


class ClosureSAM(po.SAM):
    """``pytorch_optimizer.SAM`` driven by one closure: ``loss = opt.step(closure)``.

    Foret et al. 2021: g = grad L(w) at w; w' = w + rho g/||g||; base step with grad L(w').
    ``closure`` is called twice on the same minibatch (k = 0); the returned loss is L(w).
    """

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("sam: step() needs a closure (two forward/backward passes per step)")
        with torch.enable_grad():
            loss = closure()  # gradients at the current weights
        super().step(closure)  # perturb, closure() at perturbed weights, restore, base step
        return loss


class ExactLoadMixin:
    """After ``load_state_dict``, restore the saved dtype of floating state tensors."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            saved = state_dict["state"].get(i, {})
            st = self.state[p]
            for k, v in saved.items():
                cur = st.get(k)
                if torch.is_tensor(v) and torch.is_tensor(cur) and v.is_floating_point() and cur.dtype != v.dtype:
                    st[k] = cur.to(v.dtype)


@functools.cache
def exact_load(cls: type) -> type:
    """Subclass of optimizer class ``cls`` whose ``load_state_dict`` keeps saved state dtypes."""
    if issubclass(cls, ExactLoadMixin):
        return cls
    return type(cls.__name__, (ExactLoadMixin, cls), {"__module__": __name__})
