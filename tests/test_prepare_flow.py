"""The prepare flow on a real (ephemeral) Prefect API and a real MLflow store."""

from pathlib import Path

import pytest

from sgdlab import tracking
from sgdlab.config import from_dict
from sgdlab.data import load_splits


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    return from_dict(
        {
            "study": {"name": "prep-test"},
            "data": {
                "root": str(tmp_path / "data"),
                "datasets": ["xor", "separable"],
                "xor": {"n_train": 64, "n_test": 32},
                "separable": {"n_train": 32, "n_test": 16},
            },
        }
    )


def _prepare_children(name):
    return [r for r in tracking.find_runs("prep-test") if r.info.run_name == name]


def test_prepare_flow_writes_parquet_logs_lineage_and_caches(prefect_harness, mlflow_store, cfg, tmp_path):
    from flows.phases import run_phase

    results = run_phase(cfg, "prepare")["datasets"]
    assert {r["name"] for r in results} == {"xor", "separable"}
    for r in results:
        assert Path(r["train_path"]).is_file() and Path(r["test_path"]).is_file()
    splits = load_splits("xor", tmp_path / "data", probe_size=10)
    assert splits.x_train.shape[1] == 20

    runs = tracking.find_runs("prep-test")
    parent = [r for r in runs if r.info.run_name == "prepare"]
    children = _prepare_children("prepare-xor")
    assert len(parent) == 1 and len(children) == 1
    assert parent[0].info.status == "FINISHED"
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    for tag in tracking.LINEAGE_TAGS:
        assert child.data.tags[tag] not in ("", None), tag
    assert child.data.tags["data_hash"] == splits.data_hash
    assert child.data.tags["prefect_flow_run_id"] == parent[0].data.tags["prefect_flow_run_id"] != "none"
    assert child.data.tags["study"] == "prep-test"
    assert child.inputs.dataset_inputs[0].dataset.digest == splits.data_hash[:36]
    assert child.data.metrics["data/n_train"] == 64

    # Second run: a cache hit -- no new child run is created, a new parent run is.
    again = run_phase(cfg, "prepare")["datasets"]
    assert [r["data_hash"] for r in again] == [r["data_hash"] for r in results]
    assert len(_prepare_children("prepare-xor")) == 1
    assert len([r for r in tracking.find_runs("prep-test") if r.info.run_name == "prepare"]) == 2

    # Deleted, truncated or different outputs are rebuilt (no stale cache hit).
    Path(results[0]["train_path"]).unlink()
    run_phase(cfg, "prepare")
    assert Path(results[0]["train_path"]).is_file()
    p = Path(results[0]["train_path"])
    p.write_bytes(p.read_bytes()[:200])
    rebuilt = run_phase(cfg, "prepare")["datasets"]
    assert rebuilt[0]["rebuilt"] and rebuilt[0]["data_hash"] == results[0]["data_hash"]


def test_task_runner_factory_kinds():
    from flows.runners import make_task_runner
    from sgdlab.config import OrchestrationConfig

    assert type(make_task_runner(OrchestrationConfig(task_runner="thread"))).__name__ == "ThreadPoolTaskRunner"
    assert type(make_task_runner(OrchestrationConfig(task_runner="process"))).__name__ == "ProcessPoolTaskRunner"
    assert (
        type(make_task_runner(OrchestrationConfig(task_runner="dask", dask_address="tcp://127.0.0.1:1"))).__name__
        == "DaskTaskRunner"
    )
