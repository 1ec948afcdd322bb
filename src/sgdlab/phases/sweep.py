"""Phase ``sweep``: the grid of params.yaml -> one training unit per run key -> ``runs.parquet``.

A diverged run is a result, not an error; a run that raises is recorded as ``failed`` and the others go
on; the phase raises at the end if any run failed, after the table is written.
"""

from __future__ import annotations

from collections.abc import Callable

from sgdlab import results, tracking
from sgdlab.phases import Outcome, PhaseFailed, Plan, Unit
from sgdlab.study import Study
from sgdlab.sweep import RunSpec, expand, searches


def plan(study: Study) -> Plan:
    data = study.data_spec(prepare=True)  # the configured dataset, (re)built if missing or different
    specs = expand(study.cfg, data, study.n_train(data))  # validates everything before any training
    params = tracking.flatten(
        {"train": study.cfg.train.model_dump(mode="json"), "sweep": study.cfg.sweep.model_dump(mode="json")}
    )
    orch = study.cfg.orchestration
    if orch.population == "auto":
        from sgdlab.train.population import available_bytes

        budget = orch.population_memory_fraction * available_bytes(study.device) / orch.max_workers
        groups = populations(
            specs, orch.population_max_members, workers=orch.max_workers,
            max_params=orch.population_max_params, n_params=_param_counter(study, data),
            min_members=orch.population_min_members, memory=(budget, _member_bytes(study, data)),
            alone=_conv_on_cpu(study, data),
        )  # fmt: skip
    else:
        groups = [[s] for s in specs]
    units = []
    for g in groups:
        if len(g) == 1:
            units.append(Unit(g[0].label, {"spec": g[0].to_dict()}))
        else:
            families = "+".join(dict.fromkeys(s.optimizer for s in g))  # e.g. sgd+momentum (torch.optim families)
            label = f"population of {len(g)}: {families} ({', '.join(s.label for s in g)})"
            units.append(Unit(label[:300], {"specs": [s.to_dict() for s in g]}))
    n_pop = sum(len(g) for g in groups if len(g) > 1)  # the progress lines name each population
    tpe = searches(study.cfg, data, study.n_train(data))  # adaptive: one sequential unit per search study
    units += [Unit(u.label, {"search": u.to_payload()}) for u in tpe]
    n_tpe = sum(u.search.trials * len(u.templates) for u in tpe)
    return Plan(
        units,
        params={**params, "n_runs": len(specs) + n_tpe, "n_population_runs": n_pop, "n_tpe_searches": len(tpe)},
        data_hash=data.data_hash,
    )


def _meta_model(study: Study, data):
    """spec -> its model built on the meta device (shapes only: no memory, no init compute), one per model and
    kwargs: what the grouping rules below read."""
    from sgdlab.models import build_model

    memo: dict[str, object] = {}

    def build(spec: RunSpec):
        key = repr((spec.model, sorted(spec.model_kwargs.items())))
        if key not in memo:
            splits = study.load(data)  # memoised per process: the sweep's units reuse it
            memo[key] = build_model(
                spec.model, splits.input_shape, splits.num_outputs, seed=0, device="meta", **spec.model_kwargs
            )
        return memo[key]

    return build


def _param_counter(study: Study, data):
    """spec -> trainable parameters of its model."""
    from sgdlab.models import param_count

    meta = _meta_model(study, data)
    return lambda spec: param_count(meta(spec))


def _conv_on_cpu(study: Study, data):
    """spec -> True when its model has convolutions and the study trains on the CPU: vmapped, a convolution with
    per-member weights runs as a grouped convolution, slower there than the members one at a time (CNN of 207k
    parameters, 3 and 8 Adam runs, one thread: 0.68-0.75x; README "Populations")."""
    from torch import nn

    from sgdlab.device import resolve_device

    if resolve_device(study.device).type != "cpu":
        return lambda spec: False
    meta = _meta_model(study, data)
    return lambda spec: any(isinstance(m, nn.modules.conv._ConvNd) for m in meta(spec).modules())


def _member_bytes(study: Study, data):
    """spec -> bytes one population member of it holds (:func:`sgdlab.train.population.member_bytes`, from
    shapes on the meta device)."""
    from sgdlab.train.population import member_bytes

    meta = _meta_model(study, data)
    memo: dict[str, int] = {}

    def count(spec: RunSpec) -> int:
        key = repr((spec.model, sorted(spec.model_kwargs.items()), spec.optimizer, spec.hparams, spec.batch_size))
        if key not in memo:
            splits = study.load(data)
            memo[key] = member_bytes(
                meta(spec), spec.optimizer, spec.hparams, spec.batch_size, splits.input_shape, splits.task
            )["total"]
        return memo[key]

    return count


def populations(
    specs: list[RunSpec],
    max_members: int,
    *,
    workers: int = 1,
    max_params: int | None = None,
    n_params=None,
    min_members: int = 2,
    memory: tuple[float, Callable[[RunSpec], int]] | None = None,
    alone: Callable[[RunSpec], bool] | None = None,
) -> list[list[RunSpec]]:
    """Group run keys that may share vectorised updates: same data, model, batch size, probe settings and
    the loop settings the shared step depends on (``SHARED_LOOP_FIELDS``; seeds, hyper-parameters, step counts
    and schedules differ), and the same optimizer family, supported by the population path (the torch.optim
    families, ``SHARED_UPDATE_FAMILIES``, group together). Order is kept.

    A group larger than ``max_members`` is split into the fewest groups of (near) equal sizes (17 -> 9 + 8);
    a group smaller than ``min_members`` trains alone, key by key (a population of 2 was slower than 2 runs
    alone on this CPU, README "Populations"). ``max_params`` with ``n_params(spec)``: models with more
    parameters train alone (on a CPU a large model's step is compute-bound). ``memory``: ``(budget,
    member_bytes)``: a group's members together hold at most ``budget`` bytes (its cap is
    ``budget // max(member_bytes(spec))``, at most ``max_members``). ``alone(spec)``: True trains the key
    alone (convolutions on the CPU). ``workers``: while there are fewer
    groups than workers, the largest group is halved if both halves keep ``min_members``, so a population does
    not leave workers idle."""
    import json
    from dataclasses import asdict

    from sgdlab.train.population import POPULATION_FAMILIES, SHARED_LOOP_FIELDS, SHARED_UPDATE_FAMILIES

    if not 1 <= min_members <= max_members:
        raise ValueError(f"population sizes: need 1 <= min_members={min_members} <= max_members={max_members}")

    def joins(s: RunSpec) -> bool:
        if s.optimizer not in POPULATION_FAMILIES or s.loop.get("physical_batch_size") or s.loop.get("compile"):
            return False
        if alone is not None and alone(s):
            return False
        return max_params is None or n_params(s) <= max_params

    groups: dict[str, list[RunSpec]] = {}
    order: list[str] = []
    for s in specs:
        if joins(s):
            key = json.dumps(
                [asdict(s.data), s.model, s.model_kwargs,
                 "torch.optim" if s.optimizer in SHARED_UPDATE_FAMILIES else s.optimizer,
                 s.batch_size, {k: v for k, v in s.loop.items() if k in SHARED_LOOP_FIELDS}, s.probe],
                sort_keys=True, default=str,
            )  # fmt: skip
        else:
            key = f"alone:{s.key}"
        if key not in groups:
            groups[key], _ = [], order.append(key)
        groups[key].append(s)
    out = []
    for key in order:
        g = groups[key]
        cap = max_members
        if memory is not None and not key.startswith("alone:"):
            budget, nbytes = memory
            cap = max(1, min(max_members, int(budget // max(nbytes(s) for s in g))))
        parts = -(-len(g) // cap)  # ceil
        bounds = [round(i * len(g) / parts) for i in range(parts + 1)]
        for a, b in zip(bounds, bounds[1:]):
            out.extend([g[a:b]] if b - a >= min_members else [[s] for s in g[a:b]])
    while len(out) < workers:
        i = max(range(len(out)), key=lambda j: len(out[j]), default=None)
        if i is None or len(out[i]) < max(2, 2 * min_members):
            break
        g = out[i]
        out[i : i + 1] = [g[: (len(g) + 1) // 2], g[(len(g) + 1) // 2 :]]
    return out


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.probing import sharpness_hook_factory
    from sgdlab.runner import execute_population, execute_run

    if "search" in payload:
        from sgdlab.optbench.tpe import SearchUnit, run_search

        su = SearchUnit.from_payload(payload["search"])
        hooks = sharpness_hook_factory(su.templates[0].probe)
        rows = run_search(su, study.models_dir, lambda spec: execute_run(study, spec, ctx, on_step_factory=hooks))
        return {"members": rows, "status": _population_status(rows)}
    if "specs" in payload:
        specs = [RunSpec.from_dict(d) for d in payload["specs"]]
        rows = execute_population(study, specs, ctx, on_step_factory=sharpness_hook_factory(specs[0].probe))
        return {"members": rows, "status": _population_status(rows)}
    spec = RunSpec.from_dict(payload["spec"])
    return execute_run(study, spec, ctx, on_step_factory=sharpness_hook_factory(spec.probe))


def _population_status(rows: list[dict]) -> str:
    failed = sum("error" in r for r in rows)
    statuses = sorted({r.get("status", "failed") for r in rows if "error" not in r})
    return ", ".join(statuses + ([f"{failed} failed"] if failed else [])) or "failed"


def _runs(outcomes: list[Outcome]):
    """(spec, row or None, reason or None) for every run key, population members included."""
    for o in outcomes:
        if "search" in o.unit.payload:
            yield from _search_runs(o)
            continue
        dicts = o.unit.payload["specs"] if "specs" in o.unit.payload else [o.unit.payload["spec"]]
        specs = [RunSpec.from_dict(d) for d in dicts]
        if o.error is not None:
            for spec in specs:
                yield spec, None, f"{type(o.error).__name__}: {o.error}"
        elif "members" in o.value:
            for spec, row in zip(specs, o.value["members"]):
                yield (spec, None, row["error"]) if "error" in row else (spec, row, None)
        else:
            yield specs[0], o.value, None


def _search_runs(o: Outcome):
    """A TPE study's runs: the trials' specs are known only from what ran (a failed run's spec from the
    template with the trial's key); a study that raised as a whole is one failed line for its template."""
    from dataclasses import replace

    from sgdlab.optbench.tpe import SearchUnit

    su = SearchUnit.from_payload(o.unit.payload["search"])
    if o.error is not None:
        t = su.templates[0]
        meta = {"kind": "tpe", "seed": su.search.seed, "study": su.study_index, "trial": -1, "id": su.search_id}
        yield replace(t, extra={**t.extra, "search": meta}), None, f"{type(o.error).__name__}: {o.error}"
        return
    for row in o.value["members"]:
        if "error" in row:
            yield RunSpec.from_dict(row["spec"]), None, row["error"]
        else:
            yield None, row, None


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    rows, failed = [], []
    for spec, row, reason in _runs(outcomes):
        if row is not None:
            rows.append(row)
            continue
        rows.append(
            {
                "run_key": spec.key,
                "status": "failed",
                "reason": reason,
                "optimizer": spec.optimizer,
                "lr": spec.lr,
                "batch_size": spec.batch_size,
                "steps": spec.steps,
                "seed": spec.seed,
                "model": spec.model,
                "variant": spec.variant,
                "search_study": int((spec.extra or {}).get("search", {}).get("study", -1)),
                "search_trial": int((spec.extra or {}).get("search", {}).get("trial", -1)),
                "train_fraction": spec.train_fraction,
                "label_noise": spec.data.label_noise,
            }
        )
        failed.append(f"{spec.label} (run key {spec.key}): {reason.splitlines()[0][:500]}")
    table_path = results.write_table(rows, study.path("sweep", "runs"))
    summary = results.summarize(rows)
    run = ctx["parent_run_id"]
    tracking.log_artifact(run, table_path)
    tracking.log_metrics(
        run,
        {
            "sweep/runs": len(rows),
            "sweep/trained": sum(not r.get("cached", True) for r in rows),
            "sweep/diverged": sum(r["status"] == "diverged" for r in rows),
            "sweep/failed": len(failed),
            "sweep/population_runs": sum(r.get("population", 1) > 1 for r in rows),
        },
    )
    artifacts = [
        {
            "kind": "table",
            "key": "sweep-summary",
            "table": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in summary],
            "description": f"Sweep of study {study.name}: test accuracy mean ± std over seeds, with the 95% "
            "Student-t interval of the mean (ci95 lo/hi; none for one seed).",
        }
    ]
    if failed:
        raise PhaseFailed(f"sweep: {len(failed)} of {len(rows)} runs failed (table written to {table_path})", failed)
    return {
        "runs_table": str(table_path),
        "n_runs": len(rows),
        "rows": rows,
        "summary": summary,
        "artifacts": artifacts,
    }
