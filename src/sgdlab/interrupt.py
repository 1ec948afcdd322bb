"""Ctrl-C and SIGTERM: stop training within a step, with a checkpoint, one line, and a normal exit.

Python's default SIGTERM kills the process without running cleanup, orphaning the ephemeral Prefect API server
it started; Python's default SIGINT raises KeyboardInterrupt in the main thread only, which waits on Prefect
while the training threads go on for a minute. :func:`install` (called by the CLI) replaces both. The first
signal sets a process-wide flag, and every training loop checks it after each update: it flushes its metrics,
writes its checkpoint and raises :class:`Interrupted`. A run not yet started does not start. The CLI then
prints one line and exits with 130, running the normal cleanup (the Prefect server stops with it). A second
signal stops at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_STOP = threading.Event()
_SIGNAL: list[str] = []
_INSTALLED: list[bool] = []  # install() was called in this process (by the CLI)


class Interrupted(Exception):
    """Training stopped on request (SIGINT/SIGTERM) after writing its checkpoint; re-running resumes it."""


def requested() -> bool:
    """Whether a stop was requested (by a signal or :func:`request`)."""
    return _STOP.is_set()


def signal_name() -> str:
    return _SIGNAL[0] if _SIGNAL else "stop request"


def request(name: str = "stop request") -> None:
    """Ask every training loop of this process to stop after its current update. Prefect's own error logs
    (a traceback per stopped task and flow) are silenced from here on: the CLI says what happened in one line."""
    import logging

    if not _STOP.is_set():
        _SIGNAL.append(name)
    _STOP.set()
    logging.getLogger("prefect").setLevel(logging.CRITICAL)


def clear() -> None:
    _STOP.clear()
    _SIGNAL.clear()


def check(where: str) -> None:
    """Raise :class:`Interrupted` if a stop was requested (``where`` names what is being skipped)."""
    if _STOP.is_set():
        raise Interrupted(f"{signal_name()}: {where}")


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    name = signal.Signals(signum).name
    if _STOP.is_set():  # the second one: no more waiting
        sys.stderr.write(f"sgdlab: {name} again: stopping now\n")
        sys.stderr.flush()
        os._exit(130)
    request(name)
    sys.stderr.write(f"sgdlab: {name}: stopping after the current step (checkpoints are written); again to force\n")
    sys.stderr.flush()


def _raise_keyboard(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install(keyboard: bool = False) -> None:
    """Handle SIGINT and SIGTERM as above (main thread only; a no-op elsewhere). ``keyboard=True``: both raise
    KeyboardInterrupt in the main thread instead (for commands that only wait on child processes, so their
    ``finally`` stops them: ``sgdlab serve``)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_keyboard if keyboard else _handler)
    _INSTALLED[:] = [True]


def reclaim() -> None:
    """Inside a Prefect flow body: take SIGTERM back from Prefect's engine, which installs its own handler for
    the flow's duration (it raises in the main thread and leaves the training threads running). Only where
    :func:`install` was called; the engine restores ours when the flow ends."""
    if _INSTALLED and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
