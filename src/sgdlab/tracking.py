"""MLflow, in one place: the only module of the library that imports ``mlflow``.

- The store: ``$MLFLOW_TRACKING_URI`` if set, else the embedded default
  ``sqlite:///<root>/mlflow/mlflow.db`` with artifacts under ``<root>/mlflow/artifacts`` (absolute paths:
  relative ones break under ``dvc exp run --temp`` and when the working directory changes).
- One experiment per study; one parent run per flow run; child runs by explicit ``parent_run_id``
  (the fluent active-run stack is per thread, so ``nested=True`` would not see a flow's run from a task
  thread).
- Metrics are buffered and written with ``log_batch`` (500 single ``log_metric`` calls cost 7.5 s on
  sqlite; one batch of 500 costs 0.09 s).
- Lineage tags on every run: ``git_commit``, ``data_hash``, ``prefect_flow_run_id``, ``study`` (plus
  ``dvc_exp_name``/``dvc_stage`` when DVC runs us).

``import mlflow`` costs ~2 s, so it happens inside functions, never at import time of this module.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sgdlab.paths import project_root

LINEAGE_TAGS = ("git_commit", "data_hash", "prefect_flow_run_id", "study")
_BATCH_LIMIT = 1000  # MLflow's maximum number of metrics in one log_batch call
_setup_lock = threading.RLock()
_dataset_lock = threading.Lock()
_clients: dict[str, Any] = {}


def default_tracking_uri(root: Path | None = None) -> str:
    """``sqlite:///<root>/mlflow/mlflow.db``; inside a ``dvc exp run --temp`` copy of the repo
    (``<repo>/.dvc/tmp/exps/...``) the root is the original repo, so experiments land in the main store."""
    root = (root or project_root()).resolve()
    marker = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"
    if marker in f"{root}{os.sep}":
        root = Path(f"{root}{os.sep}".split(marker)[0])
    return f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"


def tracking_uri(root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` or the absolute embedded default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def artifact_root(root: Path | None = None) -> Path:
    return (root or project_root()).resolve() / "mlflow" / "artifacts"


def client(root: Path | None = None):
    """An ``MlflowClient`` on the configured store (creates ``mlflow/`` for the embedded default).

    Never calls ``mlflow.set_tracking_uri``: it writes ``MLFLOW_TRACKING_URI`` into the process
    environment, which would pin every later lookup to the first project seen."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    with _setup_lock:
        c = _clients.get(uri)
        if c is None:
            if uri.startswith("sqlite:///"):
                c = _first_use(uri, Path(uri.removeprefix("sqlite:///")))
            elif uri.startswith(("http://", "https://")):
                # MLflow's own HTTP retries (7, ~4 min of backoff) would hide how long we wait; ours are bounded
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
                c = RetryingClient(MlflowClient(tracking_uri=uri), uri)
            else:
                c = MlflowClient(tracking_uri=uri)
            _clients[uri] = c
    return c


def _first_use(uri: str, db: Path):
    """Open the sqlite store under an exclusive lock across processes (``<db>.lock``, ``flock``).

    The first process to touch a fresh store creates and migrates its tables; two doing it at once fail with
    alembic errors and can leave it broken ("table _alembic_tmp_tags already exists"). Under the lock, the
    first creates it and the others wait, then find it ready. ``flock`` is released by the kernel when its
    holder dies, so a killed process never leaves the store locked."""
    import fcntl

    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            c = MlflowClient(tracking_uri=uri)
            c.search_experiments(max_results=1)  # creates / migrates the tables if needed
            return c
        except Exception as exc:  # noqa: BLE001 - name the file and the way out, not 700 lines of SQLAlchemy
            raise StoreError(
                f"MLflow store {db} cannot be opened ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
                f"If it is corrupt, move it aside (mv {db} {db}.bad) and re-run: a new store is created and the "
                "cached runs are logged again under new MLflow runs."
            ) from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class StoreError(RuntimeError):
    """The MLflow store cannot be opened; the message names the file and what to do."""


class TrackingUnavailable(StoreError):
    """The tracking server did not answer within the retry window; the message names it and what was pending."""


RETRY_ENV = "SGDLAB_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 300.0


def retry_window() -> float:
    """How long a call to a tracking server is retried while the server cannot be reached (seconds;
    ``$SGDLAB_TRACKING_RETRY_S``, default 300)."""
    raw = os.environ.get(RETRY_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_RETRY_S
    except ValueError:
        raise StoreError(f"{RETRY_ENV}={raw!r}: expected a number of seconds") from None


def _transient(exc: BaseException) -> bool:
    """A failure of the connection or of a restarting server, not of the request: worth retrying."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(exc, MlflowException):
        return False
    msg = str(exc)
    return (
        "failed with exception" in msg  # MLflow's wrapper of a requests/urllib3 connection error
        or "TEMPORARILY_UNAVAILABLE" in msg
        or any(f"error code {code}" in msg or f"status code {code}" in msg for code in (502, 503, 504))
    )


class RetryingClient:
    """An ``MlflowClient`` of a tracking server whose calls survive the server being restarted.

    A call that fails because the server cannot be reached (refused or dropped connections, 502/503/504 while
    it restarts) is retried with backoff (0.5 s, doubling to 10 s) for up to :func:`retry_window` seconds, then
    raises :class:`TrackingUnavailable` naming the server. Metric batches are safe to repeat: the store drops a
    point it already has (same key, step, timestamp and value). MLflow's client retries only on HTTP; a
    sqlite store is used directly (no proxy)."""

    def __init__(self, client, uri: str) -> None:
        self._client = client
        self._uri = uri

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return self._call(name, attr, args, kwargs)

        return call

    def _call(self, name, fn, args, kwargs):
        window = retry_window()
        deadline = time.monotonic() + window
        delay = 0.5
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only transient failures are retried, the rest re-raised
                if not _transient(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise TrackingUnavailable(
                        f"MLflow tracking server {self._uri} did not answer {name}() for {window:.0f} s "
                        f"({str(exc).splitlines()[0][:200]}); start it again (sgdlab tracking-server) and re-run: "
                        f"runs resume from their checkpoints. ${RETRY_ENV} sets the wait."
                    ) from None
                time.sleep(delay)
                delay = min(2 * delay, 10.0)


# The experiment tag MLflow's UI reads as the experiment's kind, and its value for classic model training
# (the UI's enum: "genai_development", "custom_model_development" = "Machine learning", ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# But the 3.17.2 UI bundle has its workflow-type switch hard-wired on: an experiment's landing tab and side
# bar follow the ``workflowType`` query parameter (else the browser's localStorage ``mlflow.workflowType``,
# default ``genai``), not the tag, so ``#/experiments/<id>`` opens the GenAI "Overview" even with the tag.
# Our URLs therefore carry ``?workflowType=machine_learning`` (checked in tests/test_mlflow_ui.py).
UI_WORKFLOW_TYPE = "machine_learning"


def ensure_experiment(name: str, root: Path | None = None) -> str:
    """Return the id of experiment ``name``, creating it (with an absolute artifact location) if needed.

    The experiment carries ``mlflow.experimentKind=custom_model_development`` (the UI's "machine learning"
    kind, so it is shown as training runs, not as a GenAI app); an existing active experiment without a kind
    gets the tag (one lookup, one tag write); a kind someone chose is left alone.

    Call once in the parent process before fanning out: concurrent first migrations of a fresh sqlite
    store fail (STACK.md)."""
    with _setup_lock:
        uri = tracking_uri(root)
        c = client(root)
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            if not exp.tags.get(EXPERIMENT_KIND_TAG) and exp.lifecycle_stage == "active":
                c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        # A local sqlite store keeps its artifacts beside it (``<db dir>/artifacts/<experiment>``), never in
        # a ``./mlruns`` of whatever directory a command happened to start in; a server decides for itself.
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / name).as_uri()
        try:
            return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception as exc:  # noqa: BLE001 - another process (e.g. an overlapping scheduled run) won the race
            exp = c.get_experiment_by_name(name) if "already exists" in str(exc) else None
            if exp is None:
                raise
            return exp.experiment_id


def git_commit(code_file: Path | None = None) -> str:
    """The commit of the checkout holding *this code* (``-dirty`` with uncommitted changes to tracked files),
    not of whatever repository encloses the project folder: a study run from inside another repo must not be
    tagged with that repo's commit. ``unknown`` when the code is not a tracked file of a git checkout (an
    installed wheel)."""
    here = Path(code_file or __file__).resolve()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here.parent, capture_output=True, text=True, timeout=10)

    try:
        if git("ls-files", "--error-unmatch", here.name).returncode != 0:
            return "unknown"
        sha = git("rev-parse", "HEAD").stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return f"{sha}-dirty" if dirty and sha else sha or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(study: str, data_hash: str = "", prefect_flow_run_id: str = "", **extra: str) -> dict[str, str]:
    """The tags every run carries (DESIGN.md conventions)."""
    tags = {
        "git_commit": git_commit(),
        "data_hash": data_hash or "none",
        "prefect_flow_run_id": prefect_flow_run_id or "none",
        "study": study,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_STAGE"):
        tags["dvc_stage"] = os.environ["DVC_STAGE"]
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def start_run(
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Create a run (a child when ``parent_run_id`` is given) and return its id; it stays RUNNING until
    :func:`end_run`. Uses the client API so it is safe from any thread."""
    c = client()
    all_tags = {**dict(tags), **owner_tags()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
    if params:
        log_params(run.info.run_id, params)
    return run.info.run_id


def owner_tags() -> dict[str, str]:
    """Which process owns a run while it is RUNNING (host and pid): how a later start tells a run whose
    process was killed (:func:`close_orphaned_runs`) from one still going."""
    import socket

    return {"sgdlab.host": socket.gethostname(), "sgdlab.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the experiment whose owner process (on this host) is gone: parent
    runs of a killed sweep would otherwise stay RUNNING forever. Runs owned by another host, or without owner
    tags (older runs, other tools), are left alone. Returns the ids closed."""
    import socket

    host = socket.gethostname()
    runs = client().search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    closed = []
    for r in runs:
        pid = r.data.tags.get("sgdlab.pid", "")
        if r.data.tags.get("sgdlab.host") != host or not pid.isdigit() or _alive(int(pid)):
            continue
        end_run(r.info.run_id, "KILLED")
        closed.append(r.info.run_id)
    return closed


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Close a run; ``status`` is FINISHED, FAILED or KILLED."""
    client().set_terminated(run_id, status=status)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log flat params (values stringified, MLflow's 6000-char limit respected)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    c = client()
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` for logging nested configs as params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


class MetricBuffer:
    """Collects metrics and writes them to one run with ``log_batch``.

    Call it as a metric sink ``buf(metrics, step)``; it flushes every ``flush_every`` points and on
    :meth:`flush`/context exit. Thread-safe; synchronous (async logging dropped points in parallel tasks).
    Non-finite values are logged as-is (MLflow stores NaN/inf), so a diverging curve stays visible.

    ``logged``: ``{key: last step already in the store}`` for a run being resumed (:func:`last_logged_steps`);
    points at or before that step are dropped, so a bit-exact replay from an older checkpoint does not log
    them twice and the history equals an uninterrupted run's.
    """

    def __init__(self, run_id: str, flush_every: int = 500, logged: Mapping[str, int] | None = None) -> None:
        self.run_id = run_id
        self.flush_every = flush_every
        self.logged = dict(logged or {})
        self._items: list = []
        self._lock = threading.Lock()

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step = int(step)
        with self._lock:
            self._items.extend(
                Metric(k, float(v), ts, step) for k, v in metrics.items() if step > self.logged.get(k, -(2**62))
            )
            full = len(self._items) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        if not items:
            return
        c = client()
        for i in range(0, len(items), _BATCH_LIMIT):
            try:
                c.log_batch(self.run_id, metrics=items[i : i + _BATCH_LIMIT])
            except BaseException:
                with self._lock:
                    self._items[:0] = items[i:]  # kept for the next flush: nothing is dropped on a failed write
                raise

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def last_logged_steps(run_id: str) -> dict[str, int]:
    """``{metric key: largest step stored}`` of a run (empty for a run with no metrics)."""
    c = client()
    keys = c.get_run(run_id).data.metrics
    return {k: max((m.step for m in c.get_metric_history(run_id, k)), default=-1) for k in keys}


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` names a run in the store that is not deleted."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def find_tagged_run(experiment_id: str, **tags: str) -> str | None:
    """The earliest active run of the experiment carrying all ``tags`` (e.g. a child run created by an attempt
    killed before it recorded the id), or None."""
    flt = " and ".join(f"tags.{k} = '{str(v)}'" for k, v in tags.items())
    runs = client().search_runs([experiment_id], filter_string=flt, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    with MetricBuffer(run_id) as buf:
        buf(metrics, step)


def log_dataset(run_id: str, name: str, source_path: str, digest: str, context: str = "training") -> None:
    """Record a dataset as a run input (MLflow dataset lineage) with ``digest`` = the data hash
    (MLflow keeps at most 36 characters of a digest; the full hash is in the ``data_hash`` tag)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(source_path).resolve()))
    ds = MetaDataset(source=source, name=name, digest=digest[:36])
    entity = ds._to_mlflow_entity()
    inputs = [DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
    with _dataset_lock:  # two runs of a sweep inserting the same new dataset row race on its unique key
        try:
            client().log_inputs(run_id, datasets=inputs)
        except Exception as exc:  # noqa: BLE001 - another process inserted it first: the row exists now
            if "UNIQUE constraint" not in str(exc) and "unique constraint" not in str(exc).lower():
                raise
            client().log_inputs(run_id, datasets=inputs)


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(path), artifact_path)


def find_runs(experiment_name: str, filter_string: str = "", max_results: int = 1000) -> list:
    """Runs of an experiment (newest first); empty when the experiment does not exist."""
    c = client()
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return []
    return c.search_runs(
        [exp.experiment_id],
        filter_string=filter_string,
        max_results=max_results,
        order_by=["attributes.start_time DESC"],
    )


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The command that serves the MLflow UI over this project's store."""
    import sys

    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(),
        "--default-artifact-root",
        artifact_root().as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]


def iter_metric_history(run_id: str, key: str) -> Iterable[tuple[int, float]]:
    for m in client().get_metric_history(run_id, key):
        yield m.step, m.value


def ui_base_url(host: str = "127.0.0.1", port: int = 5000) -> str:
    """``http://host:port`` of the MLflow UI (a wildcard bind address is reached on loopback)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"http://{host}:{port}"


def runs_url(experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The MLflow UI's runs table of an experiment:
    ``http://host:port/#/experiments/<id>/runs?workflowType=machine_learning`` (the UI routes in the URL
    fragment; the query keeps its side bar on model training instead of GenAI)."""
    return f"{ui_base_url(host, port)}/#/experiments/{experiment_id}/runs?workflowType={UI_WORKFLOW_TYPE}"


def run_url(experiment_id: str, run_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The MLflow UI page of one run: ``http://host:port/#/experiments/<id>/runs/<run id>?workflowType=...``."""
    return f"{ui_base_url(host, port)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType={UI_WORKFLOW_TYPE}"
