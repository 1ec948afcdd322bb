"""Scheduled runs against the session's real Prefect server (``prefect_api``: a loopback port, its scheduler
looping every 2 s), not the ephemeral API."""

import shutil
import time
from pathlib import Path

import yaml

from sgdlab import tracking

REPO = Path(__file__).resolve().parents[1]


def test_interval_schedule_creates_a_run_that_completes_and_is_tracked(
    tmp_path, mlflow_store, monkeypatch, prefect_api
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import start_serve_process, stop

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["study"]["name"] = "sched-test"
    params["data"].update({"datasets": ["xor"], "xor": {"n_train": 100, "n_test": 50}, "probe_size": 20})
    params["train"].update({"dataset": "xor", "steps": 10, "eval_every": 5, "checkpoint_every": 5, "log_every": 5})
    params["sweep"].update(
        {
            "optimizers": [{"name": "sgd", "lr": 0.1}],
            "seeds": [0],
            "models": [{"name": "mlp", "kwargs": {"widths": [8]}}],
            "batch_sizes": [16],
        }
    )
    params["probe"].update({"every": 0, "subset_size": 20})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    url = prefect_api
    ours = DeploymentFilter(name=DeploymentFilterName(any_=["every-few-seconds"]))  # the server is shared
    worker = None
    try:
        worker = start_serve_process(
            url,
            "every-few-seconds",
            None,
            5,
            str(tmp_path / "params.yaml"),
            [],
            None,
            env_extra={"MLFLOW_TRACKING_URI": mlflow_store},
            log_path=tmp_path / "serve.log",
            phases=["prepare", "sweep"],
        )
        completed = None
        deadline = time.monotonic() + 300  # ~140 s measured on 2 idle cores; more when they are shared
        with temporary_settings(updates={PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline and completed is None:
                    time.sleep(3)
                    assert worker.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    scheduled = client.read_flow_runs(deployment_filter=ours)
                    done = [r for r in scheduled if r.state and r.state.is_completed()]
                    failed = [r for r in scheduled if r.state and r.state.is_failed()]  # none yet: see below
                    assert not failed, (tmp_path / "serve.log").read_text()[-3000:]
                    completed = done[0] if done else None
                assert completed is not None, (
                    "no scheduled run completed in time:\n" + (tmp_path / "serve.log").read_text()[-3000:]
                )
                deployment = client.read_deployment(completed.deployment_id)
                # The API has no authentication: a run created with a path override must fail before any
                # compute, naming the key, and write nothing at the path it asked for.
                elsewhere = tmp_path / "elsewhere"
                client.pause_deployment(deployment.id)  # no more scheduled runs competing for the serve loop
                for r in client.read_flow_runs(deployment_filter=ours):
                    if r.state and r.state.is_scheduled():
                        client.delete_flow_run(r.id)
                rogue = client.create_flow_run_from_deployment(
                    deployment.id,
                    parameters={
                        "params_path": str(tmp_path / "params.yaml"),
                        "overrides": ["study.allow_outside_project=true", f"study.models_dir={elsewhere}"],
                    },
                )
                while time.monotonic() < deadline:
                    state = client.read_flow_run(rogue.id).state
                    if state and state.is_final():
                        break
                    time.sleep(2)
                assert state.is_failed(), state
                assert "study.allow_outside_project" in (state.message or ""), state.message
                assert not elsewhere.exists()
        assert deployment.name == "every-few-seconds"
        runs = tracking.find_runs("sched-test")
        pipeline = [r for r in runs if r.info.run_name == "pipeline"]
        assert pipeline and pipeline[0].data.tags["prefect_flow_run_id"] in {str(completed.id)} | {
            r.data.tags["prefect_flow_run_id"] for r in pipeline
        }
        assert any(r.data.tags.get("phase") == "sweep" and "run_key" in r.data.tags for r in runs)
    finally:
        stop(worker)
    assert worker.poll() is not None  # stopped cleanly


def test_served_deployment_refuses_other_params_files_and_path_overrides():
    import pytest

    from flows.serve import check_run_parameters
    from sgdlab.config import ConfigError

    served = {"params_path": "/p/params.yaml", "overrides": ["study.results_dir=out"]}
    check_run_parameters(served, "/p/params.yaml", ["train.steps=5", "study.results_dir=out"], "full")  # allowed
    with pytest.raises(ConfigError, match="params_path '/q/params.yaml'"):
        check_run_parameters(served, "/q/params.yaml", [], None)
    for key in ("study.models_dir", "study.results_dir", "data.root", "study.name", "data.fashion_mnist.source_dir"):
        with pytest.raises(ConfigError, match=f"override {key}: path settings"):
            check_run_parameters(served, "/p/params.yaml", [f"{key}=/tmp/x"], None)
    with pytest.raises(ConfigError, match="override study.allow_outside_project"):
        check_run_parameters(served, "/p/params.yaml", ["study.allow_outside_project=true"], None)
