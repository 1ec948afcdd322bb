"""Save/load GAN results (``torch.save``; read back with ``weights_only=True``) and hash
generators.

A checkpoint is a dict of primitives and tensors: format tag, the resolved config, class count,
sample shape, data range, steps, wall time, history and the three state dicts. The nets are
rebuilt from the stored config, so a checkpoint is self-describing (config saved inside the
checkpoint, as nanoGPT does).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sgdlab.gan.config import GANConfig
from sgdlab.gan.result import GANResult, build_nets
from sgdlab.integrity import CorruptFileError, load_verified, save_verified

__all__ = [
    "CorruptGANCheckpoint",
    "GANCheckpointError",
    "generator_hash",
    "load_gan",
    "load_snapshot",
    "save_gan",
    "save_snapshot",
]

FORMAT = "sgdlab.gan/2"
LEGACY_FORMAT = "sgdlab.gan/1"  # before checksums: same keys, loaded unverified
_KEYS = (
    "format",
    "config",
    "num_classes",
    "sample_shape",
    "data_range",
    "steps",
    "wall_time_s",
    "history",
    "generator",
    "generator_raw",
    "discriminator",
)


class GANCheckpointError(ValueError):
    """A GAN checkpoint is corrupt, of another format, or does not match what was asked for."""


class CorruptGANCheckpoint(GANCheckpointError, CorruptFileError):
    """The file itself is damaged (truncated, unreadable, checksum mismatch): retrain, do not reuse."""


def save_gan(result: GANResult, path: str | Path) -> Path:
    """Write ``result`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": result.config.to_dict(),
        "num_classes": int(result.num_classes),
        "sample_shape": list(result.sample_shape),
        "data_range": [float(v) for v in result.data_range],
        "steps": int(result.steps),
        "wall_time_s": float(result.wall_time_s),
        "history": {k: [float(v) for v in vs] for k, vs in result.history.items()},
        "generator": _cpu_state(result.generator),
        "generator_raw": _cpu_state(result.generator_raw),
        "discriminator": _cpu_state(result.discriminator),
    }
    save_verified(path, payload)  # atomic, with its SHA-256 (sgdlab.integrity)
    return path


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_gan(
    path: str | Path,
    *,
    num_classes: int | None = None,
    sample_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "cpu",
) -> GANResult:
    """Read a checkpoint written by ``save_gan``/``train_gan``.

    Args:
        num_classes, sample_shape: if given, must equal the stored values (else
            ``GANCheckpointError`` naming the file and both values).
        device: where the nets are placed.

    Raises:
        FileNotFoundError: no file at ``path``.
        GANCheckpointError: unreadable/corrupt file, wrong format, missing keys, mismatched
            class count or shape, or state dicts that do not fit the stored config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GAN checkpoint {path} does not exist")
    try:
        ck = load_verified(path, legacy_format=LEGACY_FORMAT)
    except CorruptFileError as e:
        raise CorruptGANCheckpoint(path, f"GAN checkpoint is corrupt: {str(e).split(': ', 1)[-1]}") from None
    if not isinstance(ck, dict) or ck.get("format") not in (FORMAT, LEGACY_FORMAT):
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise GANCheckpointError(f"GAN checkpoint {path}: format {got!r}, expected {FORMAT!r}")
    missing = [k for k in _KEYS if k not in ck]
    if missing:
        raise GANCheckpointError(f"GAN checkpoint {path}: missing key(s) {missing}")
    stored_k, stored_shape = int(ck["num_classes"]), tuple(int(s) for s in ck["sample_shape"])
    if num_classes is not None and num_classes != stored_k:
        raise GANCheckpointError(
            f"GAN checkpoint {path} was trained with num_classes={stored_k}, "
            f"but num_classes={num_classes} was requested"
        )
    if sample_shape is not None and tuple(sample_shape) != stored_shape:
        raise GANCheckpointError(
            f"GAN checkpoint {path} has sample_shape={stored_shape}, "
            f"but sample_shape={tuple(sample_shape)} was requested"
        )
    try:
        cfg = GANConfig.from_dict(ck["config"])
    except (TypeError, ValueError) as e:
        raise GANCheckpointError(f"GAN checkpoint {path}: bad config: {e}") from e
    data_range = (float(ck["data_range"][0]), float(ck["data_range"][1]))
    g, d = build_nets(cfg, stored_shape, stored_k, data_range, "cpu")
    g_raw = build_nets(cfg, stored_shape, stored_k, data_range, "cpu")[0]
    for name, module in (("generator", g), ("generator_raw", g_raw), ("discriminator", d)):
        try:
            module.load_state_dict(ck[name])
        except (RuntimeError, KeyError, TypeError) as e:
            raise GANCheckpointError(
                f"GAN checkpoint {path}: '{name}' does not fit the stored config "
                f"(num_classes={stored_k}, sample_shape={stored_shape}): {e}"
            ) from e
    for m in (g, g_raw, d):
        m.to(device).eval().requires_grad_(True)
    g.requires_grad_(False)
    return GANResult(
        generator=g,
        generator_raw=g_raw,
        discriminator=d,
        config=cfg,
        num_classes=stored_k,
        sample_shape=stored_shape,
        data_range=data_range,
        steps=int(ck["steps"]),
        wall_time_s=float(ck["wall_time_s"]),
        history={k: list(v) for k, v in ck["history"].items()},
        checkpoint_path=path,
    )


def generator_hash(generator: torch.nn.Module) -> str:
    """sha256 hex digest of a module's state dict: names, dtypes, shapes and raw bytes, in
    sorted key order (device-independent)."""
    h = hashlib.sha256()
    for name, t in sorted(generator.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


SNAPSHOT_FORMAT = "sgdlab.gan-snapshot/1"


def save_snapshot(
    generator: torch.nn.Module,
    path: str | Path,
    *,
    config: GANConfig,
    num_classes: int,
    sample_shape: tuple[int, ...],
    data_range: tuple[float, float],
    step: int,
    train_seconds: float,
) -> Path:
    """One generator along training (the EMA generator with recomputed BatchNorm statistics at ``step``,
    after ``train_seconds`` of training): what the FD-vs-time and tau-vs-time curves sample from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": SNAPSHOT_FORMAT,
        "config": config.to_dict(),
        "num_classes": int(num_classes),
        "sample_shape": [int(s) for s in sample_shape],
        "data_range": [float(v) for v in data_range],
        "step": int(step),
        "train_seconds": float(train_seconds),
        "generator": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }
    save_verified(path, payload)
    return path


def load_snapshot(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """``(generator in eval mode, {"step", "train_seconds"})`` from a file of :func:`save_snapshot`."""
    path = Path(path)
    try:
        ck = load_verified(path, legacy_format=None)
    except CorruptFileError as e:
        raise CorruptGANCheckpoint(path, f"GAN snapshot is corrupt: {str(e).split(': ', 1)[-1]}") from None
    if not isinstance(ck, dict) or ck.get("format") != SNAPSHOT_FORMAT:
        raise GANCheckpointError(f"GAN snapshot {path}: not a {SNAPSHOT_FORMAT!r} file")
    cfg = GANConfig.from_dict(ck["config"])
    shape, k = tuple(int(s) for s in ck["sample_shape"]), int(ck["num_classes"])
    g = build_nets(cfg, shape, k, (float(ck["data_range"][0]), float(ck["data_range"][1])), "cpu")[0]
    try:
        g.load_state_dict(ck["generator"])
    except (RuntimeError, KeyError) as e:
        raise GANCheckpointError(f"GAN snapshot {path}: the generator does not fit its config: {e}") from e
    return g.to(device).eval().requires_grad_(False), {
        "step": int(ck["step"]),
        "train_seconds": float(ck["train_seconds"]),
    }
