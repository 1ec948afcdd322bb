"""Prefect task: every predictor on every finished classifier, then the predictors' scores."""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from sgdlab.prediction import load_synthetic, predict_population, score_predictors  # noqa: E402
from sgdlab.runner import load_cached  # noqa: E402
from sgdlab.sweep import RunSpec  # noqa: E402


@task(name="predict-and-score", cache_policy=NO_CACHE)
def predict_task(runs: list[dict], data: dict, device: str, synthetic: str, probe_rows: dict, predict: dict,
                 hessian: dict) -> dict:
    splits = load_cached(device=device, **data)
    x_syn, y_syn, _meta = load_synthetic(synthetic, splits.data_hash, splits.x_train.device, force=predict["force"])
    items = [(RunSpec.from_dict(r["spec"]), r["checkpoint"], r) for r in runs]
    rows = predict_population(items, splits, x_syn, y_syn, probe_rows=probe_rows, flatness=predict["flatness"],
                              hessian=hessian)
    return {"rows": rows, "scores": score_predictors(rows) if len(rows) >= 2 else []}
