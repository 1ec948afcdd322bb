"""A Dask cluster of separate worker processes: ``dask scheduler`` plus ``dask worker`` processes (with nannies).

``sgdlab cluster`` (and the tests) start it on 127.0.0.1; a flow run with ``orchestration.task_runner=dask``
and ``orchestration.dask_address=<address>`` then sends each unit (a sweep's run key, a probe, ...) to a
worker. On several machines the same commands run there (``dask worker tcp://scheduler-host:8786``); what
the workers must share with the machine that starts the flow:

- this package installed, and the project directory (data, ``models/``, ``results/``) on the same path: units
  read the prepared data and write checkpoints there, and a unit rescheduled onto another worker resumes from
  the checkpoint the first one wrote;
- ``PREFECT_API_URL`` of a real Prefect server (an ephemeral API lives inside one process);
- ``MLFLOW_TRACKING_URI`` of a tracking server (``sgdlab tracking-server``): a sqlite file works only on one
  machine.

Each worker has one thread (training uses the cores itself) and a nanny: a worker process that dies (killed,
out of memory) is restarted, and the scheduler gives its unfinished unit to a live worker. With
``gpus=N`` each of N workers sees one GPU (``CUDA_VISIBLE_DEVICES``) and offers the resource ``GPU=1``; units
of a study with ``study.device: cuda`` ask for it (``flows.phases``), so one GPU run goes to each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sgdlab.trackserver import ServerError, Service, _stop, free_port


def _dask_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


@dataclass
class DaskCluster(Service):
    """``n_workers`` worker processes on a scheduler at ``host:port`` (``port=0``: a free one)."""

    n_workers: int = 2
    host: str = "127.0.0.1"
    port: int = 0
    gpus: int = 0
    env: dict = field(default_factory=dict)  # extra environment of the workers (PREFECT_API_URL, ...)
    log_dir: Path | None = None
    scheduler: subprocess.Popen | None = field(default=None, init=False, repr=False)
    workers: list[subprocess.Popen] = field(default_factory=list, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def _log(self, name: str):
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")

    def _popen(self, cmd: list[str], name: str, env: dict) -> subprocess.Popen:
        log = self._log(name)
        try:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def start(self, timeout: float = 120.0) -> str:
        """Start the scheduler and the workers; return the scheduler address once all workers joined."""
        if self.gpus and self.gpus != self.n_workers:
            raise ValueError(f"gpus={self.gpus} needs one worker per GPU, got n_workers={self.n_workers}")
        if not self.port:
            self.port = free_port(self.host)
        env = {**os.environ, **self.env, "DASK_DISTRIBUTED__WORKER__DAEMON": "false"}
        self.scheduler = self._popen(
            _dask_cli("scheduler", "--host", self.host, "--port", str(self.port), "--no-dashboard"), "scheduler", env
        )
        for i in range(self.n_workers):
            self.start_worker(i, env)
        self.wait_for_workers(self.n_workers, timeout)
        return self.address

    def start_worker(self, i: int, env: dict | None = None) -> subprocess.Popen:
        env = dict(env or {**os.environ, **self.env})
        cmd = _dask_cli(
            "worker",
            self.address,
            "--name",
            f"w{i}",
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--host",
            self.host,
            "--no-dashboard",
            "--death-timeout",
            "60",
        )
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
            cmd += ["--resources", "GPU=1"]
        proc = self._popen(cmd, f"worker-{i}", env)
        self.workers.append(proc)
        return proc

    def client(self, timeout: float = 30.0):
        from distributed import Client

        return Client(self.address, timeout=timeout)

    def wait_for_workers(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.scheduler.poll() is not None:
                raise ServerError(f"dask scheduler exited with code {self.scheduler.returncode}")
            try:
                with self.client(timeout=min(10.0, max(1.0, deadline - time.monotonic()))) as c:
                    c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{n} dask workers did not join {self.address} in {timeout:.0f} s: {exc}"
                    ) from None
                time.sleep(0.5)

    def worker_pids(self) -> dict[str, int]:
        """``{worker name: pid of its worker process}`` (the nanny's child, not the nanny)."""
        with self.client() as c:
            info = c.scheduler_info(n_workers=-1)["workers"]
            pids = c.run(os.getpid)
        names = {addr: w.get("name") for addr, w in info.items()}
        return {str(names.get(addr, addr)): pid for addr, pid in pids.items()}

    def stop(self) -> None:
        for w in self.workers:
            _stop(w, signal.SIGTERM, 20)
        _stop(self.scheduler, signal.SIGTERM, 20)
