"""Checksummed files: ``torch.save`` payloads that detect corruption on load, and quarantine of bad files.

``torch.load`` reads a zip archive without checking its members, so flipped bytes inside a tensor load as
different numbers: a corrupt checkpoint resumes "fine" and then diverges. :func:`save_verified` therefore
serialises the payload to bytes, stores their SHA-256 next to them in an outer ``torch.save`` (still
``weights_only``-loadable), and writes it atomically (temporary file in the same folder, renamed);
:func:`load_verified` recomputes the hash and raises :class:`CorruptFileError` naming the file on any
mismatch, truncation or unreadable archive. :func:`quarantine` moves a bad file aside (never deletes it) so
the next attempt starts clean and the evidence stays on disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

VERIFIED = "sgdlab.verified/1"


class CorruptFileError(ValueError):
    """A file failed its integrity check or could not be read; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {reason}")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _compact(obj: Any) -> Any:
    """``obj`` with every tensor that views part of a larger storage replaced by a copy of its own elements.

    ``torch.save`` writes a tensor's whole storage: a population member's parameter, a row of the stacked
    weights (:mod:`sgdlab.train.population`), would otherwise carry every member's weights into its file."""
    if isinstance(obj, torch.Tensor) and obj.layout == torch.strided:
        own = obj.numel() * obj.element_size()
        return obj.clone() if obj.untyped_storage().nbytes() > own else obj
    if isinstance(obj, dict):
        return {k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_compact(v) for v in obj)
    return obj


def save_verified(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and primitives only) to ``path`` with its SHA-256, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(_compact(payload), buf)
    blob = buf.getvalue()
    outer = {
        "format": VERIFIED,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "nbytes": len(blob),
        "blob": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
    }
    tmp = _tmp(path)
    try:
        torch.save(outer, tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    finally:
        if tmp.exists():
            tmp.unlink()


def load_verified(path: str | os.PathLike, *, legacy_format: str | None = None) -> dict[str, Any]:
    """Read a file written by :func:`save_verified`, checking its SHA-256, onto the CPU.

    ``legacy_format``: a file written before checksums (a plain ``torch.save`` dict whose ``format`` is this)
    is accepted as it is (there is nothing to verify it against). Anything else unreadable, truncated or
    not matching its hash raises :class:`CorruptFileError`.
    """
    path = Path(path)
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive means a damaged file
        raise CorruptFileError(path, f"unreadable or truncated ({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(outer, dict) and legacy_format is not None and outer.get("format") == legacy_format:
        return outer
    if not isinstance(outer, dict) or outer.get("format") != VERIFIED:
        got = outer.get("format") if isinstance(outer, dict) else type(outer).__name__
        raise CorruptFileError(path, f"not a checksummed sgdlab file (format {got!r}, expected {VERIFIED!r})")
    blob = outer.get("blob")
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or blob.numel() != outer.get("nbytes"):
        raise CorruptFileError(path, "payload missing or of the wrong size")
    data = blob.numpy().tobytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != outer.get("sha256"):
        raise CorruptFileError(path, f"SHA-256 mismatch (stored {outer.get('sha256')}, content {digest}): corrupt")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CorruptFileError(path, f"payload unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def quarantine(path: str | os.PathLike) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<UTC time>`` beside it (kept for inspection); returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, dest)
    return dest
