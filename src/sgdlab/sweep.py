"""Sweeps as data: expand ``params.yaml``'s grid into run specs, each with a stable run key.

A sweep is optimizers (each with one or more lrs) x batch sizes x seeds x models, plus, for every base
run a scaling-rule or SVAG variant applies to, the transformed run (``sweep.variants``). Everything is
validated here, before any training: unknown optimizer (with close names), hyper-parameters the
optimizer does not take, lr <= 0, unknown model or model kwargs, a variant outside its rule's validity.

The run key is a hash of the resolved run spec, which holds the :class:`~sgdlab.data.DataSpec` (content
hash of the prepared data, validation split, split seed, probe subset, train fraction) and, when the Hessian
is probed along training, the probe settings: every setting that changes what a run sees or records. Re-running
a finished key is a cache hit, an interrupted one resumes from its checkpoint (``models/<study>/<run_key>/``).
"""

from __future__ import annotations

import itertools
from typing import Any

from sgdlab.config import Config, ModelConfig, VariantConfig
from sgdlab.data.spec import DataSpec
from sgdlab.runspec import RunSpec, run_key  # noqa: F401  (re-exported)


class SweepError(ValueError):
    """A sweep that cannot run as configured; the message names the params.yaml key."""


PROBE_KEYS = (
    "every",
    "subset_size",
    "batch_size",
    "bn_mode",
    "k",
    "tol",
    "max_iter",
    "train_trace_probes",
    "trace_method",
    "seed",
)


def probe_settings(cfg: Config) -> dict[str, Any] | None:
    """The probe settings a run records along training (None when ``probe.every`` is 0)."""
    return {k: getattr(cfg.probe, k) for k in PROBE_KEYS} if cfg.probe.every else None


def loop_settings(cfg: Config) -> dict[str, Any]:
    t = cfg.train
    return {
        "physical_batch_size": t.physical_batch_size,
        "schedule": t.schedule.model_dump(),
        "log_every": t.log_every,
        "eval_every": t.eval_every,
        "checkpoint_every": t.checkpoint_every,
        "blowup_factor": t.blowup_factor,
        "amp_bf16": t.amp_bf16,
        "compile": t.compile,
        "sampling": t.sampling,
        # only when on, so the run keys of studies that do not use it stay as they were
        **({"eval_val": True} if t.eval_val else {}),
    }


def _check_model(i: int, m: ModelConfig) -> None:
    from sgdlab.models import list_models, model_kwargs

    names = list_models()
    if m.name not in names:
        raise SweepError(
            f"params.yaml: sweep.models[{i}].name = {m.name!r}: unknown model; allowed: {', '.join(names)}"
        )
    allowed = model_kwargs(m.name)
    for k in m.kwargs:
        if k not in allowed:
            raise SweepError(
                f"params.yaml: sweep.models[{i}].kwargs.{k}: model {m.name!r} takes no {k!r}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )


def _variant(spec: RunSpec, v: VariantConfig) -> RunSpec | None:
    """Apply a scaling rule; None when the rule does not cover the optimizer (the base run stays)."""
    from dataclasses import replace

    from sgdlab.optim import scaling

    rules = {
        "linear": (scaling.linear_scaling, scaling.LINEAR_OPTIMIZERS),
        "sqrt": (scaling.sqrt_scaling, scaling.SQRT_OPTIMIZERS),
        "svag": (
            scaling.svag,
            scaling.SVAG_SGD_OPTIMIZERS + scaling.SVAG_MOMENTUM_OPTIMIZERS + scaling.SVAG_ADAM_OPTIMIZERS,
        ),
        "batch_only": (scaling.batch_only, None),  # baselines: every optimizer
        "linear_lr": (scaling.linear_lr, None),
    }
    fn, covered = rules[v.rule]
    if covered is not None and spec.optimizer not in covered:
        return None
    factor = int(v.factor) if float(v.factor).is_integer() else v.factor
    s = scaling.OptimSetting(spec.optimizer, spec.hparams, spec.batch_size, spec.steps)
    try:
        out = fn(s, factor)
    except scaling.ScalingError as exc:
        raise SweepError(f"params.yaml: sweep.variants ({v.rule} x{v.factor:g}) for {spec.label}: {exc}") from None
    from sgdlab.optim import resolve_hparams

    return replace(
        spec,
        optimizer=out.optimizer,
        hparams=resolve_hparams(out.optimizer, out.hparams),
        batch_size=out.batch_size,
        steps=out.steps,
        variant=f"{v.rule}x{v.factor:g}",
        base_key=spec.key,
        loop=map_loop(spec.loop, spec.steps, out.steps),
        probe=map_probe(spec.probe, spec.steps, out.steps),
    )


STEP_FIELDS = ("warmup_steps", "step_size")  # schedule fields counted in optimizer steps


def map_schedule(schedule: dict[str, Any], base_steps: int, new_steps: int) -> dict[str, Any]:
    """The base run's schedule for a variant that runs ``new_steps`` instead of ``base_steps``.

    A schedule means points in *epochs* (linear and square-root rules: same epochs, batch x kappa, so
    steps / kappa; Goyal et al. 2017, Malladi et al. 2022) or in *SDE time* (SVAG: t = steps x lr is kept,
    steps x l for SGD, x l^2 for Adam; Li, Malladi, Arora 2021). Both are the same fraction of the run, so
    every step-valued field (warm-up length, decay interval) scales by ``new_steps / base_steps``; the
    cosine horizon is already a fraction of the run. Rounded to whole steps, at least 1 where the kind
    needs it."""
    ratio = new_steps / base_steps
    out = dict(schedule)
    for key in STEP_FIELDS:
        if key in out and out[key]:
            out[key] = max(1, int(round(out[key] * ratio)))
    return out


CADENCE_FIELDS = ("log_every", "eval_every", "checkpoint_every")  # loop settings counted in steps


def _scaled_cadence(every: int, ratio: float) -> int:
    return 0 if not every else max(1, int(round(every * ratio)))


def map_loop(loop: dict[str, Any], base_steps: int, new_steps: int) -> dict[str, Any]:
    """The base run's loop settings for a variant: the schedule (:func:`map_schedule`) and the logging,
    evaluation and checkpoint cadences scaled by ``new_steps / base_steps``, so a variant logs, evaluates
    and saves at the same points in epochs / SDE time as its base run (its curves can be compared point for
    point; rounded to whole steps, at least 1)."""
    ratio = new_steps / base_steps
    out = {**loop, "schedule": map_schedule(loop["schedule"], base_steps, new_steps)}
    for key in CADENCE_FIELDS:
        out[key] = _scaled_cadence(loop[key], ratio)
    return out


def map_probe(probe: dict[str, Any] | None, base_steps: int, new_steps: int) -> dict[str, Any] | None:
    """In-training probe settings for a variant: the probe cadence scaled like :func:`map_loop`."""
    if probe is None:
        return None
    return {**probe, "every": _scaled_cadence(probe["every"], new_steps / base_steps)}


def _check_loop(cfg: Config, loop: dict[str, Any], batch_size: int, steps: int) -> None:
    """Build the run's LoopConfig now, so a loop setting it refuses fails at load, naming the key."""
    from sgdlab.train import LoopConfig

    try:
        LoopConfig(steps=steps, batch_size=batch_size, **loop)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"params.yaml: train (batch size {batch_size}, {steps} steps): {exc}") from None


def _search_hparams(opt, where: str) -> list[tuple[dict, dict]]:
    """The resolved hyper-parameters of every trial of ``opt.search`` (:mod:`sgdlab.optbench.search`), each
    with the ``extra`` that makes it its own run key: ``{"search": {kind, seed, study, trial}}``."""
    from sgdlab.optbench import search
    from sgdlab.optim import OptimizerConfigError, resolve_hparams

    sc = opt.search
    try:
        base = resolve_hparams(opt.name, {**opt.hparams, "lr": opt.lrs[0]})
    except (OptimizerConfigError, ValueError) as exc:
        raise SweepError(f"{where}: {exc}") from None
    out = []
    for tr in search.trials(sc):
        try:
            hp = resolve_hparams(opt.name, search.apply(tr["values"], base))
        except KeyError as exc:
            raise SweepError(f"{where}: search.space: {exc.args[0]}") from None
        except (OptimizerConfigError, ValueError) as exc:
            raise SweepError(f"{where}: search trial {tr['study']}/{tr['trial']} {tr['values']}: {exc}") from None
        meta = {"kind": sc.kind, "seed": sc.seed, "study": tr["study"], "trial": tr["trial"]}
        out.append((hp, {"search": meta}))
    return out


def _grid(cfg: Config, data: DataSpec, n_train: int | None, resolved: list):
    """``(group, spec)`` for every model x optimizer entry x hyper-parameters x batch size x train fraction
    x steps x seed; ``group`` is ``(model index, entry index, hparams index, bs, frac, steps)``: the spec
    without its seed. ``resolved``: ``(entry index, optimizer, [(hparams, extra)], schedule)``."""
    from dataclasses import replace

    sw = cfg.sweep
    loop = loop_settings(cfg)
    probe = probe_settings(cfg)
    for mi, m in enumerate(sw.models):
        for ei, name, hps, schedule in resolved:
            run_loop = loop if schedule is None else {**loop, "schedule": schedule.model_dump()}
            for hi, (hp, extra) in enumerate(hps):
                for bs in sw.batch_sizes:
                    for frac in sw.train_fractions:
                        n = None if n_train is None else int(n_train * frac)
                        if n is not None and bs > n:
                            raise SweepError(
                                f"params.yaml: sweep.batch_sizes: {bs} is larger than the {n} training "
                                f"examples of {cfg.train.dataset!r} (train fraction {frac:g})"
                            )
                        for steps, noise in itertools.product(sw.steps or (cfg.train.steps,), sw.label_noise):
                            for seed in sw.seeds:
                                spec = RunSpec(
                                    replace(data, train_fraction=frac, label_noise=noise),
                                    m.name,
                                    dict(m.kwargs),
                                    name,
                                    hp,
                                    bs,
                                    steps,
                                    seed,
                                    run_loop,
                                    probe,
                                    extra=extra,
                                )
                                yield (mi, ei, hi, bs, frac, steps, noise), spec


def searches(cfg: Config, data: DataSpec, n_train: int | None = None) -> list:
    """The adaptive (``tpe``) searches of the sweep: one :class:`~sgdlab.optbench.tpe.SearchUnit` per entry x
    model x batch size x train fraction x steps x search study, holding one template spec per sweep seed
    (a trial trains every seed and scores their mean). Validated here, before any training: the space keys
    against the optimizer, the objective against the data split, no scaling-rule variants."""
    from sgdlab.optbench import search
    from sgdlab.optbench.tpe import SearchUnit
    from sgdlab.optim import OptimizerConfigError, resolve_hparams

    sw = cfg.sweep
    for i, m in enumerate(sw.models):
        _check_model(i, m)
    resolved = []
    for i, opt in enumerate(sw.optimizers):
        if opt.search is None or opt.search.kind != "tpe":
            continue
        where = f"params.yaml: sweep.optimizers[{i}] ({opt.name})"
        if sw.variants:
            raise SweepError(
                f"{where}: search.kind tpe: sweep.variants do not apply to adaptive searches (a variant "
                "transforms a run fixed in advance); run the variants in a study of their own"
            )
        if opt.search.objective.metric.startswith("val/") and cfg.data.val_fraction == 0:
            raise SweepError(
                f"{where}: search.objective.metric = {opt.search.objective.metric!r} needs a validation part: "
                "set data.val_fraction > 0 (e.g. 0.1), or use a train/ metric"
            )
        try:
            base = resolve_hparams(opt.name, {**opt.hparams, "lr": opt.lrs[0]})
            mid = {k: (p.low * p.high) ** 0.5 if p.log else (p.low + p.high) / 2 for k, p in opt.search.space.items()}
            resolve_hparams(opt.name, search.apply(mid, base))  # the space's keys exist and take its values
        except KeyError as exc:
            raise SweepError(f"{where}: search.space: {exc.args[0]}") from None
        except (OptimizerConfigError, ValueError) as exc:
            raise SweepError(f"{where}: {exc}") from None
        resolved.append((i, opt.name, [(base, {})], opt.schedule))
    groups: dict[tuple, list[RunSpec]] = {}
    for group, spec in _grid(cfg, data, n_train, resolved):
        groups.setdefault(group, []).append(spec)
    out = []
    for (_, ei, *_), templates in groups.items():
        t = templates[0]
        _check_loop(cfg, t.loop, t.batch_size, t.steps)
        sc = sw.optimizers[ei].search
        for s in range(sc.studies):
            out.append(SearchUnit(ei, s, sc, tuple(templates)))
    return out


def expand(cfg: Config, data: DataSpec, n_train: int | None = None) -> list[RunSpec]:
    """The sweep's run specs, validated (see module docstring); ``n_train`` enables the batch-size check."""
    from sgdlab.optim import OptimizerConfigError, resolve_hparams

    sw = cfg.sweep
    for i, m in enumerate(sw.models):
        _check_model(i, m)
    resolved: list[tuple[int, str, list[tuple[dict, dict]], Any]] = []
    for i, opt in enumerate(sw.optimizers):
        hps: list[tuple[dict, dict]] = []  # (resolved hparams, spec.extra)
        where = f"params.yaml: sweep.optimizers[{i}] ({opt.name})"
        if opt.search is None:
            for lr in opt.lrs:
                try:
                    hps.append((resolve_hparams(opt.name, {**opt.hparams, "lr": lr}), {}))
                except (OptimizerConfigError, ValueError) as exc:
                    raise SweepError(f"{where}: {exc}") from None
        elif opt.search.kind == "tpe":
            continue  # adaptive: its trials are chosen while it runs (:func:`searches`)
        else:
            hps = _search_hparams(opt, where)
        resolved.append((i, opt.name, hps, opt.schedule))
    specs = [spec for _, spec in _grid(cfg, data, n_train, resolved)]
    base = list(specs)
    for v in sw.variants:
        for spec in base:
            new = _variant(spec, v)
            if new is not None:
                if n_train is not None and new.batch_size > n_train:
                    raise SweepError(
                        f"params.yaml: sweep.variants ({v.rule} x{v.factor:g}): batch size "
                        f"{new.batch_size} of {spec.label} exceeds the {n_train} training examples"
                    )
                specs.append(new)
    import json

    checked = set()
    for s in specs:  # each distinct loop once (variants have their own cadences)
        sig = (s.batch_size, s.steps, json.dumps(s.loop, sort_keys=True))
        if sig not in checked:
            checked.add(sig)
            _check_loop(cfg, s.loop, s.batch_size, s.steps)
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):  # duplicates in the grid (e.g. the same lr twice): keep one of each
        seen: set[str] = set()
        specs = [s for s in specs if not (s.key in seen or seen.add(s.key))]
    return specs
