"""Prepare flow: every configured dataset -> ``data/processed/<name>/{train,test}.parquet``."""


from sgdlab.paths import apply_prefect_env, project_root

apply_prefect_env()

from prefect import flow, unmapped  # noqa: E402

from flows.common import code_hash, combined_hash, parent_run  # noqa: E402
from flows.runners import make_task_runner  # noqa: E402
from sgdlab import tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402
from tasks.prepare import prepare_dataset_task  # noqa: E402


@flow(name="prepare")
def prepare_flow(cfg: Config, datasets: list[str] | None = None) -> list[dict]:
    """Prepare ``datasets`` (default: ``data.datasets``) in parallel; one MLflow parent run."""
    names = list(datasets or cfg.data.datasets)
    root = str((project_root() / cfg.data.root).resolve())
    data_cfg = cfg.data.model_dump(mode="json")
    with parent_run(cfg, "prepare", "prepare", params=tracking.flatten({"data": data_cfg})) as (exp, run, tags):
        args = dict(root=unmapped(root), code_hash=unmapped(code_hash("data", "config.py")),
                    experiment_id=unmapped(exp), parent_run_id=unmapped(run), tags=unmapped(tags))
        futures = prepare_dataset_task.map(names, unmapped(data_cfg), **args)
        results = [f.result() for f in futures]
        # A cache hit whose files were deleted since: rebuild those with a refreshed cache.
        from pathlib import Path

        stale = [r["name"] for r in results if not (Path(r["train_path"]).is_file() and Path(r["test_path"]).is_file())]
        if stale:
            fresh = prepare_dataset_task.with_options(refresh_cache=True).map(stale, unmapped(data_cfg), **args)
            by_name = {r["name"]: r for r in (f.result() for f in fresh)}
            results = [by_name.get(r["name"], r) for r in results]
        for r in results:
            tracking.log_dataset(run, r["name"], r["train_path"], r["data_hash"])
            print(f"prepared {r['name']}: {r['n_train']} train / {r['n_test']} test -> {r['train_path']}")
        tracking.set_tags(run, {"data_hash": combined_hash([r["data_hash"] for r in results])})
    return results


def run_prepare(cfg: Config, datasets: list[str] | None = None) -> list[dict]:
    """Run the prepare flow with the configured task runner."""
    return prepare_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg, datasets)
