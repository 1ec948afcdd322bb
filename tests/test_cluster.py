"""Past one machine: a sweep on separate Dask worker processes logging to an MLflow server on PostgreSQL, with
a worker SIGKILLed mid-run and the tracking server restarted mid-sweep. Every process on 127.0.0.1, started
and stopped here (PostgreSQL from Debian's package; skipped with the reason where it is absent)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from sgdlab import results, tracking
from sgdlab.config import from_dict

ROOT = Path(__file__).resolve().parents[1]


def _postgres_missing() -> str:
    from sgdlab.trackserver import ServerError, postgres_bin_dir

    try:
        postgres_bin_dir()
        import psycopg2  # noqa: F401
    except (ServerError, ImportError) as exc:
        return str(exc)
    return ""


needs_postgres = pytest.mark.skipif(bool(_postgres_missing()), reason=_postgres_missing() or "ok")


@pytest.fixture(scope="module")
def tracking_server():
    """PostgreSQL + ``mlflow server`` (one worker) in a fresh state directory outside pytest's private tmp
    (PostgreSQL runs as the ``postgres`` user when we are root, and must reach its data directory)."""
    from sgdlab.trackserver import TrackingServer

    state = Path(tempfile.mkdtemp(prefix="sgdlab-trackserver-"))
    state.chmod(0o755)
    ts = TrackingServer(state, port=0, workers=1)
    with ts:
        yield ts


def _cfg(tmp_path: Path, **over) -> dict:
    raw = {
        "study": {"name": "cluster"},
        "data": {"root": str(tmp_path / "data"), "datasets": ["xor"], "xor": {"n_train": 256, "n_test": 64}},
        "train": {"dataset": "xor", "steps": 2000, "log_every": 10, "eval_every": 0, "checkpoint_every": 200},
        "sweep": {
            "optimizers": [{"name": "sgd", "lr": [0.05, 0.1]}],
            "seeds": [0, 1],
            "batch_sizes": [32],
            "models": [{"name": "mlp", "kwargs": {"widths": [64, 64]}}],
        },
        "orchestration": {"task_runner": "dask"},
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v}
    return raw


def _child_runs(experiment: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in tracking.find_runs(experiment, "tags.phase = 'sweep'"):
        if "run_key" in r.data.tags:
            out.setdefault(r.data.tags["run_key"], []).append(r)
    return out


@needs_postgres
def test_sweep_on_dask_workers_survives_a_worker_sigkill_and_a_tracking_server_restart(
    tmp_path, prefect_harness, prefect_api, tracking_server, monkeypatch
):
    """4 runs on 2 worker processes: once both workers have written a checkpoint, one worker is SIGKILLed (its
    nanny restarts it, the scheduler hands its run to a live worker, which resumes from the checkpoint), then
    the MLflow server is stopped for 3 s and started again (metric writes wait and retry). 0 runs lost, 0
    duplicated: one result row, one MLflow child run and a gap-free, repeat-free loss history per run key."""
    from flows.phases import run_phase
    from sgdlab.cluster import DaskCluster

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    env = {
        "SGDLAB_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": tracking_server.url,
        "PREFECT_API_URL": prefect_api,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }
    with DaskCluster(n_workers=2, env=env, log_dir=tmp_path / "dask") as dc:
        raw = _cfg(tmp_path, orchestration={"task_runner": "dask", "dask_address": dc.address})
        cfg = from_dict(raw)
        models = tmp_path / "models" / "cluster"
        done: dict = {}

        def sweep():
            try:
                done["out"] = run_phase(cfg, "sweep")
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                done["error"] = exc

        import threading

        t = threading.Thread(target=sweep)
        t.start()
        deadline = time.monotonic() + 240
        while True:  # both workers busy, each with a checkpoint of its current run
            training = [
                d for d in models.glob("*") if (d / "checkpoint.pt").exists() and not (d / "result.json").exists()
            ]
            if len(training) >= 2:
                break
            assert t.is_alive() and time.monotonic() < deadline, f"no two runs in training: {done}"
            time.sleep(0.1)
        pids = dc.worker_pids()
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        time.sleep(1.0)
        tracking_server.mlflow.stop()  # the tracking server goes away mid-sweep ...
        time.sleep(3.0)
        tracking_server.start_mlflow()  # ... and comes back on the same port
        t.join(timeout=400)
        assert not t.is_alive(), "sweep did not finish"
        assert "error" not in done, done.get("error")

    rows = done["out"]["rows"]
    keys = sorted(r["run_key"] for r in rows)
    assert len(keys) == 4 == len(set(keys)), keys  # no run lost, none twice
    assert all(r["status"] == "finished" for r in rows), [r["status"] for r in rows]
    table = results.read_table(tmp_path / "results" / "cluster" / "runs.parquet")
    assert sorted(r["run_key"] for r in table) == keys
    resumed = [r for r in rows if r["resumed_from"]]
    assert resumed, "the killed worker's run did not resume from its checkpoint"
    assert all(r["resumed_from"] % 200 == 0 for r in resumed)
    children = _child_runs("cluster")
    assert {k: len(v) for k, v in children.items()} == {k: 1 for k in keys}, "one MLflow child run per key"
    for k in keys:
        run = children[k][0]
        assert run.info.status == "FINISHED"
        steps = [s for s, _ in tracking.iter_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(10, 2001, 10)), f"{k}: {len(steps)} points, {len(set(steps))} distinct"
    assert json.loads((models / resumed[0]["run_key"] / "result.json").read_text())["status"] == "finished"


@needs_postgres
def test_tracking_server_serves_artifacts_and_a_bounded_wait_names_the_server(tracking_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    exp = tracking.ensure_experiment("artifacts")
    rid = tracking.start_run(exp, "r", {"k": "v"})
    f = Path(tempfile.mkdtemp()) / "note.txt"
    f.write_text("hello")
    tracking.log_artifact(rid, f)
    assert [a.path for a in tracking.client().list_artifacts(rid)] == ["note.txt"]
    assert (tracking_server.state_dir / "artifacts").is_dir()  # stored by the server, not by the client

    monkeypatch.setenv(tracking.RETRY_ENV, "2")
    from sgdlab.trackserver import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match=f"{dead} did not answer"):
        with tracking.MetricBuffer("0" * 32) as buf:
            buf({"loss": 1.0}, 1)
    assert time.monotonic() - t0 < 30
