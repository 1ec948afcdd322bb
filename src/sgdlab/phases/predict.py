"""Phase ``predict``: every predictor of test error (GAN synthetic set, validation, train error) and every
generalization measure (lambda_max, trace, PAC-Bayes flatness) on every finished classifier, scored (MAE,
Kendall tau, granulated Psi, PGDL) -> ``predictions.parquet``, ``scores.parquet``, ``scores.json``.

One unit (the classifiers share the dataset and the synthetic set). Each classifier's MLflow run gets its
predictions; the phase's run gets the scores.
"""

from __future__ import annotations

import json
from dataclasses import replace

from sgdlab import results, tracking
from sgdlab.phases import Outcome, Plan, Unit, raise_failures
from sgdlab.study import Study


def plan(study: Study) -> Plan:
    synthetic = study.path("gan", "synthetic")
    if not synthetic.is_file():
        raise FileNotFoundError(f"{synthetic}: no synthetic set; run the gan phase first (`sgdlab gan train`)")
    runs = study.finished_runs()
    gone = [r.row["run_key"] for r in runs if not tracking.run_exists(r.row["mlflow_run_id"])]
    if gone:  # before any compute, and before any output is written
        raise ValueError(
            f"{len(gone)} of {len(runs)} finished runs point at MLflow runs that are not in the store "
            f"{tracking.tracking_uri()} (it was replaced or deleted), e.g. run key {gone[0]}: run `sgdlab sweep` "
            "first (it re-creates a child run for each cached key), then predict"
        )
    data_hash = runs[0].spec.data_hash if runs else ""
    return Plan(
        [Unit("predict", {})],
        data_hash=data_hash,
        extra={"runs": runs},
        params=tracking.flatten({"predict": study.cfg.predict.model_dump()}),
    )


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.phases.gan import progress_lines
    from sgdlab.prediction import load_synthetic, predict_population, score_predictors

    runs = study.finished_runs()
    if not runs:
        return {"rows": [], "scores": [], "gate": None}
    probe_path = study.path("probe", "probe")
    probe_rows = {r["run_key"]: r for r in results.read_table(probe_path)} if probe_path.is_file() else {}
    splits = study.load(replace(runs[0].spec.data, train_fraction=1.0))
    x_syn, y_syn, _ = load_synthetic(
        study.path("gan", "synthetic"), splits.data_hash, splits.x_train.device, force=study.cfg.predict.force
    )
    p = study.cfg.probe
    rows = predict_population(
        [(r.spec, r.checkpoint, r.row) for r in runs],
        splits,
        x_syn,
        y_syn,
        probe_rows=probe_rows,
        flatness=study.cfg.predict.flatness.model_dump(),
        hessian={"subset_size": p.subset_size, "tol": p.tol, "trace_probes": p.trace_probes},
        progress=progress_lines("predict", unit="classifier"),
    )
    scores = score_predictors(rows) if len(rows) >= 2 else []
    from sgdlab.generalization.gate import gan_quality_gate

    meta_path = study.path("gan", "meta")
    gate = gan_quality_gate(json.loads(meta_path.read_text()) if meta_path.is_file() else {}, rows)
    for s in scores:  # the GAN predictor's scores carry its gate: never shown as trustworthy when it fails
        if s["predictor"] == "gan":
            s.update(gate=gate["verdict"], gate_note=gate["note"], gate_reasons="; ".join(gate["reasons"]))
    from sgdlab.prediction import CURVE_PER_CLASS, gan_curve

    syn_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    curve = gan_curve(
        study.path("gan", "snapshots"),
        [(r.spec, r.checkpoint, r.row) for r in runs],
        splits,
        rows,
        seed=int(syn_meta.get("sample_seed", 0)),  # the synthetic set's latents
        per_class=min(CURVE_PER_CLASS, len(y_syn) // splits.num_outputs),
        progress=progress_lines("predict: GAN snapshots", unit="classifier"),
    )
    floor = json.loads(meta_path.read_text()).get("frechet_train_vs_val") if meta_path.is_file() else None
    curve = [{**c, "fd_floor": floor} for c in curve]  # the real-data floor FD(train, val): the gate's unit
    return {"rows": rows, "scores": scores, "gate": gate, "curve": curve}


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    raise_failures("predict", outcomes)
    out = outcomes[0].value
    run = ctx["parent_run_id"]
    pred_path = results.write_table(out["rows"], study.path("predict", "predictions"))
    scores_path = results.write_table(out["scores"], study.path("predict", "scores"))
    curve_path = results.write_table(out.get("curve", []), study.path("predict", "gan_curve"))
    for c in out.get("curve", []):  # MLflow: the curve against GAN training steps (the axis of these metrics)
        tracking.log_metrics(run, {f"gan_curve/{k}": c[k] for k in ("mae", "kendall_tau", "err_gap")}, step=c["step"])
    metrics = {
        f"{s['predictor']}/{k}": s[k]
        for s in out["scores"]
        for k in ("mae", "kendall_tau", "psi", "pgdl")
        if s.get(k) is not None
    }
    gate = out.get("gate")
    if gate is not None:  # the GAN quality gate (sgdlab.generalization.gate), numbers and verdict
        metrics.update(
            {
                "gate/passed": {"pass": 1.0, "fail": 0.0}.get(gate["verdict"], float("nan")),
                "gate/fd_ratio": gate["fd_ratio"],
                "gate/err_gap_pp": gate["err_gap"] * 100,
                "gate/fd_synthetic_vs_test": gate["fd_synthetic_vs_test"],
                "gate/fd_synthetic_vs_train": gate["fd_synthetic_vs_train"],
            }
        )
        tracking.set_tags(
            run, {"gan_gate": gate["verdict"], "gan_gate_reasons": "; ".join(gate["reasons"])[:4000] or "-"}
        )
    study.path("predict", "scores_json").write_text(json.dumps(metrics, indent=2))
    tracking.log_metrics(run, {f"predict/{k}": v for k, v in metrics.items()})
    for p in (pred_path, scores_path, curve_path):
        tracking.log_artifact(run, p)
    run_ids = {r.row["run_key"]: r.row["mlflow_run_id"] for r in plan.extra["runs"]}
    for r in out["rows"]:  # each classifier's own MLflow run gets its predictions
        tracking.log_metrics(
            run_ids[r["run_key"]],
            {k: v for k, v in r.items() if k.startswith(("pred/", "measure/", "true/")) and v is not None},
        )
    artifacts = []
    if out["scores"]:
        artifacts.append(
            {
                "kind": "table",
                "key": "predictor-scores",
                "table": [
                    {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in out["scores"]
                ],
                "description": "Test-error predictors scored over the population of classifiers.",
            }
        )
    if gate is not None:
        artifacts.append(
            {
                "kind": "markdown",
                "key": "gan-quality-gate",
                "markdown": f"**GAN quality gate: {gate['verdict']}** ({gate['criteria']})"
                + "".join(f"\n- {r}" for r in gate["reasons"]),
                "description": "Whether the GAN predictor's numbers can be trusted at this sample quality.",
            }
        )
    return {
        "predictions": str(pred_path),
        "scores": out["scores"],
        "gate": gate,
        "n_models": len(out["rows"]),
        "artifacts": artifacts,
    }
