"""Child processes of tests that never outlive them.

``spawn`` starts a process in its own session (so it and whatever it starts, e.g. an ephemeral Prefect API
server, form one process group) and records it; the autouse fixture in conftest calls ``reap`` after every
test, which SIGTERMs, then SIGKILLs each recorded group still alive. A test that fails or times out half-way therefore
leaves no server or worker running on a shared machine.
"""

from __future__ import annotations

import os
import signal
import subprocess

_spawned: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    kwargs.setdefault("start_new_session", True)
    proc = subprocess.Popen(cmd, **kwargs)
    _spawned.append(proc)
    return proc


def reap(grace: float = 15.0) -> list[int]:
    """Stop every process group spawned since the last call; return the pids that were still alive.

    A live leader first gets SIGTERM and up to ``grace`` seconds (together) to exit: ``sgdlab tracking-server``
    or ``sgdlab cluster`` then stop the servers they started in sessions of their own, which a SIGKILL of the
    group would orphan. Then the group is SIGKILLed."""
    import time

    alive = [p for p in _spawned if p.poll() is None]
    for proc in alive:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    alive = [p.pid for p in alive]
    while _spawned:
        proc = _spawned.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group may outlive its leader (servers it started)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
    return alive
