"""Child processes of tests that never outlive them.

``spawn`` starts a process in its own session (so it and whatever it starts, e.g. an ephemeral Prefect API
server, form one process group) and records it; the autouse fixture in conftest calls ``reap`` after every
test, which SIGKILLs each recorded group still alive. A test that fails or times out half-way therefore
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


def reap() -> list[int]:
    """Kill every process group spawned since the last call; return the pids that were still alive."""
    alive = []
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            alive.append(proc.pid)
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
