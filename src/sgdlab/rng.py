"""The process-wide global RNG, shared by every thread of a sweep: one lock for seeding and restoring it.

``torch.random.fork_rng`` saves the global generator, lets the body seed and use it, and restores it on exit.
Sweep runs train in threads (``orchestration.task_runner: thread``), and the global generator is one object
per process. So a thread that seeds or restores it while another thread initialises a model inside its own
fork changes that model's initial weights. This was measured: the same run key ended with train loss 0.363
in one run and 0.492 in another with two worker threads. Every write (fork entry with its seed, fork exit,
``set_rng_state``) and every seeded model initialisation therefore happens under ``LOCK``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

LOCK = threading.RLock()


@contextmanager
def forked(devices: list[int], seed: int | None = None) -> Iterator[None]:
    """``torch.random.fork_rng(devices)`` (seeded with ``seed`` when given) whose entry and exit hold ``LOCK``."""
    ctx = torch.random.fork_rng(devices=devices)
    with LOCK:
        ctx.__enter__()
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            for i in devices:
                torch.cuda.default_generators[i].manual_seed(seed)
    try:
        yield
    finally:
        with LOCK:
            ctx.__exit__(None, None, None)
