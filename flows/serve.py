"""Scheduled study runs: a real Prefect server on loopback plus a process serving the study deployment.

Schedules need a real server (the ephemeral API only warns "Cannot schedule flows on an ephemeral
server"). ``start_server`` launches ``prefect server start`` with this project's PREFECT_HOME and waits
for its health endpoint; ``start_serve_process`` runs ``python -m flows.serve`` (the ``__main__`` below)
with ``PREFECT_API_URL`` pointing at it, which registers the ``study`` flow as a deployment with the
configured cron or interval schedule and executes the runs the scheduler creates. ``sgdlab serve`` runs
both and stops both cleanly on Ctrl-C.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sgdlab.paths import project_root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _env(api_url: str | None = None, extra: dict | None = None) -> dict:
    root = project_root()
    env = {
        **os.environ,
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(root / ".prefect")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SGDLAB_HOME": str(root),
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra or {})
    return env


def start_server(
    host: str,
    port: int,
    timeout: float = 120.0,
    scheduler_loop_s: float | None = None,
    log_path: Path | None = None,
    env_extra: dict | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``prefect server start`` on host:port; return (process, API URL) once it answers /api/health."""
    extra = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(scheduler_loop_s)} if scheduler_loop_s else {}
    extra.update(env_extra or {})
    extra["PREFECT_API_URL"] = ""  # the server itself must not point at another API
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            host,
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        env=_env(extra=extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{host}:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with code {proc.returncode}" + (f"; see {log_path}" if log_path else "")
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"prefect server on {host}:{port} did not answer within {timeout:.0f} s")


def start_serve_process(
    api_url: str,
    name: str,
    cron: str | None,
    interval_s: int | None,
    params_path: str | None,
    overrides: list[str],
    profile: str | None,
    env_extra: dict | None = None,
    log_path: Path | None = None,
    phases: list[str] | None = None,
) -> subprocess.Popen:
    """Start the process that registers and serves the ``study`` deployment."""
    spec = json.dumps(
        {
            "name": name,
            "cron": cron,
            "interval": interval_s,
            "params_path": params_path,
            "overrides": overrides,
            "profile": profile,
            "phases": phases,
        }
    )
    log = open(log_path, "wb") if log_path else None
    return subprocess.Popen(
        [sys.executable, "-m", "flows.serve", spec],
        env=_env(api_url, env_extra),
        cwd=str(project_root()),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
    )


def stop(*procs: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGINT each process group, then SIGTERM/SIGKILL what is still alive."""
    for p in procs:
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(timeout=5)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue


# Set in the serving process (and so in every flow run it executes): the parameters the operator served.
SERVED_ENV = "SGDLAB_SERVED"


def _is_path_key(key: str) -> bool:
    """Settings that decide where files are read or written (``study.models_dir``, ``data.root``, any
    ``*_dir``/``*_path``, and the switch that lets them leave the project)."""
    from sgdlab.config import PATH_KEYS

    parts = tuple(key.split("."))
    last = parts[-1]
    return (
        parts in PATH_KEYS
        or parts == ("study", "allow_outside_project")
        or last.endswith(("_dir", "_path", "_file"))
        or last in ("root", "path")
    )


def check_run_parameters(
    served: dict, params_path: str | None, overrides: list[str] | None, profile: str | None
) -> None:
    """Refuse flow-run parameters that would point a served deployment's outputs somewhere else.

    The Prefect API that ``sgdlab serve`` starts has no authentication, so anyone who can reach it can
    create a run of the deployment with their own parameters. Those runs may choose a profile, a subset of
    phases and value overrides, but not another params file or a path setting other than the ones the
    operator served (raises ``ConfigError`` naming the parameter, before any compute).
    """
    from sgdlab.config import ConfigError, parse_override

    served_params = served.get("params_path")
    if (params_path or None) != (served_params or None):
        raise ConfigError(
            f"params_path {params_path!r}: this deployment serves {served_params or 'the project params.yaml'!r} "
            "only; start another `sgdlab serve --params FILE` to schedule a different file"
        )
    allowed = set(served.get("overrides") or [])
    for item in overrides or []:
        key, _ = parse_override(item)
        if _is_path_key(key) and item not in allowed:
            raise ConfigError(
                f"override {key}: path settings cannot be changed through a served deployment "
                "(set them in params.yaml or in the `sgdlab serve --set` that serves it)"
            )


def _serve_main(spec: dict) -> None:
    from sgdlab.paths import apply_prefect_env

    apply_prefect_env()
    os.environ[SERVED_ENV] = json.dumps(spec)  # inherited by the flow-run processes the serve loop starts
    from flows.pipeline import study_flow

    study_flow.serve(
        name=spec["name"],
        cron=spec["cron"],
        interval=spec["interval"],
        parameters={
            "params_path": spec["params_path"],
            "overrides": spec["overrides"],
            "profile": spec["profile"],
            "phases": spec.get("phases"),
        },
        description="The sgdlab study pipeline on a schedule (sgdlab serve).",
        tags=["sgdlab"],
        pause_on_shutdown=False,
        limit=1,  # one study run at a time: a late run waits for the previous one instead of competing for its keys
    )


if __name__ == "__main__":
    _serve_main(json.loads(sys.argv[1]))
