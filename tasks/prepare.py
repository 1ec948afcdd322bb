"""Prefect task: prepare one dataset (build from source, write Parquet) and record it in MLflow."""


from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from prefect import task  # noqa: E402
from prefect.cache_policies import INPUTS, TASK_SOURCE  # noqa: E402

from sgdlab import tracking  # noqa: E402
from sgdlab.config import DataConfig  # noqa: E402
from sgdlab.data import prepare_dataset  # noqa: E402


@task(
    name="prepare-dataset",
    task_run_name="prepare-{name}",
    # Key: dataset name + its config + the data library's code hash + this task's source. The MLflow
    # ids and lineage change every flow run and must not bust the cache.
    cache_policy=(INPUTS + TASK_SOURCE) - "experiment_id" - "parent_run_id" - "tags",
    persist_result=True,
    retries=1,
)
def prepare_dataset_task(
    name: str, data_cfg: dict, root: str, code_hash: str, experiment_id: str, parent_run_id: str, tags: dict
) -> dict:
    """Build ``name`` and log a child MLflow run with its sizes and data hash; returns a small dict."""
    cfg = DataConfig.model_validate(data_cfg)
    result = prepare_dataset(name, cfg, root)
    run_id = tracking.start_run(
        experiment_id, f"prepare-{name}", {**tags, "data_hash": result.data_hash, "phase": "prepare"},
        parent_run_id=parent_run_id, params={"dataset": name, "source": result.source},
    )
    tracking.log_metrics(run_id, {"data/n_train": result.n_train, "data/n_test": result.n_test})
    tracking.log_dataset(run_id, name, result.train_path, result.data_hash, context="training")
    tracking.log_dataset(run_id, f"{name}-test", result.test_path, result.data_hash, context="test")
    tracking.end_run(run_id)
    return {**result.__dict__, "mlflow_run_id": run_id}
