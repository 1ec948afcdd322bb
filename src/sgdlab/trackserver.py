"""A tracking server for more than one machine: PostgreSQL plus ``mlflow server`` with served artifacts.

``sgdlab tracking-server`` (and the tests) start, in a git-ignored state directory (default
``<project>/mlflow/server``):

- a PostgreSQL cluster (``pgdata/``, Debian's PostgreSQL 15 binaries), listening on 127.0.0.1 only, TCP only
  (no Unix socket: its path would have to be short and writable), with password authentication
  (``scram-sha-256``) for the role ``mlflow``; the password is generated once and kept in ``pg-password``
  (mode 0600);
- ``mlflow server`` on it, serving artifacts from ``artifacts/`` (clients upload and download them over
  HTTP, so they need no shared filesystem for artifacts).

``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`` then makes every phase log there. PostgreSQL refuses to run
as root, so when this process is root the cluster belongs to (and runs as) the ``postgres`` system user
that Debian's package creates.

Written here because no library starts a throw-away PostgreSQL cluster: ``pg_ctlcluster`` manages only the
system-wide clusters under ``/etc/postgresql`` and needs root for all of it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sgdlab.paths import project_root

PG_ROLE = "mlflow"
PG_DATABASE = "mlflow"
PG_SYSTEM_USER = "postgres"  # Debian's package creates it


class ServerError(RuntimeError):
    """A server could not be started; the message says which and where its log is."""


def default_state_dir(root: Path | None = None) -> Path:
    return (root or project_root()).resolve() / "mlflow" / "server"


def postgres_bin_dir(path: str | None = None, debian: Path = Path("/usr/lib/postgresql")) -> Path:
    """The directory with ``initdb`` and ``postgres``: on ``PATH``, else Debian's newest
    ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which("initdb", path=path)
    if found and (Path(found).resolve().parent / "postgres").exists():
        return Path(found).resolve().parent
    versions = sorted(debian.glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    raise ServerError(
        "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql). "
        "On Debian: apt-get install -y postgresql (make setup does it when run as root)."
    )


def _run_as() -> dict:
    """``subprocess`` arguments that run PostgreSQL's programs as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise ServerError(
            f"running as root, but there is no {PG_SYSTEM_USER!r} user to run PostgreSQL as "
            "(PostgreSQL refuses root); install Debian's postgresql package or run as another user"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown_for_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _check_reachable(path: Path) -> None:
    """As root, every directory above the cluster must be searchable by the ``postgres`` user."""
    if os.geteuid() != 0:
        return
    for d in path.resolve().parents:
        if not os.stat(d).st_mode & 0o001:
            raise ServerError(
                f"{d} is not searchable by other users, so PostgreSQL (running as {PG_SYSTEM_USER!r}) cannot "
                f"reach {path}; choose a state directory elsewhere (--dir) or chmod o+x {d}"
            )


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(proc: subprocess.Popen | None, sig: int, timeout: float, linger: float = 3.0) -> None:
    """Send ``sig`` to the process group of ``proc`` (started with ``start_new_session``); SIGKILL the group if
    its leader is still alive after ``timeout``, or if other members (a server's worker processes) are still
    there ``linger`` seconds after the leader exited."""
    if proc is None:
        return
    pgid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(pgid, sig)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + linger
    while _group_alive(pgid) and time.monotonic() < deadline and proc.poll() is not None:
        time.sleep(0.1)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


class Service:
    """``with`` support for something with ``start()`` and ``stop()``: stopped on exit, and also when ``start``
    fails half-way (a started PostgreSQL is not left behind by a failed MLflow server)."""

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Postgres:
    """A private PostgreSQL cluster in ``state_dir/pgdata`` on ``host:port``."""

    state_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "pg-password"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "postgres.log"

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def uri(self) -> str:
        """The SQLAlchemy URI of the MLflow database (psycopg2 driver)."""
        return f"postgresql+psycopg2://{PG_ROLE}:{self.password()}@{self.host}:{self.port}/{PG_DATABASE}"

    def init(self) -> None:
        """Create the cluster (once): role ``mlflow`` with a generated password, password auth only."""
        bindir = postgres_bin_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24))
        if (self.pgdata / "PG_VERSION").exists():
            return
        _check_reachable(self.pgdata)
        if self.pgdata.exists():  # a half-made cluster from an interrupted init
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        _chown_for_postgres(self.pgdata)
        pwfile = self.state_dir / ".initdb-pw"  # readable by the postgres user for initdb, removed right after
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password())
        _chown_for_postgres(pwfile)
        try:
            out = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    PG_ROLE,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                **_run_as(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise ServerError(f"initdb failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-800:]}")

    def start(self, timeout: float = 60.0) -> None:
        """Start the cluster (creating it first if needed) and the ``mlflow`` database; returns when it accepts
        connections."""
        self.init()
        if not self.port:
            self.port = free_port(self.host)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(postgres_bin_dir() / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_run_as(),
        )
        log.close()
        self._wait_ready(timeout)
        self._create_database()

    def _connect(self, dbname: str):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=PG_ROLE, password=self.password(), dbname=dbname, connect_timeout=3
        )

    def _wait_ready(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"postgres exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                self._connect("postgres").close()
                return
            except psycopg2.OperationalError as exc:
                last = str(exc).strip()
                time.sleep(0.3)
        self.stop()
        raise ServerError(
            f"postgres on {self.host}:{self.port} not ready after {timeout:.0f} s ({last}); see {self.log_path}"
        )

    def _create_database(self) -> None:
        conn = self._connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: running transactions are rolled back, the data is consistent on disk)."""
        _stop(self.proc, signal.SIGINT, timeout)


@dataclass
class MlflowServer:
    """``mlflow server`` on ``backend_uri`` with artifacts served from ``artifacts_dir``."""

    backend_uri: str
    artifacts_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    workers: int = 2
    log_path: Path | None = None
    allowed_hosts: str | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 120.0) -> str:
        """Start the server; return its URL once ``/health`` answers."""
        if not self.port:
            self.port = free_port(self.host)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_uri  # not on the command line: it holds the password
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--artifacts-destination",
                self.artifacts_dir.resolve().as_uri(),
                "--serve-artifacts",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *(["--allowed-hosts", self.allowed_hosts] if self.allowed_hosts else []),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise ServerError(f"mlflow server exited with code {self.proc.returncode}{where}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"mlflow server on {self.host}:{self.port} did not answer /health within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        _stop(self.proc, signal.SIGTERM, timeout)


@dataclass
class TrackingServer(Service):
    """PostgreSQL and an MLflow server on it, started and stopped together (a context manager)."""

    state_dir: Path = field(default_factory=default_state_dir)
    port: int = 5000
    pg_port: int = 0
    host: str = "127.0.0.1"
    workers: int = 2
    postgres: Postgres = field(init=False)
    mlflow: MlflowServer | None = field(default=None, init=False)

    allowed_hosts: str | None = None  # MLflow's --allowed-hosts, for a server reached from other machines

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.postgres = Postgres(self.state_dir, port=self.pg_port)  # PostgreSQL itself stays on 127.0.0.1

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> str:
        self.postgres.start()
        self.start_mlflow()
        return self.url

    def start_mlflow(self) -> str:
        """(Re)start only the MLflow server, on the same port (the tests restart it mid-sweep)."""
        self.mlflow = MlflowServer(
            self.postgres.uri(),
            self.state_dir / "artifacts",
            port=self.port,
            host=self.host,
            workers=self.workers,
            log_path=self.state_dir / "mlflow-server.log",
            allowed_hosts=self.allowed_hosts,
        )
        self.mlflow.start()
        self.port = self.mlflow.port
        return self.url

    def stop(self) -> None:
        if self.mlflow is not None:
            self.mlflow.stop()
        self.postgres.stop()
