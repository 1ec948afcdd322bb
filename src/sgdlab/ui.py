"""Serve the MLflow UI over this project's store, and stop all of it.

``mlflow ui`` is a tree of processes: the ``mlflow ui`` launcher, uvicorn and its workers, a job runner
and its huey consumers. On SIGTERM the job runner exits but its huey consumers (re-parented, still
busy) outlived it by more than 10 s, and SIGINT took ~20 s (STACK.md), so neither exec'ing ``mlflow ui``
nor signalling its process group once stops it. :func:`run_ui` therefore

- starts the UI in its own session/process group (``start_new_session=True``: a terminal's Ctrl-C
  reaches only us, we decide how to stop it);
- makes this process a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so descendants whose parent
  died are re-parented to us instead of to init and stay findable;
- records every descendant while the UI runs (a ``/proc/*/stat`` scan: ppid, process group, session,
  start time), so a process is known by (pid, start time) and a recycled pid is never signalled;
- on SIGINT/SIGTERM/SIGHUP (or when the UI exits by itself) sends SIGTERM to the process group and to
  every recorded descendant, waits up to ``term_timeout`` (3 s), SIGKILLs what is left, reaps, returns.

Linux only in full; without ``/proc`` it falls back to signalling the process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)


Table = dict[int, tuple[str, int, int, int, int]]


def process_table() -> Table | None:
    """``pid -> (state, ppid, pgid, sid, start time)`` of every process, from ``/proc/*/stat``;
    ``None`` where there is no ``/proc``. (``/proc/<pid>/task/*/children`` is not available on every
    kernel, this scan is.)"""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    table: Table = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp session ... starttime(22nd field)"; comm may hold spaces and ')'
        fields = raw[raw.rfind(")") + 2 :].split()
        try:
            table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
        except (IndexError, ValueError):
            continue
    return table


def _children_map(table: Table) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for p, row in table.items():
        children.setdefault(row[1], []).append(p)
    return children


def _below(roots: set[int], children: dict[int, list[int]]) -> set[int]:
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def descendants(pid: int, table: Table | None = None) -> set[int]:
    """The pids of all descendants of ``pid`` (children, their children, ...)."""
    table = process_table() if table is None else table
    return _below({pid}, _children_map(table)) if table else set()


def _set_child_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ProcessTree:
    """Everything one started process brought up: its process group and session, and every
    descendant seen so far, each known by (pid, start time).

    ``adopt_except``: set when this process is a child subreaper (orphans of the tree then become our
    children): our children not in this set (the ones we had before starting ``proc``) count as members.
    """

    def __init__(self, proc: subprocess.Popen, adopt_except: set[int] | None = None) -> None:
        self.proc = proc
        self.known: dict[int, int] = {}  # pid -> start time
        self._adopt_except = adopt_except
        self._signalled: dict[int, set[int]] = {}  # signal -> pids sent it
        self._group_signalled: set[int] = set()

    def refresh(self) -> Table | None:
        """Record the tree's current members; returns the process table it scanned."""
        table = process_table()
        if table is None:
            return None
        me, root = os.getpid(), self.proc.pid
        children = _children_map(table)
        members = {p for p, row in table.items() if p == root or row[2] == root or row[3] == root}
        members |= {p for p, start in self.known.items() if p in table and table[p][4] == start}
        if self._adopt_except is not None:
            members |= {p for p in children.get(me, ()) if p not in self._adopt_except}
        members |= _below(members | {root}, children)  # huey consumers may have started own sessions
        members.discard(me)
        for p in members:
            self.known.setdefault(p, table[p][4])
        return table

    def alive(self, table: Table | None = None) -> list[int]:
        """Recorded pids that still run (zombies count as gone)."""
        table = process_table() if table is None else table
        if table is None:
            return [self.proc.pid] if self.proc.poll() is None else []
        return sorted(
            p
            for p, start in self.known.items()
            if p in table and table[p][4] == start and table[p][0] not in ("Z", "X")
        )

    def signal(self, sig: int, table: Table | None = None) -> None:
        """``sig`` once to the process group (while it can still be ours) and once to every live
        recorded pid."""
        table = process_table() if table is None else table
        live = self.alive(table)
        if sig not in self._group_signalled:
            self._group_signalled.add(sig)
            # a process group id cannot be recycled while a member lives (or before we reap the leader)
            if self.proc.returncode is None or any(table and table[p][2] == self.proc.pid for p in live):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, sig)
        done = self._signalled.setdefault(sig, set())
        for p in live:
            if p not in done:
                done.add(p)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, sig)

    def reap(self) -> None:
        """Collect the exit status of our child and of any orphan adopted as a subreaper."""
        self.proc.poll()
        for p in self.known:
            if p != self.proc.pid:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(p, os.WNOHANG)

    def stop(self, term_timeout: float = 3.0, kill_timeout: float = 1.5) -> list[int]:
        """SIGTERM everything, SIGKILL what is left after ``term_timeout``; returns the pids that were
        still alive ``kill_timeout`` later (normally none)."""
        table = self.refresh()
        for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
            deadline = time.monotonic() + timeout
            while True:
                self.signal(sig, table)  # includes ones that appeared meanwhile
                time.sleep(0.05)
                self.reap()
                table = self.refresh()
                if not self.alive(table):
                    return []
                if time.monotonic() >= deadline:
                    break
        return self.alive(table)


def run_ui(host: str = "127.0.0.1", port: int = 5000, *, term_timeout: float = 3.0, poll_s: float = 0.5) -> int:
    """Serve the MLflow UI (:func:`sgdlab.tracking.ui_command`) until SIGINT/SIGTERM/SIGHUP, then stop
    every process it started (see the module doc) and return 0; if the UI exits by itself, clean up
    what it left and return its exit status."""
    from sgdlab import tracking

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in _STOP_SIGNALS:
            previous[s] = signal.signal(s, on_signal)
    subreaper = _set_child_subreaper(True)
    ours_before = descendants(os.getpid()) if subreaper else set()
    tree: ProcessTree | None = None
    try:
        cmd = tracking.ui_command(host, port)
        base = tracking.ui_base_url(host, port)
        print(f"MLflow UI on {base}/  (store: {tracking.tracking_uri()}; Ctrl-C to stop)", flush=True)
        print(f"  an experiment's runs: {tracking.runs_url('<experiment id>', host, port)}", flush=True)
        proc = subprocess.Popen(cmd, start_new_session=True)
        tree = ProcessTree(proc, adopt_except=ours_before if subreaper else None)
        while not stop.is_set() and proc.poll() is None:
            tree.refresh()
            stop.wait(poll_s)
        code = 0 if received else proc.returncode
        left = tree.stop(term_timeout=term_timeout)
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            if left:
                print(f"sgdlab ui: still alive after SIGKILL: {left}", file=sys.stderr, flush=True)
            elif received:
                print(f"MLflow UI stopped ({signal.Signals(received[0]).name}).", flush=True)
        if code is None:
            code = 0
        return code if code >= 0 else 128 - code
    finally:
        if tree is not None and tree.proc.returncode is None:  # an exception on the way: still clean up
            tree.stop(term_timeout=term_timeout)
        if subreaper:
            _set_child_subreaper(False)
        for s, h in previous.items():
            signal.signal(s, h)
