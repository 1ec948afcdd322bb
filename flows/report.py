"""Report flow: the study's figures and one self-contained HTML page, from the phase tables and the
per-step curves in MLflow; logged to MLflow, declared as DVC plots, and shown as Prefect artifacts."""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from pathlib import Path  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows.common import parent_run  # noqa: E402
from flows.sweep import study_dirs  # noqa: E402
from sgdlab import results, tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402

CURVE_METRICS = ("train/loss", "test/acc", "hessian/lambda_max", "hessian/threshold", "hessian/precond_lambda_max")


@task(name="fetch-curves", cache_policy=NO_CACHE)
def fetch_curves(rows: list[dict]) -> dict:
    """Per-step curves of every run from MLflow (the store of record for curves)."""
    curves = {}
    for r in rows:
        if r.get("mlflow_run_id"):
            got = {m: list(tracking.iter_metric_history(r["mlflow_run_id"], m)) for m in CURVE_METRICS}
            curves[r["run_key"]] = {m: sorted(v) for m, v in got.items() if v}
    return curves


@task(name="build-report", cache_policy=NO_CACHE)
def build_report_task(results_dir: str, out_dir: str, study: str, curves: dict, gan_grid: str | None, notes: list[str]) -> dict:
    from sgdlab.report import build_report

    res = build_report(Path(results_dir), Path(out_dir), study=study, curves=curves,
                       gan_grid=Path(gan_grid) if gan_grid else None, notes=notes)
    return {"html": str(res.html), "figures": [str(f) for f in res.figures], "skipped": [list(s) for s in res.skipped]}


@flow(name="report")
def report_flow(cfg: Config) -> dict:
    _, results_dir = study_dirs(cfg)
    rows = results.load_runs(results_dir)  # a missing table names itself and says to run the sweep
    gan_grid = results_dir / "gan" / "samples.png"  # written by the gan phase
    notes = [f"profile: {cfg.profile or '(none)'}; dataset: {cfg.train.dataset}; {len(rows)} runs",
             f"MLflow experiment: {cfg.experiment_name} (browse with `sgdlab ui`)"]
    with parent_run(cfg, "report", "report", rows[0].get("data_hash", "") if rows else "") as (_exp, run, _tags):
        curves = fetch_curves(rows)
        out = build_report_task(str(results_dir), str(results_dir / "report"), cfg.study.name, curves,
                                str(gan_grid) if gan_grid.is_file() else None, notes)
        for f in [out["html"], *out["figures"]]:
            tracking.log_artifact(run, f, "report")
        lines = [f"# sgdlab report: {cfg.study.name}", "", f"HTML: `{out['html']}`", "",
                 *[f"- figure: `{Path(f).name}`" for f in out["figures"]],
                 *[f"- skipped {name}: {why}" for name, why in out["skipped"]]]
        create_markdown_artifact(key="study-report", markdown="\n".join(lines), description="sgdlab study report")
    return out


def run_report(cfg: Config) -> dict:
    return report_flow(cfg)
