"""GAN and prediction phases: a class-conditional GAN on the training part -> a labelled synthetic set ->
every predictor on every finished classifier of the sweep -> scores (MAE, Kendall tau, Psi, PGDL).

Outputs under ``results/<study>/``: ``gan/{generator.pt,synthetic.parquet,samples.png,gan.json}``,
``predictions.parquet``, ``scores.parquet`` and ``scores.json`` (DVC metrics).
"""

from sgdlab.paths import apply_prefect_env, project_root

apply_prefect_env()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402

from flows.common import parent_run  # noqa: E402
from flows.sweep import study_dirs  # noqa: E402
from sgdlab import results, tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402
from tasks.gan import gan_task  # noqa: E402
from tasks.predict import predict_task  # noqa: E402


def _data(cfg: Config) -> dict:
    return {"name": cfg.train.dataset, "root": str((project_root() / cfg.data.root).resolve()),
            "val_fraction": cfg.data.val_fraction, "probe_size": cfg.data.probe_size, "split_seed": cfg.data.split_seed}


@flow(name="gan")
def gan_flow(cfg: Config) -> dict:
    """Train (or reuse) the GAN and write the synthetic set."""
    from sgdlab.gan import GANConfig

    _, results_dir = study_dirs(cfg)
    gan = cfg.gan.model_dump()
    try:  # validate before any compute: unknown profile or GAN setting names the key
        GANConfig.profile(gan["profile"], **gan["overrides"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params.yaml: gan: {exc}") from None
    with parent_run(cfg, "gan", "gan", params=tracking.flatten({"gan": gan})) as (_exp, run, _tags):
        out = gan_task(_data(cfg), cfg.study.device, gan, str(results_dir / "gan"), run)
        tracking.set_tags(run, {"data_hash": json.loads((results_dir / "gan" / "gan.json").read_text())["data_hash"]})
    return out


@flow(name="predict")
def predict_flow(cfg: Config) -> dict:
    """Predict every finished classifier's test error and score the predictors."""
    _, results_dir = study_dirs(cfg)
    synthetic = results_dir / "gan" / "synthetic.parquet"
    if not synthetic.is_file():
        raise FileNotFoundError(f"{synthetic}: no synthetic set; run the gan phase first (`sgdlab gan`)")
    rows = results.read_table(results_dir / "runs.parquet")
    runs = []
    for r in rows:
        if r.get("status") == "finished":
            spec = json.loads(Path(r["checkpoint"]).with_name("result.json").read_text())["spec"]
            runs.append({**{k: v for k, v in r.items() if not isinstance(v, (dict, list))}, "spec": spec})
    probe_path = results_dir / "probe.parquet"
    probe_rows = {r["run_key"]: r for r in results.read_table(probe_path)} if probe_path.is_file() else {}
    hessian = {"subset_size": cfg.probe.subset_size, "tol": cfg.probe.tol, "trace_probes": cfg.probe.trace_probes}
    data_hash = rows[0]["data_hash"] if rows else ""
    with parent_run(cfg, "predict", "predict", data_hash) as (_exp, run, _tags):
        out = predict_task(runs, _data(cfg), cfg.study.device, str(synthetic), probe_rows,
                           cfg.predict.model_dump(), hessian)
        pred_path = results.write_table(out["rows"], results_dir / "predictions.parquet")
        scores_path = results.write_table(out["scores"], results_dir / "scores.parquet")
        metrics = {f"{s['predictor']}/{k}": s[k] for s in out["scores"] for k in ("mae", "kendall_tau", "psi", "pgdl")
                   if s.get(k) is not None}
        (results_dir / "scores.json").write_text(json.dumps(metrics, indent=2))
        tracking.log_metrics(run, {f"predict/{k}": v for k, v in metrics.items()})
        for p in (pred_path, scores_path):
            tracking.log_artifact(run, p)
        for r in out["rows"]:  # each classifier's own MLflow run gets its predictions
            src = next(x for x in runs if x["run_key"] == r["run_key"])
            tracking.log_metrics(src["mlflow_run_id"], {k: v for k, v in r.items()
                                                        if k.startswith(("pred/", "measure/", "true/")) and v is not None})
        if out["scores"]:
            create_table_artifact(key="predictor-scores", table=[{k: (round(v, 4) if isinstance(v, float) else v)
                                                                  for k, v in s.items()} for s in out["scores"]],
                                  description="Test-error predictors scored over the population of classifiers.")
    return {"predictions": str(pred_path), "scores": out["scores"], "n_models": len(out["rows"])}
