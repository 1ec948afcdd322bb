"""Phase ``report``: the study's figures (PNG) and one self-contained HTML page from the phase tables and
the per-step curves in MLflow (the store of record for curves); logged to MLflow, declared as DVC plots."""

from __future__ import annotations

from pathlib import Path

from sgdlab import results, tracking
from sgdlab.phases import Outcome, Plan, Unit, raise_failures
from sgdlab.study import Study

CURVE_METRICS = (
    "train/loss",
    "test/acc",
    "hessian/lambda_max",
    "hessian/threshold",
    "hessian/precond_lambda_max",
    "hessian/converged",
)


def plan(study: Study) -> Plan:
    rows = results.load_runs(study.results_dir)  # a missing table names itself and says to run the sweep
    return Plan([Unit("report", {})], data_hash=rows[0].get("data_hash", "") if rows else "")


def fetch_curves(rows: list[dict], missing: list[str] | None = None) -> dict:
    """Per-step curves of every run from MLflow; the run keys whose MLflow run is not in the store (a replaced
    or deleted store) are appended to ``missing`` instead of silently showing no curve."""
    curves = {}
    for r in rows:
        if not r.get("mlflow_run_id"):
            continue
        if not tracking.run_exists(r["mlflow_run_id"]):
            if missing is not None:
                missing.append(r["run_key"])
            continue
        got = {m: list(tracking.iter_metric_history(r["mlflow_run_id"], m)) for m in CURVE_METRICS}
        curves[r["run_key"]] = {m: sorted(v) for m, v in got.items() if v}
    return curves


def _recipe_check(study: Study):
    """(title, verdict lines, figure) when a recipe checked this study (``sgdlab recipe run``), else None."""
    import json

    from sgdlab.study import recipe_paths

    p = recipe_paths(study.results_dir)
    if not p["check"].is_file():
        return None
    try:
        v = json.loads(p["check"].read_text())
        lines = [f"recipe {v['recipe']}: {v['verdict']} (scale {v.get('scale', '?')}); claim: {v['claim']}"]
        for c in v["criteria"]:
            mark = (
                ("PASS" if c["passed"] else "FAIL")
                if c.get("gating", True)
                else ("shows" if c["passed"] else "does not show")
            )
            lines.append(f"[{mark}] {c['name']}: {c['value']:.4g} {c['op']} {c['threshold']:.4g} ({c['statement']})")
        lines += [f"note: {n}" for n in v.get("notes", [])]
    except (ValueError, KeyError, TypeError) as exc:
        return (p["check"].name, [f"{p['check']} is unreadable: {exc}"], p["figure"])
    return (v["recipe"], lines, p["figure"])


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.report import build_report

    rows = results.load_runs(study.results_dir)
    grid = study.path("gan", "samples")
    datasets = sorted({str(r.get("dataset")) for r in rows})
    notes = [
        f"profile: {study.cfg.profile or '(none)'}; dataset: {', '.join(datasets)}; {len(rows)} runs",
        f"MLflow experiment: {study.experiment_name} (browse with `sgdlab ui`)",
    ]
    missing: list[str] = []
    curves = fetch_curves(rows, missing)
    if missing:
        notes.append(
            f"curves missing for {len(missing)} of {len(rows)} runs: their MLflow runs are not in the store "
            f"{tracking.tracking_uri()} (replaced or deleted); `sgdlab sweep` re-creates a run for each cached key, "
            "with its final metrics but not its per-step history, which went with the old store"
        )
    res = build_report(
        study.results_dir,
        study.path("report", "html").parent,
        study=study.name,
        curves=curves,
        gan_grid=grid if grid.is_file() else None,
        notes=notes,
        recipe=_recipe_check(study),
    )
    return {"html": str(res.html), "figures": [str(f) for f in res.figures], "skipped": [list(s) for s in res.skipped]}


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    raise_failures("report", outcomes)
    out = outcomes[0].value
    for f in [out["html"], *out["figures"]]:
        tracking.log_artifact(ctx["parent_run_id"], f, "report")
    lines = [
        f"# sgdlab report: {study.name}",
        "",
        f"HTML: `{out['html']}`",
        "",
        *[f"- figure: `{Path(f).name}`" for f in out["figures"]],
        *[f"- skipped {name}: {why}" for name, why in out["skipped"]],
    ]
    return {
        **out,
        "artifacts": [
            {
                "kind": "markdown",
                "key": "study-report",
                "markdown": "\n".join(lines),
                "description": "sgdlab study report",
            }
        ],
    }
