"""An ownership lock per run key, so two processes never train the same key at once.

A lock is a file created with ``O_EXCL`` holding its owner's host and pid; while held, a heartbeat thread
touches it every ``heartbeat_s``. Another process finding it waits, and takes it over when it is *stale*:
its owner is on this host and no longer alive, or (any host, e.g. Dask workers sharing a disk) its heartbeat
is older than ``stale_s``. Taking over renames the stale file away first, which only one contender can do, so
two waiters never both win. ``fcntl.flock`` would be released by the kernel on death, but it is not reliable
on network filesystems, where the cluster's workers share the study; the file + heartbeat works there too.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir / ".lock"): ...`` holds the key; see the module docstring.

    ``on_wait(owner)`` is called once when the lock is busy (owner: the holder's ``{"host", "pid"}``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        heartbeat_s: float = 5.0,
        stale_s: float = 60.0,
        poll_s: float = 0.5,
        on_wait=None,
    ) -> None:
        self.path = Path(path)
        self.heartbeat_s, self.stale_s, self.poll_s, self.on_wait = heartbeat_s, stale_s, poll_s, on_wait
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ---- state of the file -----------------------------------------------------------------
    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # being written, or damaged: judged by its age

    def stale(self, owner: dict | None) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: just try again
        if owner and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _alive(owner["pid"])
        return age > self.stale_s

    # ---- acquire / release -----------------------------------------------------------------
    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token})
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(body)
        return True

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting while a live owner holds it); ``blocking=False``: return False instead of
        waiting. A stale owner's lock is taken over either way."""
        told = False
        while not self.try_acquire():
            owner = self.owner()
            if self.stale(owner):
                try:  # only one contender can move the stale file away
                    os.rename(self.path, self.path.with_name(f"{self.path.name}.stale-{self.token}"))
                    os.unlink(self.path.with_name(f"{self.path.name}.stale-{self.token}"))
                except FileNotFoundError:
                    pass
                continue
            if not blocking:
                return False
            if not told and self.on_wait is not None:
                self.on_wait(owner or {})
                told = True
            time.sleep(self.poll_s)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.path.parent.name}", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        owner = self.owner()
        if owner and owner.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
