"""DP-SGD on top of opacus: its per-sample-gradient hooks, clipping, noise and privacy accountants.

The update, the guarantee it reports and every choice are described in :mod:`sgdlab.optim.specs_opacus`
(where ``dp_sgd`` is registered). This module imports opacus (about a second), so the registry imports it
only when a ``dp_sgd`` optimizer is built.

What sgdlab adds to opacus' ``DPOptimizer`` (and why):

* the model: :meth:`DPSGD.attach` checks it (BatchNorm and other modules that mix samples are refused,
  naming the module) and installs opacus' ``GradSampleHooks`` (no wrapper module: ``state_dict`` keys and
  the forward stay the model's own). The hooks are enabled only while ``step`` runs the closure; outside
  it they return at once, so evaluations, Hessian probes and ``on_step`` hooks compute what they would on
  the plain model (a probe's top eigenvalue and trace were checked identical). :meth:`DPSGD.detach` removes
  them and every attribute opacus put on the parameters and modules.
* the step protocol: ``loss = step(closure)`` returns the closure's loss (opacus returns the inner
  optimizer's ``None``), accounts one step, then frees the per-sample gradients (B x |theta| numbers).
* micro-batches: the loop's closure with ``physical_batch_size = B/m`` calls ``backward`` on
  (micro-batch mean loss)/m m times, so opacus' hooks (mean reduction: backprops x micro-batch size)
  record each per-sample gradient divided by m, as a list of m tensors. They are rescaled by m here, and
  the clipped sum is divided by B once (opacus would divide by B m).
* checkpoints: ``state_dict`` carries the noise generator's state and the accountant's history, so a
  resumed run draws the same noise and reports the same epsilon as an uninterrupted one.
"""

from __future__ import annotations

import math
import warnings

import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn


class CachedRDPAccountant(RDPAccountant):
    """opacus' ``RDPAccountant`` with the one-step RDP curve of each (sigma, q) computed once.

    opacus computes ``compute_rdp(q, sigma, T)`` as T x the one-step curve (155 orders, each a Python
    series: ~0.1-0.4 s), so this gives the same epsilon to the bit while an eval point costs microseconds.
    """

    def __init__(self) -> None:
        super().__init__()
        self._curves: dict[tuple, object] = {}

    def get_privacy_spent(self, *, delta: float, alphas=None) -> tuple[float, float]:
        if not self.history:
            return 0, 0
        orders = tuple(self.DEFAULT_ALPHAS if alphas is None else alphas)
        rdp = sum([self._curve(sigma, q, orders) * steps for sigma, q, steps in self.history])
        eps, best_alpha = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
        return float(eps), float(best_alpha)

    def _curve(self, sigma: float, q: float, orders: tuple):
        key = (sigma, q, orders)
        if key not in self._curves:
            self._curves[key] = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders))
        return self._curves[key]


ACCOUNTANTS = {"rdp": CachedRDPAccountant, "prv": PRVAccountant}
# torch warns once per call site that a full backward hook (opacus') fires although the module's inputs need
# no grad: always so for the first layer, whose input is data. Only opacus registers such hooks here; a
# filter set once (not catch_warnings per step, which is not thread-safe and resets the warning registry).
warnings.filterwarnings(
    "ignore", message="Full backward hook is firing when gradients are computed", category=UserWarning
)
_STATE_KEY = "sgdlab_dp"  # in state_dict: noise generator state and accountant history
# what opacus' hooks and DPOptimizer put on the model's modules and parameters
_MODULE_ATTRS = ("autograd_grad_sample_hooks", "activations", "max_batch_len", "ft_compute_sample_grad")
_PARAM_ATTRS = ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad")


def check_model(model: nn.Module) -> None:
    """Raise ValueError naming the first module DP-SGD cannot train: BatchNorm (a sample's output, hence its
    gradient, depends on the other samples of its batch, so clipping per sample bounds nothing), modules
    opacus' validators refuse (e.g. ``nn.LSTM``: use ``opacus.layers.DPLSTM``), and trainable modules
    with buffers (opacus cannot compute their per-sample gradients)."""
    for name, m in model.named_modules():
        where = f"module {name or '<root>'!r} ({type(m).__name__})"
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"dp_sgd: {where} is BatchNorm, which normalises each sample with statistics of its whole "
                "batch: a sample's gradient then depends on the others and per-sample clipping bounds nothing. "
                "Use a model without BatchNorm (resnet: model_kwargs norm='none'; GroupNorm and LayerNorm are "
                "per-sample)"
            )
        trainable = any(p.requires_grad for p in m.parameters(recurse=False))
        validator = ModuleValidator.VALIDATORS.get(type(m))
        if trainable and validator is not None:
            errors = validator(m)
            if errors:
                raise ValueError(f"dp_sgd: {where} cannot be trained with per-sample gradients: {errors[0]}")
        if trainable and any(True for _ in m.buffers()):
            raise ValueError(
                f"dp_sgd: {where} has trainable parameters and buffers; opacus cannot compute its per-sample gradients"
            )


def _scrub(model: nn.Module) -> None:
    """Remove opacus' hooks and every attribute it put on the model's modules and parameters."""
    for handle in getattr(model, "autograd_grad_sample_hooks", ()):
        handle.remove()
    for obj in (*model.modules(), *model.parameters()):
        for attr in _MODULE_ATTRS if isinstance(obj, nn.Module) else _PARAM_ATTRS:
            if hasattr(obj, attr):
                delattr(obj, attr)


def _drop_copied_hooks(model: nn.Module) -> None:
    """A ``copy.deepcopy`` of an attached model carries copies of opacus' hooks, bound to a copy of the hook
    object, while its parameters lack opacus' counters: remove them (the copied handles point at the copy's
    own hook dicts) so the copy can be attached itself."""
    if not hasattr(model, "autograd_grad_sample_hooks"):
        return
    if any(hasattr(p, "_forward_counter") for p in model.parameters()):
        raise ValueError("dp_sgd: the model already has per-sample-gradient hooks of another optimizer; detach() it")
    _scrub(model)


class DPSGD(DPOptimizer):
    """DP-SGD (Abadi et al. 2016, Algorithm 1) as an opacus ``DPOptimizer`` over ``torch.optim.SGD``.

    ``step(closure)``: closure() records the per-sample gradients g_i of its minibatch (hooks on the
    attached model); each is clipped, g_i min(1, C / (||g_i|| + 1e-6)) with the norm over all parameters
    (opacus' stabiliser 1e-6); g = (sum_i clipped g_i + N(0, sigma^2 C^2 I)) / B; the SGD step (momentum,
    weight decay) uses g. ``B`` is ``attach``'s ``batch_size`` (else the minibatch's own size).
    """

    def __init__(
        self,
        params,
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        max_grad_norm: float,
        noise_multiplier: float,
        delta: float | None,
        accountant: str,
        seed: int | None,
    ) -> None:
        params = list(params)
        devices = {p.device for p in params}
        if len(devices) != 1:
            raise ValueError(f"dp_sgd: parameters on several devices {sorted(map(str, devices))}; one is supported")
        sgd = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        generator = torch.Generator(device=params[0].device)
        generator.manual_seed(0 if seed is None else seed)
        # expected_batch_size is given by attach(); scale_grad below divides by it (or the batch's size)
        super().__init__(
            sgd,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=1,
            loss_reduction="mean",
            generator=generator,
        )
        self.expected_batch_size: int | None = None
        self.seed, self.delta_hparam = seed, delta
        self.accountant = ACCOUNTANTS[accountant]()
        self.n_train: int | None = None
        self.sample_rate: float | None = None  # q = B / n_train, set by attach(batch_size, n_train)
        self._hooks: GradSampleHooks | None = None
        self._model: nn.Module | None = None

    # ---- the model -------------------------------------------------------------------------------
    def attach(
        self,
        model: nn.Module,
        *,
        batch_size: int | None = None,
        n_train: int | None = None,
        seed: int | None = None,
    ) -> None:
        """Install per-sample-gradient hooks on ``model`` (whose trainable parameters must be this optimizer's).

        ``batch_size`` B and ``n_train`` n (both or neither): the step divides by B and the accountant counts
        each step with sampling rate q = B/n (without them, as in unit tests, the step divides by the
        minibatch's size and no privacy is accounted). ``seed``: seeds the noise when the ``seed`` hparam is
        None (the loop passes one derived from its own seed). Raises ValueError naming a module DP-SGD
        cannot train, before anything runs.
        """
        if self._hooks is not None:
            raise RuntimeError("dp_sgd: a model is already attached; detach() it first")
        mine = {id(p) for p in self.params}
        theirs = {id(p) for p in model.parameters() if p.requires_grad}
        if mine != theirs:
            raise ValueError("dp_sgd: the model's trainable parameters are not the ones this optimizer updates")
        if (batch_size is None) != (n_train is None):
            raise ValueError("dp_sgd: attach() needs both batch_size and n_train, or neither")
        if batch_size is not None and not (1 <= batch_size <= n_train):
            raise ValueError(f"dp_sgd: batch_size={batch_size} must be in [1, n_train={n_train}]")
        check_model(model)
        _drop_copied_hooks(model)
        try:
            hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=True)
        except NotImplementedError as e:
            _scrub(model)  # what opacus installed before it gave up
            raise ValueError(
                f"dp_sgd: opacus cannot compute per-sample gradients of {type(model).__name__}: {e}"
            ) from None
        hooks.disable_hooks()  # live only inside step()
        self._hooks, self._model = hooks, model
        if batch_size is not None:
            self.expected_batch_size, self.n_train = int(batch_size), int(n_train)
            self.sample_rate = batch_size / n_train
        if seed is not None and self.seed is None:
            self.generator.manual_seed(seed)

    def detach(self) -> None:
        """Remove the hooks and every attribute opacus added to the model's parameters and modules."""
        if self._hooks is None:
            return
        self._hooks.disable_hooks()
        _scrub(self._model)
        self._hooks = self._model = None

    # ---- the step ----------------------------------------------------------------------------------
    def step(self, closure=None):
        if closure is None:
            raise ValueError("dp_sgd: step() needs a closure (per-sample gradients are recorded while it runs)")
        if self._hooks is None:
            raise RuntimeError("dp_sgd: no model attached; call attach(model) first (the training loop does)")
        self._hooks.enable_hooks()
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self._hooks.disable_hooks()
        if self.pre_step():  # clip, sum, noise, scale_grad
            self.original_optimizer.step()
        if self.sample_rate is not None:
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        for p in self.params:  # free the per-sample gradients now, not at the next zero_grad
            p.grad_sample = None
            p.summed_grad = None
        return loss

    def _get_flat_grad_sample(self, p: torch.Tensor) -> torch.Tensor:
        gs = getattr(p, "grad_sample", None)
        if isinstance(gs, list):  # m micro-batches, each row (per-sample gradient)/m (module docstring)
            return torch.cat(gs, dim=0) * len(gs)
        return super()._get_flat_grad_sample(p)

    def scale_grad(self) -> None:
        gs = self.params[0].grad_sample
        n = self.expected_batch_size
        if n is None:
            n = sum(len(t) for t in gs) if isinstance(gs, list) else len(gs)
        for p in self.params:
            p.grad /= n

    # ---- privacy -----------------------------------------------------------------------------------
    @property
    def delta(self) -> float | None:
        """The delta epsilon is reported at: the hparam, else 1/(10 n_train); None before attach(n_train)."""
        if self.delta_hparam is not None:
            return self.delta_hparam
        return None if self.n_train is None else 0.1 / self.n_train

    @property
    def steps_accounted(self) -> int:
        return sum(int(h[2]) for h in self.accountant.history)

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default :attr:`delta`): 0 before the first step, inf with sigma = 0."""
        delta = self.delta if delta is None else delta
        if delta is None:
            raise ValueError("dp_sgd: no delta (attach(model, batch_size=..., n_train=...) or the delta hparam)")
        if self.steps_accounted == 0:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in self.accountant.history):
            return math.inf
        return float(self.accountant.get_epsilon(delta))

    def eval_metrics(self) -> dict[str, float]:
        """``dp/epsilon`` at ``dp/delta`` (the loop logs them at eval points and in the final metrics)."""
        if self.sample_rate is None:
            return {}
        return {"dp/epsilon": self.epsilon(), "dp/delta": float(self.delta)}

    # ---- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = self.original_optimizer.state_dict()
        sd[_STATE_KEY] = {"generator": self.generator.get_state(), "accountant": self.accountant.state_dict()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop(_STATE_KEY, None)
        self.original_optimizer.load_state_dict(state_dict)
        if extra is not None:
            self.generator.set_state(extra["generator"])
            acc = dict(extra["accountant"])
            acc["history"] = [tuple(h) for h in acc["history"]]  # a copy: step() edits it in place
            self.accountant.load_state_dict(acc)
