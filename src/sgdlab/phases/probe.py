"""Phase ``probe``: curvature of every finished run at its final checkpoint -> ``probe.parquet``.

One unit per finished run: top-k eigenvalues, Hutchinson trace with its standard error, the stability
threshold, Adam's preconditioned sharpness, optionally the SLQ spectral density (``densities.json``), on
the run's own data (its :class:`~sgdlab.data.DataSpec`, verified). ``final/hessian/*`` metrics go to each
run's MLflow child run. A unit's result is kept in ``probe-units/<run key>.json`` keyed by the checkpoint's
content hash and the probe settings, so an unchanged probe re-run computes nothing. The sweep's own table
is left alone: it is the sweep stage's DVC output.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

from sgdlab import results, tracking
from sgdlab.integrity import CorruptFileError
from sgdlab.phases import Outcome, Plan, Unit, raise_failures
from sgdlab.study import Study
from sgdlab.sweep import RunSpec


def plan(study: Study) -> Plan:
    runs = study.finished_runs()  # a missing runs table names itself and says to run the sweep
    units = [
        Unit(
            r.spec.label,
            {"spec": r.spec.to_dict(), "checkpoint": r.row["checkpoint"], "mlflow_run_id": r.row["mlflow_run_id"]},
        )
        for r in runs
    ]
    return Plan(
        units,
        params=tracking.flatten({"probe": study.cfg.probe.model_dump()}),
        data_hash=runs[0].spec.data_hash if runs else "",
    )


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.probing import probe_checkpoint

    spec = RunSpec.from_dict(payload["spec"])
    ckpt = study.resolve(payload["checkpoint"])
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint for run {spec.key}; run the sweep first")
    settings = study.cfg.probe.model_dump()
    want = {"checkpoint_sha": _sha(ckpt), "settings": settings, "data": spec.data.to_dict()}
    cache = study.path("probe", "units") / f"{spec.key}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if {k: stored.get(k) for k in want} == want:
            return {**stored["metrics"], "_cached": True}
    try:
        out = probe_checkpoint(spec, ckpt, study.load(replace(spec.data, train_fraction=1.0)), settings)
    except CorruptFileError as exc:
        raise _retrain(study, spec, ckpt, exc) from None
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({**want, "metrics": out}))
    os.replace(tmp, cache)
    scalars = {k: v for k, v in out.items() if not k.startswith("_")}
    tracking.log_metrics(payload["mlflow_run_id"], {f"final/{k}": v for k, v in scalars.items()}, spec.steps)
    return out


def _retrain(study: Study, spec: RunSpec, ckpt, exc: CorruptFileError) -> CorruptFileError:
    """A finished run whose checkpoint is damaged: move the checkpoint and the run's result aside, so the next
    sweep trains that key again from scratch (the other runs are untouched); the error says so."""
    from sgdlab.integrity import quarantine

    moved = quarantine(ckpt)
    result = study.run_dir(spec.key) / "result.json"
    if result.is_file():
        quarantine(result)
    reason = str(exc).split(": ", 1)[-1]
    return CorruptFileError(
        ckpt, f"{reason}; moved to {moved.name}; run {spec.key} will be trained again by the next `sgdlab sweep`"
    )


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    done = {RunSpec.from_dict(o.unit.payload["spec"]).key: o.value for o in outcomes if o.error is None}
    metrics = {k: {m: v for m, v in o.items() if not m.startswith("_")} for k, o in done.items()}
    probe_table = results.write_table([{"run_key": k, **m} for k, m in metrics.items()], study.path("probe", "probe"))
    densities = {k: o["_density"] for k, o in done.items() if "_density" in o}
    study.path("probe", "densities").write_text(json.dumps(densities))
    tracking.log_metrics(ctx["parent_run_id"], {"probe/runs": len(done)})
    tracking.log_artifact(ctx["parent_run_id"], probe_table)
    raise_failures("probe", outcomes)
    return {
        "runs_table": str(study.path("sweep", "runs")),
        "probe_table": str(probe_table),
        "probed": len(done),
        "metrics": metrics,
    }
