"""Atomic, ``weights_only``-loadable training checkpoints and their compatibility check.

A checkpoint holds everything a bit-exact resume needs: model and optimizer state, the step, the
batch sampler (generator state as a uint8 tensor, current permutation, position), the global CPU
RNG state (and the CUDA one when training on CUDA), the not-yet-logged per-step training losses,
the initial loss (divergence reference) and the loop config (nanoGPT habit: config inside the
checkpoint). Only tensors, numbers, strings, bools, None, lists, tuples and dicts are stored, so
``torch.load(path, weights_only=True)`` reads it back. The file carries the SHA-256 of its content
(:mod:`sgdlab.integrity`): a flipped byte or a truncated file raises
:class:`~sgdlab.integrity.CorruptFileError` naming the file instead of resuming from wrong numbers.
Checkpoints written before checksums (format ``/1``) still load, unverified.
"""

from __future__ import annotations

import os
from typing import Any

from sgdlab.integrity import CorruptFileError, load_verified, save_verified

FORMAT = "sgdlab.train.checkpoint/2"
LEGACY_FORMATS = ("sgdlab.train.checkpoint/1",)  # no checksum; same payload

# Config keys that may change between the run that wrote a checkpoint and the one resuming from
# it: they change cadence, length or placement, not the trajectory of the first ``step`` updates.
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_every", "eval_every", "eval_batch_size", "checkpoint_every", "device", "compile", "final_eval"}
)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically with its checksum (:func:`sgdlab.integrity.save_verified`)."""
    save_verified(path, {"format": FORMAT, **payload})


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint onto the CPU (``weights_only=True``); checks the format tag.

    Raises :class:`~sgdlab.integrity.CorruptFileError` (a ``ValueError``) naming the file when it is truncated,
    unreadable, fails its checksum or is not a training checkpoint."""
    ckpt = load_verified(path, legacy_format=LEGACY_FORMATS[0])
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, *LEGACY_FORMATS):
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CorruptFileError(path, f"not an sgdlab training checkpoint (format {got!r}, expected {FORMAT!r})")
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
