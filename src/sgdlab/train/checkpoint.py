"""Atomic, ``weights_only``-loadable training checkpoints and their compatibility check.

A checkpoint holds everything a bit-exact resume needs: model and optimizer state, the step, the
batch sampler (generator state as a uint8 tensor, current permutation, position), the global CPU
RNG state (and the CUDA one when training on CUDA), the not-yet-logged per-step training losses,
the initial loss (divergence reference) and the loop config (nanoGPT habit: config inside the
checkpoint). Only tensors, numbers, strings, bools, None, lists, tuples and dicts are stored, so
``torch.load(path, weights_only=True)`` reads it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "sgdlab.train.checkpoint/1"

# Config keys that may change between the run that wrote a checkpoint and the one resuming from
# it: they change cadence, length or placement, not the trajectory of the first ``step`` updates.
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_every", "eval_every", "eval_batch_size", "checkpoint_every", "device", "compile", "final_eval"}
)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; checks the format tag."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not an sgdlab training checkpoint (format {got!r}, expected {FORMAT!r})")
    return ckpt


def check_compatible(
    ckpt: dict[str, Any],
    config: dict[str, Any],
    optimizer_name: str,
    hparams: dict[str, Any],
    path: str | os.PathLike,
) -> None:
    """Raise ValueError naming every key where the checkpoint's run differs from this one."""
    diffs = []
    if ckpt["optimizer_name"] != optimizer_name:
        diffs.append(f"optimizer: checkpoint {ckpt['optimizer_name']!r}, now {optimizer_name!r}")
    old_h = ckpt["hparams"]
    for k in sorted(set(old_h) | set(hparams)):
        a, b = old_h.get(k), hparams.get(k)
        if (tuple(a) if isinstance(a, list) else a) != (tuple(b) if isinstance(b, list) else b):
            diffs.append(f"hparams.{k}: checkpoint {a!r}, now {b!r}")
    old_c = ckpt["config"]
    for k in sorted(set(old_c) | set(config)):
        if k not in RESUMABLE_CHANGES and old_c.get(k) != config.get(k):
            diffs.append(f"{k}: checkpoint {old_c.get(k)!r}, now {config.get(k)!r}")
    if diffs:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by a different run; differences: "
            + "; ".join(diffs)
            + ". Use another checkpoint path or resume=False."
        )
