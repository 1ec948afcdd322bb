"""Population training: N runs of one architecture, one vectorised forward/backward per update.

The studies this platform runs are dominated by many small runs (seeds x learning rates of MLPs, diagonal
linear nets, small CNNs). One at a time they leave a CPU or GPU idle on kernel launches and Python overhead.
``train_population`` trains them together and is otherwise the single-run loop:

- Each member is an ordinary :func:`~sgdlab.train.train` run: its own model (its own initialisation), data,
  :class:`~sgdlab.train.LoopConfig` (they differ only in ``seed``), optimizer instance built by the registry
  with its own hyper-parameters and state, batch stream, metric sink, ``on_step`` hook and checkpoint.
  The bookkeeping (windows, divergence checks, evaluation, checkpoints, resume) is the single-run loop's
  own ``_Run``, so a member's metrics, checkpoint file and result are those of its single run.
- Per update, one ``torch.func.vmap`` of ``torch.func.functional_call`` computes all members' outputs and
  losses from their stacked parameters, and one ``backward`` of the summed losses gives every member its own
  gradient (the members are independent). Members drawing from one dataset gather their minibatches in one
  indexing op. The members train *packed*: each member's parameter is a row of one stacked leaf tensor per
  parameter name (``_pack``), so neither the forward nor the gradient copies weights, and the stack takes the
  memory layout of its gradient (a vmapped ``nn.Linear`` weight's comes transposed). Each member's optimizer
  updates its own rows in place.
  - plain ``torch.optim`` SGD, momentum, Nesterov, Adam, AdamW, rmsprop_bc and label-noise SGD members, and
    SVAG's (two minibatch gradients combined, then SGD / Adam), take one shared update in ``torch._foreach_*``
    calls (:mod:`~sgdlab.train.foreach_step`, bit-identical on the CPU);
  - other families step each member's optimizer with a closure that returns the loss already computed. That
    is exactly the single-run step for families whose ``step(closure)`` calls ``closure(k)`` once for each of
    its ``k < batches_per_step`` minibatches, all at the current parameters (``POPULATION_FAMILIES``; each is
    checked in ``tests/test_population.py``, packed). Families that re-evaluate the gradient at moved weights
    (SAM, GAM), need second-order graphs (AdaHessian) or keep worker copies (Local SGD) are trained one at a
    time (:func:`population_blocker` says why).
- A member that diverges is stopped at the log point that detects it, as alone; a member whose hook or
  optimizer raises is stopped with that error; the others go on.

Why not a vectorised optimizer for every family: the update maths stays the registry's (torch.optim,
pytorch-optimizer, this project's own families), so there is one implementation of each family to trust. The
forward/backward, which dominates small-model steps, is batched; so is the update of the torch.optim SGD/Adam
families, whose per-member ``step`` overhead was ~40% of a step for tiny models, by replaying torch's own
single-tensor algorithm with foreach ops (tested bit for bit against ``step``). In float64 a member's parameters match
its single run to ~1e-15 per step; in float32 the batched kernels round differently (tested tolerance in
the test module). ``make bench-population`` measures the speed against one run at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, vmap

from sgdlab import interrupt, rng

from .config import DataTensors, LoopConfig, TrainResult
from .evaluate import loss_fn
from .foreach_step import foreach_eligible, foreach_step, two_batch
from .loop import MetricSink, StepHook, _derive_seed, _prepare, _rng_devices
from .progress import make_progress

# step(closure) calls closure(k) once for each k < batches_per_step, in order, at the current parameters
POPULATION_FAMILIES = frozenset(
    {
        "sgd", "momentum", "nesterov", "adam", "adamw", "nadam", "radam", "rmsprop", "rmsprop_bc", "adagrad",
        "adafactor", "muon", "adabelief", "adabound", "adan", "apollo", "apollo_mini", "lamb", "lars", "lion",
        "label_noise_sgd", "normalized_gd", "psgd_kron", "sgd_sai", "shampoo", "sps", "svag", "svag_adam",
        "schedule_free_sgd", "schedule_free_adamw",
        "svag_momentum",
    }
)  # fmt: skip


# registry families built on plain torch.optim SGD / Adam / AdamW (foreach_step.py steps them together): one
# population may mix them (sgd with momentum with adam ...), as their members share the forward/backward and
# each keeps its own optimizer; other families populate only with their own kind
SHARED_UPDATE_FAMILIES = frozenset({"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop_bc"})

# the LoopConfig fields the shared forward/backward depends on: equal in every member. The others (steps,
# schedule, log/eval/checkpoint cadence, divergence threshold, sampling, seed) are each member's own bookkeeping,
# so members may differ in them (SVAG's l-scaled step counts train as one population); a member whose last step
# comes first leaves the population there
SHARED_LOOP_FIELDS = ("batch_size", "physical_batch_size", "device", "amp_bf16", "compile", "task")

# families that keep the contract above but are trained alone anyway, and why
TRAINED_ALONE = {
    "soap": "SOAP's eigendecompositions of rank-deficient gradient statistics turn rounding-level differences "
    "in the batched gradient into different bases (0.02 apart after 50 float64 steps)",
    "local_sgd": "Local SGD keeps per-worker copies of the model inside its step",
    "xgrad_sgd": "XGrad takes each gradient at weights predicted from its state (from step 2 on)",
    "xgrad_adam": "XGrad takes each gradient at weights predicted from its state (from step 2 on)",
    "xgrad_adamw": "XGrad takes each gradient at weights predicted from its state (from step 2 on)",
    "onebit_adam": "1-bit Adam scales each tensor's compressed momentum by its norm and keeps per-worker errors",
    "dp_sgd": "DP-SGD clips per-sample gradients, recorded by opacus' hooks on the model's own layers; the "
    "population's vmapped backward gives each member only its minibatch-mean gradient",
}


def population_blocker(model: nn.Module, optimizer_name: str, cfg: LoopConfig) -> str | None:
    """Why this run cannot be a population member (it then trains alone), or None if it can."""
    if optimizer_name in TRAINED_ALONE:
        return TRAINED_ALONE[optimizer_name]
    if optimizer_name not in POPULATION_FAMILIES:
        return f"optimizer {optimizer_name!r} does not step from one gradient per minibatch at the current weights"
    if cfg.micro_batches > 1:
        return "physical_batch_size splits each batch into micro-batches"
    if cfg.compile:
        return "LoopConfig.compile compiles one model"
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            return f"module {name or type(m).__name__!r} (BatchNorm) updates running statistics in place"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"module {name!r} (dropout) draws from the global RNG"
    return None


def member_bytes(
    model: nn.Module,
    optimizer_name: str,
    hparams: dict | None,
    batch_size: int,
    sample_shape: Sequence[int],
    task: str,
) -> dict[str, int]:
    """Memory one population member holds, in bytes, from shapes alone: ``model`` lives on the meta device,
    so nothing is computed or allocated.

    - ``weights`` and ``grads``: its parameters, once each;
    - ``optimizer_state``: the state tensors its optimizer holds after one step (the registry's optimizer
      stepped on meta tensors; where a family's step cannot run on meta, e.g. it reads a value with
      ``.item()``, two tensors per weight are assumed, as Adam keeps);
    - ``saved``: what autograd saves for backward in one forward at ``batch_size`` (counted with
      ``torch.autograd.graph.saved_tensors_hooks``; what ``bench/bench_population.py`` measures on real
      tensors), plus the minibatch (samples of ``sample_shape``) and the outputs;
    - ``total``: their sum. A population of N holds about N x total.
    """
    from sgdlab.optim import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    if not params or params[0].device.type != "meta":
        raise ValueError("member_bytes: build the model on the meta device (device='meta')")
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    weights = sum(nbytes(p) for p in params)
    x = torch.empty((batch_size, *sample_shape), device="meta", dtype=params[0].dtype)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += nbytes(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        y = (
            torch.empty(batch_size, device="meta", dtype=torch.long)
            if task == "classification"
            else torch.empty(out.shape[:1], device="meta", dtype=out.dtype)
        )
        loss = loss_fn(task, out, y)
    saved += nbytes(x) + nbytes(y) + nbytes(out)
    for p in params:
        p.grad = torch.empty_like(p)
    state = 2 * weights
    try:
        opt = build_optimizer(optimizer_name, model.named_parameters(), hparams)
        opt.step(lambda k=0: loss.detach())
        state = sum(nbytes(t) for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor))
    except Exception:  # noqa: BLE001 - a family whose step needs real values: the Adam-like assumption
        pass
    finally:
        for p in params:
            p.grad = None
    total = 2 * weights + state + saved
    return {"weights": weights, "grads": weights, "optimizer_state": state, "saved": saved, "total": total}


def available_bytes(device: str | torch.device) -> int:
    """Memory free for new tensors on ``device`` (``"auto"`` resolved as training does): CUDA's free memory,
    else the host's available memory (``MemAvailable`` in ``/proc/meminfo``; free pages where there is none)."""
    from sgdlab.device import resolve_device

    device = resolve_device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Member:
    """One run of a population: the arguments of :func:`~sgdlab.train.train` for it."""

    model: nn.Module
    optimizer_name: str
    hparams: dict | None
    data: DataTensors
    cfg: LoopConfig
    checkpoint_path: str | Path | None = None
    metric_sink: MetricSink | None = None
    on_step: StepHook | None = None


def check_population(members: Sequence[Member]) -> None:
    """Raise ValueError naming the member and the field when the members cannot share updates."""
    if not members:
        raise ValueError("a population needs at least one member")
    first = members[0]
    base = first.cfg.to_dict()
    shapes = [(n, tuple(p.shape), p.dtype) for n, p in first.model.named_parameters()]
    buffers = [(n, tuple(b.shape), b.dtype) for n, b in first.model.named_buffers()]
    for i, m in enumerate(members):
        where = f"population member {i}"
        blocker = population_blocker(m.model, m.optimizer_name, m.cfg)
        if blocker:
            raise ValueError(f"{where}: {blocker}; train it alone")
        if m.optimizer_name != first.optimizer_name and not {m.optimizer_name, first.optimizer_name} <= (
            SHARED_UPDATE_FAMILIES
        ):
            raise ValueError(
                f"{where}: optimizer {m.optimizer_name!r} differs from member 0's {first.optimizer_name!r} "
                f"(only {', '.join(sorted(SHARED_UPDATE_FAMILIES))} mix in one population)"
            )
        other = m.cfg.to_dict()
        for key in SHARED_LOOP_FIELDS:
            if other[key] != base[key]:
                raise ValueError(f"{where}: LoopConfig.{key}={other[key]!r} differs from member 0's {base[key]!r}")
        if type(m.model) is not type(first.model):
            raise ValueError(f"{where}: model {type(m.model).__name__} differs from member 0's")
        if [(n, tuple(p.shape), p.dtype) for n, p in m.model.named_parameters()] != shapes or [
            (n, tuple(b.shape), b.dtype) for n, b in m.model.named_buffers()
        ] != buffers:
            raise ValueError(f"{where}: model parameters or buffers differ in names, shapes or dtypes from member 0's")
        if m.data.x_train.shape[1:] != first.data.x_train.shape[1:]:
            raise ValueError(f"{where}: input shape {tuple(m.data.x_train.shape[1:])} differs from member 0's")
        if m.model is first.model and i:
            raise ValueError(f"{where}: the same model object as member 0")


def train_population(
    members: Sequence[Member], *, resume: bool = True, progress=None
) -> list[TrainResult | BaseException]:
    """Train every member as :func:`~sgdlab.train.train` would, with shared vectorised updates.

    Returns, per member, its :class:`TrainResult` or the exception that stopped it (bad input raises
    before any member changes). ``wall_time_s`` and ``samples_per_s`` are the population's: the members
    share the wall clock. After a stop request (:mod:`sgdlab.interrupt`) every member still training
    writes its checkpoint, then :class:`~sgdlab.interrupt.Interrupted` is raised.
    ``progress``: as for ``train``, called at log points with the population's step and
    ``{"members": number still training}``.
    """
    t_call = time.perf_counter()
    check_population(members)
    runs = []
    for i, m in enumerate(members):
        try:
            runs.append(
                _prepare(
                    m.model, m.optimizer_name, m.hparams, m.data, m.cfg, m.checkpoint_path, resume,
                    m.metric_sink, m.on_step, None,
                )
            )  # fmt: skip
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"population member {i}: {exc}") from None
    device = runs[0].device
    if any(r.device != device for r in runs):
        raise ValueError("population members must train on one device")
    show = make_progress(progress, max(m.cfg.steps for m in members))
    results: list[TrainResult | BaseException | None] = [None] * len(runs)
    rng_devices = _rng_devices(device)
    with rng.forked(rng_devices):  # the caller's global RNG is restored after
        try:
            for r, m in zip(runs, members):
                # what a single run's global RNG holds at its checkpoints: nothing in a member's step draws
                # from it (population_blocker), so its seeded (or restored) state
                with rng.LOCK:
                    torch.default_generator.manual_seed(_derive_seed(m.cfg.seed, 1))
                    if r.ckpt is not None:
                        r.restore(r.ckpt)
                    r.cpu_rng_state = torch.get_rng_state()
                r.begin()
            pop = _Population(runs, results, show)
            try:
                pop.loop()
            finally:
                pop._unpack()
        finally:
            for r in runs:
                r.close()
                if not r.spec.train_eval:
                    r.model.train(r.was_training)
            if show is not None and hasattr(show, "close"):
                show.close()
    wall = time.perf_counter() - t_call
    out: list[TrainResult | BaseException] = []
    for r, res in zip(runs, results):
        if isinstance(res, dict):
            res = TrainResult(**res, wall_time_s=wall, quarantined=r.quarantined)
        out.append(res)
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same values (label-noise runs each hold an equal copy of their noisy labels)."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


def _layout(t: torch.Tensor) -> tuple[int, ...] | None:
    """``t``'s dimensions from the innermost (smallest stride) out, if its elements fill their span without
    overlap or gaps (a layout a tensor of another leading size can take too); None otherwise."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), d))
    expected = 1
    for d in order:
        if t.shape[d] != 1 and t.stride(d) != expected:
            return None
        expected *= t.shape[d]
    return tuple(order)


def _strides(shape: torch.Size, order: tuple[int, ...]) -> tuple[int, ...]:
    """Dense strides of ``shape`` with dimensions laid out innermost-first as ``order``."""
    strides, step = [0] * len(shape), 1
    for d in order:
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


class _Population:
    """The shared update of the members still training; each member's bookkeeping is its own ``_Run``."""

    def __init__(self, runs, results, show) -> None:
        self.runs, self.results, self.show = runs, results, show
        template = runs[0].model
        self.template = template
        self.param_names = [n for n, _ in template.named_parameters()]
        self.buffer_names = [n for n, _ in template.named_buffers()]
        self.bps = runs[0].bps
        self.task = runs[0].cfg.task
        self.amp = runs[0].amp
        # plain torch.optim SGD/Adam/AdamW members (one minibatch per step) and SVAG members (two) step together
        # (foreach_step.py); others one by one
        self.foreach = all(foreach_eligible(r.opt) is None for r in runs) and (
            self.bps == 1 or (self.bps == 2 and all(two_batch(r.opt) for r in runs))
        )
        task = self.task

        names = self.param_names + self.buffer_names

        def member_loss(tensors, x, y):  # a flat tuple flattens faster than dicts in vmap's pytree handling
            out = functional_call(template, dict(zip(names, tensors)), (x,))
            return out, loss_fn(task, out, y)

        self.batched = vmap(member_loss)
        # the members' tensors, listed once (their identities never change; named_parameters per step costs)
        self.params = {id(r): [q for _, q in r.model.named_parameters()] for r in runs}
        self.buffers = {id(r): [q for _, q in r.model.named_buffers()] for r in runs}
        # members drawing from the same tensors: their minibatches are gathered in one indexing op per k,
        # xt[stacked indices] (the values each would gather alone)
        xt, yt = runs[0].data.x_train, runs[0].data.y_train
        self.shared_data = all(r.data.x_train is xt and _same(r.data.y_train, yt) for r in runs)
        self.perturb = any(r.perturb is not None for r in runs)
        if self.perturb and not all(r.perturb is not None for r in runs):
            self.shared_data = False  # a mix of noisy and clean members: each draws as alone
        # the members train "packed": see _pack
        self.packed: list | None = None  # the live members the stacks hold, in order
        self.stacks: list[torch.Tensor] = []
        self.views: list[tuple[torch.Tensor, int]] = []  # (member parameter, the address it must keep)
        # the memory layout (dimension order) of each stacked parameter's gradient as the backward produces it: a stack
        # laid out alike takes its gradient as is, where autograd would copy it into the stack's own layout (a
        # vmapped nn.Linear's weight gradient comes transposed: that copy cost 9 ms of a 36 ms step, 16 MLPs
        # 784-256-10 at batch 128)
        self.grad_layout: dict[int, tuple[int, ...] | None] = {}

    def _pack(self, live) -> None:
        """Stack the live members' parameters once into one leaf tensor per parameter name and make each
        member's parameter a view of its row (``param.data = stack[i]``).

        The forward then reads the stacks with no per-step copy, the backward leaves one gradient per stack
        (each member's ``.grad`` is set to its row, no accumulation copy), and the members' optimizers update
        the rows in place through their own parameters. This needs optimizers that update parameters in place
        and keep no alias of a parameter's storage from before the packing: every family of
        ``POPULATION_FAMILIES`` is checked against its single run, packed. A parameter found re-bound (an
        ``on_step`` hook or an optimizer assigning ``.data``) is repacked from its values. Checkpoints stay per
        member: :func:`sgdlab.integrity.save_verified` writes a view's own elements. The members' own weight
        storage is released, so the stack is no extra copy.
        """
        self._unpack()
        self.stacks = []
        with torch.no_grad():
            for j in range(len(self.param_names)):
                values = torch.stack([self.params[id(r)][j] for r in live])
                order = self.grad_layout.get(j)
                strides = None if order is None else _strides(values.shape, order)
                if strides is not None and strides != values.stride():
                    values = torch.empty_strided(values.shape, strides, dtype=values.dtype, device=values.device).copy_(
                        values
                    )
                self.stacks.append(values.requires_grad_(self.params[id(live[0])][j].requires_grad))
        self.views = []
        for i, r in enumerate(live):
            for q, s in zip(self.params[id(r)], self.stacks):
                q.data = s.detach()[i]
                self.views.append((q, q.data_ptr()))
        self.packed = list(live)

    def _unpack(self) -> None:
        """Give every packed member's parameters (and gradients) their own storage again."""
        for q, ptr in self.views:
            if q.data_ptr() == ptr:
                q.data = q.data.clone()
            if q.grad is not None:
                q.grad = q.grad.clone()
        self.views, self.stacks, self.packed = [], [], None

    def _packed_ok(self, live) -> bool:
        return (
            self.packed is not None
            and len(self.packed) == len(live)
            and all(a is b for a, b in zip(self.packed, live))
            and all(q.data_ptr() == ptr for q, ptr in self.views)
        )

    def _draw(self, live) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each live member's learning rate and minibatches of the next update, as alone; per minibatch k,
        the stacked (inputs, targets used, clean labels) of all live members."""
        if not self.shared_data:
            for r in live:
                r.draw()
            return [tuple(torch.stack([r.batches[k][j] for r in live]) for j in range(3)) for k in range(self.bps)]
        for r in live:  # Run.draw without the gathers
            if not r.constant_lr:
                r.lr = r._set_lr(r.step)
            r.recorded = [None] * self.bps
        data, out = live[0].data, []
        for k in range(self.bps):  # each member's draws in its own order: indices k, then its label noise for k
            idx = torch.stack([r.samplers[k].next_indices() for r in live])  # (N, B)
            y = data.y_train[idx]
            y_used = y
            if self.perturb:  # label-noise SGD: each member's fresh noise, from its own generator
                y_used = torch.stack([r.perturb(y[i], r.sampler.generator) for i, r in enumerate(live)])
            out.append((data.x_train[idx], y_used, y))
        return out

    def _forward_backward(self, live, batches) -> list[list[list[torch.Tensor | None]]] | None:
        """Gradients of every live member on each of its minibatches (``batches``: from :meth:`_draw`);
        recorded losses and logits as alone. With one minibatch per step the gradients stay on ``.grad``;
        with more they are returned per k."""
        params = [self.params[id(r)] for r in live]
        buffers = [self.buffers[id(r)] for r in live]
        stashed = [] if self.bps > 1 else None
        classify = self.task == "classification"
        if not self._packed_ok(live):
            self._pack(live)
        for k in range(self.bps):
            hooks = []
            stacked = tuple(self.stacks)
            for j, s in enumerate(self.stacks):
                s.grad = None
                if j not in self.grad_layout and s.requires_grad:  # learn the gradient's layout at the first backward
                    hooks.append(s.register_hook(lambda g, j=j: self.grad_layout.__setitem__(j, _layout(g))))
            tensors = stacked + tuple(torch.stack([bs[j] for bs in buffers]) for j in range(len(self.buffer_names)))
            x, y, y_clean = batches[k]
            if self.amp is not None:
                with self.amp:
                    out, loss = self.batched(tensors, x, y)
            else:
                out, loss = self.batched(tensors, x, y)
            loss.sum().backward()  # members are independent: d(sum)/d(member i's weights) = its own gradient
            out, loss = out.detach(), loss.detach()
            if hooks:
                for h in hooks:
                    h.remove()
                if any(
                    (order := self.grad_layout.get(j)) is not None and _strides(s.shape, order) != s.stride()
                    for j, s in enumerate(self.stacks)
                ):
                    self.packed = None  # repack in the gradients' layout before the next step
            for i, ps in enumerate(params):  # each member's gradient: its row of the stack's (zero_grad's job too)
                for q, s in zip(ps, self.stacks):
                    q.grad = None if s.grad is None else s.grad[i]
            for i, r in enumerate(live):
                r.recorded[k] = loss[i]
                if classify:
                    r.win_logits.append(out[i])
                    r.win_labels.append(y_clean[i])
            if stashed is not None:
                stashed.append([[q.grad for q in ps] for ps in params])
                for ps in params:
                    for q in ps:
                        q.grad = None
        return stashed

    def loop(self) -> None:
        runs, results = self.runs, self.results
        active = [i for i, r in enumerate(runs) if r.step < r.cfg.steps]
        for i, r in enumerate(runs):
            if i not in active:
                results[i] = r.end()  # resumed from its final checkpoint: only the final evaluation
        steps = max(r.cfg.steps for r in runs)  # the population's last step (members may stop before)
        show_every = min(r.cfg.log_every for r in runs)
        while active:
            live = [runs[i] for i in active]
            stashed = self._forward_backward(live, self._draw(live))
            stopped = []
            if self.foreach:  # every member's torch.optim update in shared foreach calls (bit-identical on CPU)
                first = None
                if stashed is not None:  # SVAG: minibatch 1's gradients on .grad, minibatch 0's passed along
                    first = {}
                    for j, r in enumerate(live):
                        for q, g0, g1 in zip(self.params[id(r)], stashed[0][j], stashed[1][j]):
                            q.grad, first[q] = g1, g0
                foreach_step([r.opt for r in live], first)
            for j, (i, r) in enumerate(zip(active, live)):
                try:
                    ret = r.recorded[0] if self.foreach else r.opt.step(self._closure(r, j, stashed))
                    if r.after_update(ret):
                        results[i] = r.end()
                        stopped.append(i)
                except Exception as exc:  # this member stops with its error; the others go on
                    results[i] = exc
                    stopped.append(i)
            active = [i for i in active if i not in stopped]
            step = max(r.step for r in live)
            if self.show is not None and (step % show_every == 0 or not active):
                self.show(step, steps, {"members": float(len(active))})
            if active and interrupt.requested():  # Ctrl-C / SIGTERM: every member keeps this step, then stop
                for i in active:
                    runs[i].checkpoint_now()
                raise interrupt.Interrupted(
                    f"{interrupt.signal_name()}: stopped at step {step} of {steps} ({len(active)} population members)"
                )

    def _closure(self, r, j: int, stashed):
        params = self.params[id(r)]

        def closure(k: int = 0) -> torch.Tensor:
            if stashed is not None:
                for q, g in zip(params, stashed[k][j]):
                    q.grad = g
            return r.recorded[k]

        return closure
