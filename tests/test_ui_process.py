"""``sgdlab ui`` stops everything it started, and experiments open on their training runs.

- The real thing: ``sgdlab ui`` (MLflow UI: launcher, uvicorn, job runner, huey consumers) is gone, every
  recorded descendant included, within 5 s of SIGTERM or SIGINT (~30 s each: the UI takes ~25 s to come
  up on the 2-core box; ``MLFLOW_WORKERS=1`` keeps uvicorn to one worker).
- A synthetic tree (seconds): an orphaned grandchild in its own session that ignores SIGTERM is still
  found (subreaper) and SIGKILLed after the 3 s grace.
- ``tracking.ensure_experiment`` tags the experiment kind; ``runs_url``/``run_url`` have the UI's form.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from sgdlab import tracking
from sgdlab.ui import descendants, process_table

SGDLAB = Path(sys.executable).with_name("sgdlab")
LINUX_PROC = process_table() is not None
needs_proc = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc")
STOP_WITHIN_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Recorder:
    """Every descendant of ``root`` ever seen, by (pid, start time), with its command line."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.start: dict[int, int] = {}
        self.cmd: dict[int, str] = {}

    def scan(self) -> None:
        table = process_table()
        for p in descendants(self.root, table):
            if p not in self.start:
                self.start[p] = table[p][4]
                self.cmd[p] = _cmdline(p)

    def alive(self) -> list[int]:
        table = process_table()
        return [p for p, st in self.start.items() if p in table and table[p][4] == st and table[p][0] not in ("Z", "X")]

    def kill_leftovers(self) -> None:
        for p in self.alive():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def _stop_and_check(proc: subprocess.Popen, rec: Recorder, sig: int, log: Path) -> float:
    """Send ``sig``; assert ``proc`` and all recorded descendants are gone within 5 s; return the time."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    while time.monotonic() - t0 < STOP_WITHIN_S:  # keep recording what appears during shutdown
        rec.scan()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is not None, f"sgdlab still running {STOP_WITHIN_S} s after {sig!r}"
    while rec.alive() and time.monotonic() - t0 < STOP_WITHIN_S:
        time.sleep(0.05)
    took = time.monotonic() - t0
    left = {p: rec.cmd[p][:120] for p in rec.alive()}
    assert not left, f"alive {took:.1f} s after {sig!r}: {left}\n{log.read_text()[-3000:]}"
    assert proc.returncode == 0, log.read_text()[-3000:]
    return took


@needs_proc
@pytest.mark.skipif(not SGDLAB.exists(), reason="the sgdlab console script is not installed")
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)  # ~30 s each: one in the default suite
def test_sgdlab_ui_stops_every_process_it_started(sig, tmp_path, mlflow_store):
    port = _free_port()
    env = {**os.environ, "SGDLAB_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow_store, "MLFLOW_WORKERS": "1"}
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(SGDLAB), "ui", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    rec = Recorder(proc.pid)
    try:
        deadline = time.monotonic() + 150  # a limit for a loaded machine; ~25 s usually
        up = False
        while not (up and any("huey_consumer" in c for c in rec.cmd.values())):
            assert proc.poll() is None, f"sgdlab ui exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"UI up={up}, processes={sorted(rec.cmd.values())}\n{log.read_text()[-3000:]}"
            )
            rec.scan()
            if not up:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        up = r.status == 200
                except OSError:
                    pass
            time.sleep(0.3)
        rec.scan()
        assert f"http://127.0.0.1:{port}/" in log.read_text()  # it printed the URL
        took = _stop_and_check(proc, rec, sig, log)
        print(f"{len(rec.start)} descendants gone {took:.2f} s after {signal.Signals(sig).name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rec.kill_leftovers()


# A stand-in for ``mlflow ui``: the launcher starts a "job runner" that starts a "consumer" in its own
# session which ignores SIGTERM, then the runner exits at once (the consumer is orphaned before anyone
# could record it as a descendant of the launcher).
_FAKE_UI = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    role, pidfile = sys.argv[1], sys.argv[2]
    if role == "launcher":
        subprocess.Popen([sys.executable, __file__, "runner", pidfile])
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while True:
            time.sleep(1)
    elif role == "runner":
        subprocess.Popen([sys.executable, __file__, "consumer", pidfile], start_new_session=True)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        while True:
            time.sleep(1)
""")


@needs_proc
@pytest.mark.timeout(60)
def test_run_ui_kills_an_orphan_that_ignores_sigterm(tmp_path):
    fake, pidfile, log = tmp_path / "fake_ui.py", tmp_path / "consumer.pid", tmp_path / "run_ui.log"
    fake.write_text(_FAKE_UI)
    code = (
        "import sys; from sgdlab import tracking, ui; "
        f"tracking.ui_command = lambda host, port: [sys.executable, {str(fake)!r}, 'launcher', "
        f"{str(pidfile)!r}]; sys.exit(ui.run_ui())"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    rec = Recorder(proc.pid)
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        consumer = int(pidfile.read_text())
        time.sleep(0.3)
        rec.scan()
        # re-parented to run_ui (a child subreaper), not to init
        assert consumer in rec.start, (consumer, process_table().get(consumer), rec.cmd)
        took = _stop_and_check(proc, rec, signal.SIGTERM, log)
        assert took >= 2.5  # the SIGTERM grace came first, then SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rec.kill_leftovers()


def test_ensure_experiment_tags_the_kind(mlflow_store):
    c = tracking.client()
    new = tracking.ensure_experiment("kind-new")
    assert c.get_experiment(new).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    old = c.create_experiment("kind-old")  # as made before the tag existed
    assert tracking.EXPERIMENT_KIND_TAG not in c.get_experiment(old).tags
    assert tracking.ensure_experiment("kind-old") == old
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"

    chosen = c.create_experiment("kind-chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert tracking.ensure_experiment("kind-chosen") == chosen
    assert c.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"  # left alone


def test_ui_urls():
    assert tracking.runs_url("7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert (
        tracking.runs_url("7", "localhost", 5077)
        == "http://localhost:5077/#/experiments/7/runs?workflowType=machine_learning"
    )
    assert (
        tracking.run_url("7", "abc123", port=5001)
        == "http://127.0.0.1:5001/#/experiments/7/runs/abc123?workflowType=machine_learning"
    )
    assert tracking.runs_url("7", "0.0.0.0").startswith("http://127.0.0.1:5000/#/")


def test_ensure_experiment_survives_a_concurrent_creation(mlflow_store, monkeypatch):
    """Two processes (overlapping scheduled runs) creating one experiment: the loser reads the winner's."""
    c = tracking.client()
    real = c.get_experiment_by_name
    calls = {"n": 0}

    def first_miss(name):  # the first lookup misses, as if the other process created it just after
        calls["n"] += 1
        if calls["n"] == 1:
            c.create_experiment(name)
            return None
        return real(name)

    monkeypatch.setattr(c, "get_experiment_by_name", first_miss)
    exp_id = tracking.ensure_experiment("raced")
    assert exp_id == real("raced").experiment_id
