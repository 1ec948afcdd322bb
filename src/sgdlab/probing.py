"""Hessian probing of sweep runs: along training (an ``on_step`` hook) and on final checkpoints.

Both use the same fixed, seeded probe subset of the run's own training examples (:func:`run_probe_data`;
for a run on the whole training part that is ``TensorSplits.probe_idx``), of which the first
``probe.subset_size`` examples, and the loss the run trained on. Metric names:
``hessian/lambda_max``, ``hessian/trace``, ``hessian/threshold`` (2/eta for GD/SGD, the momentum and
Adam forms from :func:`sgdlab.hessian.stability_threshold`), ``hessian/precond_lambda_max`` for Adam.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sgdlab.sweep import RunSpec


def run_probe_data(splits, spec: RunSpec, size: int):
    """The first ``size`` examples of the run's probe subset (:func:`sgdlab.data.run_probe_data`)."""
    from sgdlab.data import run_probe_data as probe_data

    return probe_data(splits, spec.train_fraction, spec.seed, size, spec.data.label_noise)


def _loss(task: str):
    from sgdlab.train import loss_fn

    return functools.partial(loss_fn, task)


def sharpness_hook_factory(probe: dict[str, Any] | None):
    """``on_step_factory`` for :func:`sgdlab.runner.execute_run`: a SharpnessProbe every ``probe['every']``
    steps (None when ``every`` is 0)."""
    if not probe or not probe.get("every"):
        return None

    def factory(splits, spec: RunSpec):
        from sgdlab.hessian import SharpnessProbe

        return SharpnessProbe(
            _loss(splits.task),
            run_probe_data(splits, spec, probe["subset_size"]),
            every_k=probe["every"],
            k_eigs=probe["k"],
            tol=probe["tol"],
            n_trace_probes=probe["train_trace_probes"],
            trace_method=probe.get("trace_method", "hutchinson"),
            max_iter=probe["max_iter"],
            batch_size=probe["batch_size"],
            bn_mode=probe["bn_mode"],
            seed=probe["seed"],
        )

    return factory


def probe_checkpoint(spec: RunSpec, checkpoint: Path | str, splits, probe: dict[str, Any]) -> dict[str, float]:
    """Curvature of a finished run at its final checkpoint: top-k eigenvalues, trace (Hutchinson with its
    standard error), the stability threshold at the run's final lr, the preconditioned sharpness for
    Adam-family optimizers, and optionally the SLQ spectral density (returned under ``_density``)."""
    from sgdlab import hessian
    from sgdlab.models import build_model
    from sgdlab.optim import build_optimizer
    from sgdlab.train import load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint for run {spec.key}; run the sweep first")
    ckpt = load_checkpoint(path)
    model = build_model(
        spec.model,
        splits.input_shape,
        splits.num_outputs,
        seed=spec.seed,
        device=splits.x_train.device,
        **spec.model_kwargs,
    )
    model.load_state_dict(ckpt["model"])
    data = run_probe_data(splits, spec, probe["subset_size"])
    loss = _loss(splits.task)
    kw = dict(batch_size=probe["batch_size"], bn_mode=probe["bn_mode"], seed=probe["seed"])
    eig = hessian.top_eigenvalues(model, loss, data, k=probe["k"], tol=probe["tol"], max_iter=probe["max_iter"], **kw)
    out: dict[str, Any] = {
        "hessian/lambda_max": float(eig.eigenvalues[0]),
        "hessian/converged": float(eig.converged),
        "hessian/n_matvecs": float(eig.n_matvecs),
    }
    for i in range(1, len(eig.eigenvalues)):
        out[f"hessian/lambda_{i + 1}"] = float(eig.eigenvalues[i])
    trainable = [p for p in model.parameters() if p.requires_grad]
    spherical = hessian.spherical_factor(model, trainable, probe["bn_mode"])
    if spherical is not None:  # scale-invariant model: lambda_max at w/||w|| (Lyu, Li, Arora 2022)
        out["hessian/spherical_lambda_max"] = spherical * out["hessian/lambda_max"]
    if probe["trace_probes"]:
        tr = hessian.trace(
            model, loss, data, n_probes=probe["trace_probes"], method=probe.get("trace_method", "hutchinson"), **kw
        )
        out["hessian/trace"], out["hessian/trace_stderr"] = float(tr.estimate), float(tr.stderr)
    opt = build_optimizer(spec.optimizer, model.named_parameters(), spec.hparams)
    opt.load_state_dict(ckpt["optimizer"])
    lr = float(opt.param_groups[0]["lr"])
    try:
        out["hessian/threshold"] = float(hessian.stability_threshold(opt, lr))
    except (ValueError, TypeError):
        pass  # no known threshold for this family
    kind = hessian.optimizer_kind(opt)
    # Adam-kind (adam, adamw, rmsprop_bc = Adam(betas=(0, b2)), svag_adam): the threshold is the
    # preconditioned form, so the sharpness to compare with it is the preconditioned one
    adaptive = kind is not None and kind[0] == "adam"
    if "hessian/threshold" in out:
        out["hessian/threshold_preconditioned"] = float(adaptive)
    if adaptive:
        pre = hessian.preconditioned_sharpness(
            model, loss, data, opt, tol=probe["tol"], max_iter=probe["max_iter"], **kw
        )
        out["hessian/precond_lambda_max"] = float(pre.eigenvalues[0])
    if probe["density_probes"]:
        dens = hessian.spectral_density(
            model, loss, data, n_probes=probe["density_probes"], lanczos_steps=probe["lanczos_steps"], **kw
        )
        out["_density"] = {"grid": dens.grid.tolist(), "density": dens.density.tolist()}
    return out
