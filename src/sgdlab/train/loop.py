"""The training loop: on-device batching, one ``optimizer.step(closure)`` protocol, metrics,
checkpoints, exact resume and divergence detection.

Read top to bottom: input checks (everything that can be wrong is rejected before any parameter
changes), setup (optimizer, sampler, resume), the update loop, the final evaluation.
Hot path: per update, the minibatch is ``x[perm[pos:pos + B]]`` on the device, per-step loss and
correctness tensors are only *appended to lists*; the host syncs once per ``log_every`` steps.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import interrupt, rng
from sgdlab.integrity import CorruptFileError, quarantine
from sgdlab.optim import build_optimizer

from .batching import make_samplers
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .checks import check_data, check_optimizer, probe_model, resolve_device
from .config import DataTensors, LoopConfig, TrainResult
from .divergence import find_divergence
from .evaluate import evaluate, loss_fn
from .progress import make_progress
from .schedules import lr_factor

MetricSink = Callable[[dict[str, float], int], None]
StepHook = Callable[[int, nn.Module, torch.optim.Optimizer, float], "dict[str, float] | None"]


def _derive_seed(seed: int, stream: int) -> int:
    # independent streams for the batch sampler and the global RNG (same seed would correlate them)
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def train(
    model: nn.Module,
    optimizer_name: str,
    hparams: dict | None,
    data: DataTensors,
    cfg: LoopConfig,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    metric_sink: MetricSink | None = None,
    on_step: StepHook | None = None,
    progress: bool | Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with the registered optimizer ``optimizer_name`` on ``data``.

    The optimizer is stepped as ``optimizer.step(closure)``; ``closure(k)`` runs forward/backward on
    the k-th of the ``batches_per_step`` minibatches drawn for this step (accumulating over
    ``cfg.micro_batches`` physical micro-batches) and returns the detached mean loss;
    ``closure(k, backward=False)`` only evaluates that loss (zeroth-order families).
    ``metric_sink(metrics, step)`` receives ``train/loss``, ``train/acc`` (mean over the steps since
    the last log point), ``lr`` every ``log_every`` steps, ``test/loss``, ``test/acc`` at eval
    points, and at the end ``train_full/*`` (full training set, eval mode) with the final test
    metrics. An optimizer with ``eval_metrics()`` (DP-SGD: ``dp/epsilon``, ``dp/delta``) adds its metrics
    at eval points and at the end (to ``TrainResult.metrics`` too, even without ``final_eval``); families
    with ``spec.per_sample_grads`` get ``optimizer.attach(model, ...)`` before the first step and
    ``detach()`` at the end (the model is returned without hooks). ``on_step(step, model, optimizer,
    lr)`` runs after every update (1-based step) inside a forked global RNG; metrics it returns go to
    the sink at that step. With ``checkpoint_path``, a
    checkpoint is written every ``checkpoint_every`` steps and at the end, and an existing one is
    resumed from (``resume=True``) bit-exactly; a sink with a ``flush()`` method is flushed before each
    checkpoint. A checkpoint that is corrupt or not a checkpoint is moved aside (``<name>.corrupt-<time>``,
    a warning names both) and the run starts from step 0 (``TrainResult.quarantined``).
    Divergence stops the run with status "diverged". After a stop request (:mod:`sgdlab.interrupt`: SIGINT or
    SIGTERM under the CLI) the loop writes its checkpoint after the current update and raises
    :class:`~sgdlab.interrupt.Interrupted`.
    Bad input raises ValueError/TypeError before any parameter changes. For schedule-free
    optimizers (``spec.train_eval``) the model is returned holding the evaluation weights.
    """
    t_call = time.perf_counter()
    run = _prepare(model, optimizer_name, hparams, data, cfg, checkpoint_path, resume, metric_sink, on_step, progress)
    rng_devices = _rng_devices(run.device)
    with rng.forked(rng_devices, _derive_seed(cfg.seed, 1)):  # the caller's global RNG is restored after
        try:
            if run.ckpt is not None:
                with rng.LOCK:
                    run.restore(run.ckpt)
            run.begin()
            result = run.loop()
        finally:
            run.close()
            if not run.spec.train_eval:
                model.train(run.was_training)
    return TrainResult(**result, wall_time_s=time.perf_counter() - t_call, quarantined=run.quarantined)


def _prepare(model, optimizer_name, hparams, data, cfg, checkpoint_path, resume, metric_sink, on_step, progress):
    """Everything before the first update, shared with population training: input checks (nothing here
    changes the model's parameters), the optimizer, the batch samplers and the checkpoint to resume from
    (``run.ckpt``; restored by the caller inside its RNG fork)."""
    if not isinstance(cfg, LoopConfig):
        raise TypeError(f"cfg must be a LoopConfig, got {type(cfg).__name__}")
    spec, resolved, bps = check_optimizer(optimizer_name, hparams, cfg.task)
    check_data(data, cfg)
    device = resolve_device(cfg.device)
    use_cuda = device.type == "cuda"
    for flag in ("amp_bf16", "compile"):
        if getattr(cfg, flag) and not use_cuda:
            warnings.warn(f"LoopConfig.{flag}=True is ignored on {device.type}", stacklevel=3)
    if spec.per_sample_grads and cfg.compile:
        raise ValueError(
            f"optimizer {optimizer_name!r} records per-sample gradients with hooks on the model's layers; "
            "LoopConfig.compile=True is not supported with it"
        )
    xt, yt, xs, ys = (t.to(device) for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    if cfg.task == "classification":
        yt, ys = yt.long(), ys.long()
    xv = yv = None
    if cfg.eval_val:
        if data.x_val is None or data.y_val is None or len(data.x_val) == 0:
            raise ValueError("LoopConfig.eval_val=True needs a non-empty validation set (DataTensors.x_val, y_val)")
        xv, yv = data.x_val.to(device), data.y_val.to(device)
        if cfg.task == "classification":
            yv = yv.long()
    data = DataTensors(xt, yt, xs, ys, xv, yv)
    model.to(device)
    probe_model(model, data, cfg)
    ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if cfg.checkpoint_every and ckpt_path is None:
        raise ValueError(f"LoopConfig: checkpoint_every={cfg.checkpoint_every} needs checkpoint_path")
    ckpt, quarantined = None, None
    if ckpt_path and resume and ckpt_path.exists():
        try:
            ckpt = load_checkpoint(ckpt_path)
        except CorruptFileError as exc:  # never resume from wrong numbers: keep the file aside, start over
            quarantined = str(quarantine(ckpt_path))
            warnings.warn(f"{exc}; moved to {quarantined}; training this run from step 0", stacklevel=3)
    cfg_dict = cfg.to_dict()
    if ckpt is not None:
        check_compatible(ckpt, cfg_dict, optimizer_name, resolved, ckpt_path)
        if ckpt["step"] > cfg.steps:
            raise ValueError(
                f"checkpoint {str(ckpt_path)!r} is at step {ckpt['step']}, beyond LoopConfig steps={cfg.steps}"
            )

    # ---- setup: nothing above changed the model's parameters ----------------------------------
    was_training = model.training
    optimizer = build_optimizer(optimizer_name, model.named_parameters(), resolved)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    # the k-th minibatch of a step from its own stream (stream 0: the single-batch families, unchanged)
    samplers = make_samplers(
        cfg.sampling,
        xt.shape[0],
        cfg.batch_size,
        device,
        [_derive_seed(cfg.seed, 0)] + [_derive_seed(cfg.seed, 100 + k) for k in range(1, bps)],
    )
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp_bf16 and use_cuda else None
    fwd = torch.compile(model) if cfg.compile and use_cuda else model
    if spec.per_sample_grads:  # DP-SGD: checks the model (BatchNorm is refused), hooks live only inside step
        optimizer.attach(model, batch_size=cfg.batch_size, n_train=xt.shape[0], seed=_derive_seed(cfg.seed, 2))
    run = _Run(
        model,
        fwd,
        optimizer,
        spec,
        resolved,
        bps,
        samplers,
        data,
        cfg,
        amp,
        base_lrs,
        metric_sink,
        on_step,
        make_progress(progress, cfg.steps),
        device,
    )
    run.ckpt, run.quarantined, run.was_training = ckpt, quarantined, was_training
    run.ckpt_path, run.optimizer_name = ckpt_path, optimizer_name
    return run


class _Run:
    """State of one training run; split out of :func:`train` to keep the loop readable."""

    def __init__(
        self,
        model,
        fwd,
        optimizer,
        spec,
        hparams,
        bps,
        samplers,
        data,
        cfg,
        amp,
        base_lrs,
        sink,
        on_step,
        progress,
        device,
    ):
        self.model, self.fwd, self.opt, self.spec = model, fwd, optimizer, spec
        self.hparams = hparams
        self.bps, self.samplers, self.data, self.cfg, self.amp = bps, samplers, data, cfg, amp
        self.sampler = samplers[0]
        self.base_lrs, self.sink, self.on_step, self.progress = base_lrs, sink, on_step, progress
        self.device = device
        self.step = 0  # completed updates
        self.resumed_from = 0
        self.loss0: torch.Tensor | None = None  # loss of step 1 (divergence reference), on device
        self.win_loss: list[torch.Tensor] = []  # per-step mean losses since the last log point
        # train accuracy without per-step kernels: keep the (detached) logits and clean labels of
        # each minibatch and compare them once per log window
        self.win_logits: list[torch.Tensor] = []  # (B, C) each
        self.win_labels: list[torch.Tensor] = []  # (B,) each
        self.win_hits: list[torch.Tensor] = []  # (n,) bool "argmax == label" restored from a ckpt
        self.win_start = 1  # step number of win_loss[0]
        self.perturb = getattr(optimizer, "perturb_targets", None)
        self.eval_metrics = getattr(optimizer, "eval_metrics", None)  # DP-SGD: privacy spent so far
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recorded: list[torch.Tensor | None] = [None] * bps
        self.train_mode = False  # schedule-free optimizers: is opt in train mode
        self.closure = self._make_closure()
        self.cpu_rng_state: torch.Tensor | None = None  # population members: their own (see population.py)
        self.ckpt = self.quarantined = self.ckpt_path = self.optimizer_name = None  # set by _prepare
        self.was_training = True

    # ---- the closure of the step protocol --------------------------------------------------------
    def _make_closure(self):
        task, micro, opt = self.cfg.task, self.cfg.micro_batches, self.opt
        create_graph, fwd, amp = self.spec.create_graph, self.fwd, self.amp
        classify = task == "classification"
        run = self

        def forward_loss(x, y):
            with amp:
                out = fwd(x)
                return out, loss_fn(task, out, y)

        if amp is None and classify:  # the common case, without wrapper calls in the hot path

            def forward_loss(x, y):  # noqa: F811
                out = fwd(x)
                return out, F.cross_entropy(out, y)
        elif amp is None:

            def forward_loss(x, y):  # noqa: F811
                out = fwd(x)
                return out, loss_fn(task, out, y)

        def closure(k: int = 0, backward: bool = True) -> torch.Tensor:
            x, y, y_clean = run.batches[k]
            first = run.recorded[k] is None  # SAM-type methods call closure(k) again: record once
            if not backward:  # zeroth-order families: the loss only, no graph, grads left as they are
                with torch.no_grad():
                    out, loss = forward_loss(x, y)
                if first:
                    run.recorded[k] = loss
                    if classify:
                        run.win_logits.append(out)
                        run.win_labels.append(y_clean)
                return loss
            opt.zero_grad(set_to_none=True)
            if micro == 1:
                out, loss = forward_loss(x, y)
                loss.backward(create_graph=create_graph)
                loss = loss.detach()
                if first and classify:
                    run.win_logits.append(out.detach())
                    run.win_labels.append(y_clean)
            else:
                # sum of micro-batch mean losses / micro == mean loss over the batch
                loss = None
                for xm, ym, cm in zip(x.chunk(micro), y.chunk(micro), y_clean.chunk(micro)):
                    out, lm = forward_loss(xm, ym)
                    (lm / micro).backward(create_graph=create_graph)
                    lm = lm.detach()
                    loss = lm if loss is None else loss + lm
                    if first and classify:
                        run.win_logits.append(out.detach())
                        run.win_labels.append(cm)
                loss = loss / micro
            if first:
                run.recorded[k] = loss
            return loss

        return closure

    # ---- one update ----------------------------------------------------------------------------
    def _draw(self) -> None:
        xt, yt, next_indices = self.data.x_train, self.data.y_train, self.sampler.next_indices
        if self.perturb is None and self.bps == 1:  # fast path
            idx = next_indices()  # (B,)
            y = yt[idx]
            self.batches = [(xt[idx], y, y)]
            return
        batches = []
        for k in range(self.bps):
            idx = self.samplers[k].next_indices()  # (B,): independent streams across k
            y = yt[idx]
            # label-noise SGD: fresh noise per drawn minibatch; accuracy is against clean labels
            y_used = y if self.perturb is None else self.perturb(y, self.sampler.generator)
            batches.append((xt[idx], y_used, y))
        self.batches = batches

    def _set_lr(self, step: int) -> float:
        f = lr_factor(self.cfg.schedule, step, self.cfg.steps)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.base_lrs[0] * f

    def begin(self) -> None:
        """Before the first update of this call (fresh or resumed)."""
        self.constant_lr = self.cfg.schedule.kind == "constant"
        self.lr = self._set_lr(self.step)
        if self.spec.train_eval:
            self.opt.train()
        self.train_mode = True
        self.model.train()
        self.status, self.reason = "finished", None
        self.start_step, self.t0 = self.step, time.perf_counter()

    def draw(self) -> None:
        """The learning rate and the minibatches of the next update."""
        if not self.constant_lr:
            self.lr = self._set_lr(self.step)
        self._draw()
        self.recorded = [None] * self.bps

    def loop(self) -> dict[str, Any]:
        while self.step < self.cfg.steps:
            self.draw()
            if self.after_update(self.opt.step(self.closure)):
                break
            if interrupt.requested():  # Ctrl-C / SIGTERM: keep this step, then stop
                self.checkpoint_now()
                raise interrupt.Interrupted(
                    f"{interrupt.signal_name()}: stopped at step {self.step} of {self.cfg.steps}"
                )
        return self.end()

    def after_update(self, ret) -> bool:
        """Bookkeeping of the update just taken (``ret``: what ``step`` returned): window, hook, log, eval,
        sink, checkpoint. True when the run stops here (its last step, or diverged)."""
        cfg, rec = self.cfg, self.recorded
        if self.bps == 1 and rec[0] is not None:
            loss = rec[0]
        elif all(r is not None for r in rec):
            loss = torch.stack(rec).mean()
        else:  # the optimizer skipped a closure(k): fall back on the loss it returned
            loss = torch.as_tensor(ret).detach().reshape(())
        if self.loss0 is None:
            self.loss0 = loss
        self.win_loss.append(loss)
        self.step += 1
        step = self.step
        metrics: dict[str, float] = {}
        if self.on_step is not None:
            with rng.forked(_rng_devices(self.device)):
                extra = self.on_step(step, self.model, self.opt, self.lr)
            if not self.model.training:
                self.model.train()
            if extra:
                metrics.update(extra)
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            logged, reason = self._flush(self.lr)
            metrics.update(logged)
            if reason is not None:
                self.status, self.reason = "diverged", reason
        if cfg.eval_every and step % cfg.eval_every == 0 and not (last and cfg.final_eval):
            metrics.update(self._evaluate("test"))
            if cfg.eval_val:
                metrics.update(self._evaluate("val"))
            if self.eval_metrics is not None:
                metrics.update(self.eval_metrics())
        if metrics and self.sink is not None:
            self.sink(metrics, step)
        if self.status == "diverged":
            return True
        if self.ckpt_path is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last:
            self.checkpoint_now()
        return last

    def checkpoint_now(self) -> None:
        """Flush the sink, then write the checkpoint (if the run has a path)."""
        if self.ckpt_path is not None:
            self._flush_sink()
            self.save(self.ckpt_path, self.optimizer_name)

    def end(self) -> dict[str, Any]:
        """After the last update: final checkpoint and evaluation; the fields of the TrainResult."""
        cfg, opt = self.cfg, self.opt
        train_time = time.perf_counter() - self.t0
        opt.zero_grad(set_to_none=True)  # leave no .grad behind
        if self.spec.train_eval:
            opt.eval()  # schedule-free: the model now holds the evaluation weights, kept on return
        self.train_mode = False
        if self.status == "finished":
            self.checkpoint_now()
        final: dict[str, float] = {}
        logged: dict[str, float] = {}
        if cfg.final_eval:
            full = self._evaluate("train")
            final = {k.replace("train_full/", "train/"): v for k, v in full.items()}
            final.update(self._evaluate("test"))
            logged = {**full, **{k: v for k, v in final.items() if k.startswith("test/")}}
        if self.eval_metrics is not None:
            extra = self.eval_metrics()
            final.update(extra)
            logged.update(extra)
        if logged and self.sink is not None:
            self.sink(logged, self.step)
        samples = (self.step - self.start_step) * self.bps * cfg.batch_size
        return {
            "status": self.status,
            "reason": self.reason,
            "steps_done": self.step,
            "metrics": final,
            "samples_per_s": samples / train_time if train_time > 0 else 0.0,
            "resumed_from": self.resumed_from,
        }

    # ---- metrics -------------------------------------------------------------------------------
    def _flush(self, lr: float) -> tuple[dict[str, float], str | None]:
        """One host sync: window losses (and accuracy) -> metrics; divergence check."""
        if not self.win_loss:
            return {}, None
        params = [p.detach() for p in self.model.parameters() if p.requires_grad]
        norm_sq = torch.stack([(p.double() ** 2).sum() for p in params]).sum() if params else self.loss0 * 0
        parts = [torch.stack(self.win_loss).float(), self.loss0.reshape(1).float(), norm_sq.reshape(1).float()]
        hits = self._hits()
        if hits is not None:
            c = hits
            parts.append(torch.stack([c.sum(), torch.tensor(c.numel(), device=c.device)]).float())
        vals = torch.cat(parts).tolist()
        n = len(self.win_loss)
        losses, loss0 = vals[:n], vals[n]
        reason = find_divergence(losses, self.win_start, loss0, self.cfg.blowup_factor)
        # weights/norm: ||theta||_2 over the trainable parameters at the log point (weight-decay equilibria)
        metrics = {"train/loss": sum(losses) / n, "lr": lr, "weights/norm": math.sqrt(max(vals[n + 1], 0.0))}
        for owner in (self.opt, self.model):  # state worth a curve (Local SGD's H per round, feature concentration)
            if hasattr(owner, "log_metrics"):
                metrics.update(owner.log_metrics())
        if hits is not None:
            metrics["train/acc"] = vals[n + 2] / vals[n + 3]
        self.win_loss, self.win_logits, self.win_labels, self.win_hits = [], [], [], []
        self.win_start = self.step + 1
        if self.progress is not None:
            self.progress(self.step, self.cfg.steps, metrics)
        return metrics, reason

    def _hits(self) -> torch.Tensor | None:
        """(n,) bool "argmax == label" over the minibatches of the current window, or None."""
        hits = list(self.win_hits)
        if self.win_logits:
            hits.append(torch.cat(self.win_logits).argmax(1) == torch.cat(self.win_labels))
        return torch.cat(hits) if hits else None

    def _evaluate(self, split: str) -> dict[str, float]:
        x = getattr(self.data, f"x_{split}")
        y = getattr(self.data, f"y_{split}")
        swap = self.spec.train_eval and self.train_mode
        if swap:
            self.opt.eval()
        try:
            m = evaluate(self.fwd, x, y, self.cfg.task, self.cfg.eval_batch_size, self.amp)
        finally:
            if swap:
                self.opt.train()
        prefix = "train_full" if split == "train" else split
        return {f"{prefix}/{k}": v for k, v in m.items()}

    # ---- checkpoints ---------------------------------------------------------------------------
    def _flush_sink(self) -> None:
        """Push every metric point logged so far to its store *before* the checkpoint that covers it: a kill
        after the checkpoint then loses none (a kill before it replays them; the sink drops the repeats)."""
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def save(self, path: Path, optimizer_name: str) -> None:
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        save_checkpoint(
            path,
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "optimizer_name": optimizer_name,
                "hparams": dict(self.hparams),
                "config": self.cfg.to_dict(),
                "sampler": self.sampler.state_dict(),
                "samplers_extra": [smp.state_dict() for smp in self.samplers[1:]],
                "cpu_rng": torch.get_rng_state() if self.cpu_rng_state is None else self.cpu_rng_state,
                "cuda_rng": cuda_rng,
                "loss0": None if self.loss0 is None else self.loss0.detach().cpu(),
                "win_loss": [t.cpu() for t in self.win_loss],
                "win_hits": [] if (h := self._hits()) is None else [h.cpu()],
                "win_start": self.win_start,
                "optimizer_mode": "train" if self.train_mode or not self.spec.train_eval else "eval",
            },
        )

    def restore(self, ckpt: dict[str, Any]) -> None:
        dev = self.device
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sampler.load_state_dict(ckpt["sampler"])
        for smp, state in zip(self.samplers[1:], ckpt.get("samplers_extra", [])):
            smp.load_state_dict(state)
        torch.set_rng_state(ckpt["cpu_rng"])
        if ckpt["cuda_rng"] is not None and dev.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], dev)
        self.step = self.resumed_from = int(ckpt["step"])
        self.loss0 = None if ckpt["loss0"] is None else ckpt["loss0"].to(dev)
        self.win_loss = [t.to(dev) for t in ckpt["win_loss"]]
        self.win_hits = [t.to(dev) for t in ckpt["win_hits"]]
        self.win_start = int(ckpt["win_start"])
        if ckpt["optimizer_mode"] == "eval" and hasattr(self.opt, "train"):
            self.opt.train()  # a final schedule-free checkpoint holds evaluation weights

    def close(self) -> None:
        if self.progress is not None and hasattr(self.progress, "close"):
            self.progress.close()
        if self.spec.per_sample_grads:
            self.opt.detach()
