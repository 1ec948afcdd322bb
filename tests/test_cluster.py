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
from test_faults import _child_runs

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


@pytest.mark.slow  # ~2 min on 2 cores; the default suite keeps the server (artifacts, bounded wait) and the
# Dask GPU-resource tests below
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


def test_missing_postgresql_says_how_to_install_it(tmp_path):
    from sgdlab.trackserver import ServerError, postgres_bin_dir

    with pytest.raises(ServerError, match="apt-get install -y postgresql"):
        postgres_bin_dir(path=str(tmp_path), debian=tmp_path / "none")
    (tmp_path / "lib" / "9" / "bin").mkdir(parents=True)
    (tmp_path / "lib" / "16" / "bin").mkdir(parents=True)
    for v in ("9", "16"):
        (tmp_path / "lib" / v / "bin" / "postgres").touch()
    assert postgres_bin_dir(path=str(tmp_path), debian=tmp_path / "lib") == tmp_path / "lib" / "16" / "bin"


class _Flaky:
    """A client whose ``log_batch`` fails like a restarting server ``fails`` times, then works."""

    def __init__(self, fails: int, exc: Exception) -> None:
        self.fails, self.exc, self.calls = fails, exc, 0

    def log_batch(self, run_id, metrics=()):
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc
        return len(metrics)


def test_retrying_client_waits_out_a_restart_but_not_a_bad_request(monkeypatch):
    from mlflow.exceptions import MlflowException

    down = MlflowException("API request to http://h:1/api/2.0/mlflow/runs/log-batch failed with exception "
                           "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Connection refused)")  # fmt: skip
    c = tracking.RetryingClient(_Flaky(2, down), "http://h:1")
    assert c.log_batch("r", metrics=[1, 2]) == 2 and c._client.calls == 3  # retried twice, then written

    bad = MlflowException("INVALID_PARAMETER_VALUE: Invalid value for metric 'x'")
    c = tracking.RetryingClient(_Flaky(1, bad), "http://h:1")
    with pytest.raises(MlflowException, match="INVALID_PARAMETER_VALUE"):
        c.log_batch("r")
    assert c._client.calls == 1  # a request the server refused is not retried

    monkeypatch.setenv(tracking.RETRY_ENV, "1")
    c = tracking.RetryingClient(_Flaky(100, down), "http://h:1")
    with pytest.raises(tracking.TrackingUnavailable, match=r"http://h:1 did not answer log_batch\(\) for 1 s"):
        c.log_batch("r")
    monkeypatch.setenv(tracking.RETRY_ENV, "soon")
    with pytest.raises(tracking.StoreError, match="SGDLAB_TRACKING_RETRY_S='soon'"):
        tracking.retry_window()


def test_a_failed_flush_keeps_its_points_for_the_next_one(monkeypatch):
    from mlflow.exceptions import MlflowException

    flaky = _Flaky(1, MlflowException("boom"))
    monkeypatch.setattr(tracking, "client", lambda root=None: flaky)
    buf = tracking.MetricBuffer("r", flush_every=1000)
    for s in range(1, 4):
        buf({"a": 1.0, "b": 2.0}, s)
    with pytest.raises(MlflowException):
        buf.flush()
    assert len(buf._items) == 6  # nothing dropped
    buf.flush()
    assert flaky.calls == 2 and buf._items == []


def test_gpu_studies_ask_clusters_for_a_gpu_and_are_refused_where_none_is_offered():
    from distributed import LocalCluster

    from flows.runners import check_resources, unit_resources

    def cfg(**o):
        return from_dict({"study": {"device": o.pop("device", "cuda")}, "orchestration": o})

    assert unit_resources(cfg(task_runner="thread")) is None
    assert unit_resources(cfg(task_runner="dask")) is None  # a LocalCluster has no resources to ask for
    assert unit_resources(cfg(task_runner="dask", dask_address="tcp://h:1", device="auto")) is None
    assert unit_resources(cfg(task_runner="dask", dask_address="tcp://h:1")) == {"GPU": 1}
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc:
        with pytest.raises(RuntimeError, match="no worker of .* offers it; start the workers with --resources GPU=1"):
            check_resources(cfg(task_runner="dask", dask_address=lc.scheduler_address))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, resources={"GPU": 1}) as lc:
        check_resources(cfg(task_runner="dask", dask_address=lc.scheduler_address))  # offered: no error


def _wait_line(proc, prefix: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        assert line or proc.poll() is None, f"exited with {proc.returncode} before printing {prefix!r}"
    raise AssertionError(f"no {prefix!r} line in {timeout} s")


def _closed(port: int, timeout: float = 20) -> bool:
    """Nothing listens on 127.0.0.1:port (within ``timeout``)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@needs_postgres
def test_tracking_server_and_cluster_commands_start_everything_and_stop_it_on_sigterm(tmp_path):
    import subprocess
    import sys
    import urllib.request

    from procs import spawn

    from sgdlab.trackserver import free_port

    state = Path(tempfile.mkdtemp(prefix="sgdlab-cli-trackserver-"))
    state.chmod(0o755)
    env = {**os.environ, "SGDLAB_HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    ts = spawn(
        [sys.executable, "-m", "sgdlab.cli", "tracking-server", "--port", str(port), "--dir", str(state), "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pg_port = int(_wait_line(ts, "PostgreSQL on 127.0.0.1:").split(":")[1].split()[0])
    line = _wait_line(ts, "export MLFLOW_TRACKING_URI=")
    assert f"http://127.0.0.1:{port}" in line
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        assert r.status == 200
    sched = free_port()
    cl = spawn(
        [sys.executable, "-m", "sgdlab.cli", "cluster", "--workers", "1", "--port", str(sched),
         "--prefect-port", str(free_port())],
        env={**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    prefect_port = int(_wait_line(cl, "Prefect server: http://127.0.0.1:").rsplit(":", 1)[1].split("/")[0])
    _wait_line(cl, "export PREFECT_API_URL=")
    assert f"dask_address=tcp://127.0.0.1:{sched}" in _wait_line(cl, "sgdlab run --set")
    for proc, ports in ((cl, (sched, prefect_port)), (ts, (port, pg_port))):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert all(_closed(p) for p in ports), f"a server on {ports} outlived its command"
    assert (state / "pgdata" / "PG_VERSION").is_file() and not (state / "pgdata" / "postmaster.pid").exists()
