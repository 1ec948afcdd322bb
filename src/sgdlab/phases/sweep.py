"""Phase ``sweep``: the grid of params.yaml -> one training unit per run key -> ``runs.parquet``.

A diverged run is a result, not an error; a run that raises is recorded as ``failed`` and the others go
on; the phase raises at the end if any run failed, after the table is written.
"""

from __future__ import annotations

from sgdlab import results, tracking
from sgdlab.phases import Outcome, PhaseFailed, Plan, Unit
from sgdlab.study import Study
from sgdlab.sweep import RunSpec, expand


def plan(study: Study) -> Plan:
    data = study.data_spec(prepare=True)  # the configured dataset, (re)built if missing or different
    specs = expand(study.cfg, data, study.n_train(data))  # validates everything before any training
    params = tracking.flatten(
        {"train": study.cfg.train.model_dump(mode="json"), "sweep": study.cfg.sweep.model_dump(mode="json")}
    )
    return Plan(
        [Unit(s.label, {"spec": s.to_dict()}) for s in specs],
        params={**params, "n_runs": len(specs)},
        data_hash=data.data_hash,
    )


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.probing import sharpness_hook_factory
    from sgdlab.runner import execute_run

    spec = RunSpec.from_dict(payload["spec"])
    return execute_run(study, spec, ctx, on_step_factory=sharpness_hook_factory(spec.probe))


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    rows, failed = [], []
    for o in outcomes:
        if o.error is None:
            rows.append(o.value)
            continue
        spec = RunSpec.from_dict(o.unit.payload["spec"])
        reason = f"{type(o.error).__name__}: {o.error}"
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
                "train_fraction": spec.train_fraction,
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
        },
    )
    artifacts = [
        {
            "kind": "table",
            "key": "sweep-summary",
            "table": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in summary],
            "description": f"Sweep of study {study.name}: test accuracy mean ± std over seeds.",
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
