"""Shared fixtures. Isolation first: tests never write into the repo's mlflow/, .prefect/ or data/.

- ``SGDLAB_HOME`` points at a session temp project (holding a copy of params.yaml and dvc.yaml).
- ``PREFECT_HOME`` points into it before anything imports Prefect.
- ``mlflow_store``: a per-test copy of one pre-migrated sqlite MLflow DB (a fresh DB pays ~5 s of
  migrations; copying costs milliseconds).
- ``prefect_api``/``prefect_harness``: one real Prefect server for the session, for in-process flows and for the
  CLI processes tests start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="sgdlab-test-home-"))
for name in ("params.yaml", "dvc.yaml"):
    shutil.copy(REPO / name, _SESSION_HOME / name)
os.environ["SGDLAB_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / ".prefect")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("CI", "true")  # quiet progress bars

import torch  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: two threads per process oversubscribe them (4-9x slower measured)


@pytest.fixture(autouse=True)
def _reap_spawned():
    """Processes a test started with ``procs.spawn`` do not outlive it, even when it fails or times out."""
    import procs

    yield
    procs.reap()


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """Migrate one sqlite MLflow DB once per session."""
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("mlflow-template")
    db = d / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path, _mlflow_template, monkeypatch) -> str:
    """A fresh, already-migrated MLflow store for one test; returns its tracking URI."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server (``prefect server start`` on a free loopback port) for the whole session.

    Its URL goes into ``os.environ["PREFECT_API_URL"]``, so the CLI processes tests start use it instead of
    each starting its own ephemeral API server (17.1 s vs 4.0 s for a bare flow in a fresh process, measured
    here). The README's default (the ephemeral API) stays covered: ``test_dvc``'s ``make run`` case strips
    ``PREFECT_*`` from its environment."""
    from flows.serve import free_port, start_server, stop

    log = tmp_path_factory.mktemp("prefect-server") / "server.log"
    # the scheduler loops every 2 s (default 60 s) so that test_schedule's interval runs appear quickly
    # the services no test needs stay off (each polls the database on a loop: ~10% of a core together)
    off = ("CANCELLATION_CLEANUP", "CLEANUP_RECONCILER", "FOREMAN", "LATE_RUNS", "PAUSE_EXPIRATIONS", "REPOSSESSOR")
    off_env = {f"PREFECT_SERVER_SERVICES_{s}_ENABLED": "false" for s in (*off, "TRIGGERS")}
    proc, url = start_server("127.0.0.1", free_port(), timeout=180, scheduler_loop_s=2, log_path=log, env_extra=off_env)
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send queued flow-run logs now, not at exit to a stopped server
        os.environ.pop("PREFECT_API_URL", None)
        stop(proc)


@pytest.fixture(scope="session")
def prefect_harness(prefect_api):
    """The in-process flows of a test talk to the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


@pytest.fixture
def data_root(tmp_path) -> Path:
    return tmp_path / "data"


FASHION_DIR = Path(os.environ.get("SGDLAB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
