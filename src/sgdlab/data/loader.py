"""Processed Parquet -> tensors on a device, normalised, with fixed seeded validation and probe subsets.

The whole dataset lives on the device (airbench habit); training batches are made by indexing.
Splits: the Parquet ``train`` split is divided once, with ``split_seed``, into a training part and a
held-out validation part (``val_fraction``); ``probe_idx`` is a fixed seeded subset of the training part
used by the Hessian probes. Images are scaled to [0, 1] then standardised with the training part's
mean/std; float features are used as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sgdlab.data.parquet import DataFileError, content_hash, read_split
from sgdlab.data.spec import DataSpec
from sgdlab.device import generator as seeded_generator
from sgdlab.device import resolve_device

__all__ = [
    "DataSpec",
    "TensorSplits",
    "load_splits",
    "load_spec",
    "noisy_labels",
    "run_labels",
    "probe_indices",
    "resolve_device",
    "run_indices",
    "run_probe_data",
    "train_subset_indices",
]


@dataclass(frozen=True)
class TensorSplits:
    """A dataset on a device. x tensors are float32 ``(N, *input_shape)``; y int64 (classes) or float32."""

    name: str
    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    probe_idx: torch.Tensor  # (P,) indices into x_train
    data_hash: str
    meta: dict

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.num_classes is not None else 1


def load_splits(
    name: str,
    root: Path | str = "data",
    device: str | torch.device = "cpu",
    val_fraction: float = 0.1,
    probe_size: int = 1000,
    split_seed: int = 0,
    expect_hash: str | None = None,
) -> TensorSplits:
    """Load ``<root>/processed/<name>`` onto ``device`` (see module docstring).

    The content hash of the arrays read is recomputed and must equal the files' recorded ``data_hash``
    and, when given, ``expect_hash`` (the data hash in a run key): a run never trains on other data
    than its key says."""
    base = Path(root) / "processed" / name
    if not base.is_dir():
        raise DataFileError(f"{base}: dataset {name!r} is not prepared; run `sgdlab prepare` first")
    x_tr, y_tr, meta = read_split(base / "train.parquet")
    x_te, y_te, meta_te = read_split(base / "test.parquet")
    if meta["data_hash"] != meta_te["data_hash"]:
        raise DataFileError(f"{base}: train and test files come from different prepare runs; run `sgdlab prepare`")
    actual = content_hash(x_tr, y_tr, x_te, y_te)
    if actual != meta["data_hash"]:
        raise DataFileError(
            f"{base / 'train.parquet'}: content hash {actual[:12]}... differs from the recorded "
            f"data hash {meta['data_hash'][:12]}... (modified or corrupt); run `sgdlab prepare`"
        )
    if expect_hash is not None and actual != expect_hash:
        raise DataFileError(
            f"{base / 'train.parquet'}: holds data {actual[:12]}..., but the run expects "
            f"{expect_hash[:12]}... (prepared with other settings since); run `sgdlab prepare` "
            "with this study's params"
        )
    dev = resolve_device(device)

    n = len(x_tr)
    n_val = int(round(val_fraction * n))
    if n - n_val < 1:
        raise ValueError(f"data.val_fraction={val_fraction} leaves no training examples out of {n}")
    perm = np.random.default_rng(split_seed).permutation(n)
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    def feats(x: np.ndarray) -> torch.Tensor:
        # copy: Parquet buffers are read-only; the float conversion happens on the device
        return torch.from_numpy(np.array(x, copy=True)).to(dev).to(torch.float32)

    xt, xv, xs = feats(x_tr[tr_idx]), feats(x_tr[val_idx]), feats(x_te)
    norm = {}
    if x_tr.dtype == np.uint8:  # images: [0, 1], then standardise with the training part's statistics
        for t in (xt, xv, xs):  # in place: Fashion-MNIST is 170 MB as float32
            t.mul_(1 / 255.0)
        mean, std = xt.mean().item(), xt.std().item()
        for t in (xt, xv, xs):
            t.sub_(mean).div_(std)
        norm = {"mean": mean, "std": std, "scale": 1 / 255}
    ydtype = torch.int64 if meta["task"] == "classification" else torch.float32

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(y, copy=True)).to(dev, ydtype)

    # The probe subset is capped at the training part's size (small theory tasks have fewer examples
    # than the default probe size); the size actually used is in meta["probe_size"].
    n_tr = len(tr_idx)
    if probe_size < 1:
        raise ValueError(f"data.probe_size={probe_size} must be >= 1")
    g = seeded_generator(split_seed)
    probe = torch.randperm(n_tr, generator=g)[: min(probe_size, n_tr)].sort().values.to(dev)
    return TensorSplits(
        name=name,
        task=meta["task"],
        num_classes=meta["num_classes"],
        input_shape=tuple(meta["shape"]),
        x_train=xt,
        y_train=labels(y_tr[tr_idx]),
        x_val=xv,
        y_val=labels(y_tr[val_idx]),
        x_test=xs,
        y_test=labels(y_te),
        probe_idx=probe,
        data_hash=meta["data_hash"],
        meta={
            **meta,
            "normalization": norm,
            "n_val": n_val,
            "probe_size": len(probe),
            "split_seed": split_seed,
            "probe_size_requested": probe_size,
        },
    )


def load_spec(spec: DataSpec, root: Path | str, device: str | torch.device = "cpu") -> TensorSplits:
    """:func:`load_splits` for a :class:`DataSpec`, verifying the content hash against ``spec.data_hash``."""
    return load_splits(
        spec.dataset, root, device, spec.val_fraction, spec.probe_size, spec.split_seed, expect_hash=spec.data_hash
    )


def run_indices(splits: TensorSplits, fraction: float, seed: int) -> torch.Tensor | None:
    """Indices (into ``splits.x_train``, on its device) of the training examples a run sees; None: all."""
    idx = train_subset_indices(len(splits.x_train), fraction, seed)
    return None if idx is None else idx.to(splits.x_train.device)


def probe_indices(splits: TensorSplits, train_idx: torch.Tensor | None) -> torch.Tensor:
    """The run's fixed Hessian-probe subset: the first ``probe_size`` of a ``split_seed``-seeded permutation
    of *the run's own* training examples (``train_idx``; None = the whole training part, which gives
    ``splits.probe_idx``). Indices into ``splits.x_train``, sorted."""
    if train_idx is None:
        return splits.probe_idx
    g = seeded_generator(int(splits.meta.get("split_seed", 0)))
    size = min(int(splits.meta.get("probe_size_requested", len(splits.probe_idx))), len(train_idx))
    pick = torch.randperm(len(train_idx), generator=g)[:size].sort().values.to(train_idx.device)
    return train_idx[pick]


def run_probe_data(
    splits: TensorSplits, fraction: float, seed: int, size: int, label_noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the first ``size`` examples of the probe subset of a run with this train fraction, seed
    and label noise: a fixed seeded subset of the run's *own* training examples, with the labels it trained
    on, never of data it did not train on."""
    idx = probe_indices(splits, run_indices(splits, fraction, seed))[:size]
    return splits.x_train[idx], run_labels(splits, label_noise)[idx]


def noisy_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """A copy of the class labels ``y`` (N,) in which a seeded ``fraction`` of the entries (each one
    independently, with that probability) is replaced by a different class drawn uniformly from the other
    ``num_classes - 1`` (the symmetric label noise of Zhang et al. 2017, "Understanding deep learning
    requires rethinking generalization", at corruption level ``fraction * K / (K - 1)``). ``y`` is not
    modified; the draw depends only on ``seed`` and ``len(y)`` (CPU generator), not on the device."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label noise fraction={fraction!r}: must be in [0, 1)")
    if y.dtype.is_floating_point:
        raise ValueError("label noise needs class labels (a classification dataset), got float targets")
    if fraction == 0.0:
        return y
    if num_classes < 2:
        raise ValueError(f"label noise needs >= 2 classes, got num_classes={num_classes}")
    g = seeded_generator(seed)
    flip = torch.rand(len(y), generator=g) < fraction  # (N,) CPU
    shift = torch.randint(1, num_classes, (len(y),), generator=g)  # (N,) in [1, K): never the same class
    out = y.cpu().clone()
    out[flip] = (out[flip] + shift[flip]) % num_classes
    return out.to(y.device)


def run_labels(splits: TensorSplits, label_noise: float) -> torch.Tensor:
    """The training labels (aligned with ``splits.x_train``) a run with this label noise trains on: the
    prepared labels, or their noisy copy seeded by ``split_seed`` (one corrupted training set per noise level,
    shared by every run at that level, as in a corrupted-labels dataset)."""
    if not label_noise:
        return splits.y_train
    if splits.task != "classification":
        raise ValueError(
            f"sweep.label_noise={label_noise:g}: dataset {splits.name!r} is a {splits.task} task (label noise needs classes)"
        )
    seed = 20_000 + int(splits.meta.get("split_seed", 0))
    return noisy_labels(splits.y_train, label_noise, splits.num_outputs, seed)


def train_subset_indices(n_train: int, fraction: float, seed: int) -> torch.Tensor | None:
    """Indices (sorted, CPU) of the seeded ``fraction`` subset of a training part of ``n_train`` examples
    that a run with ``seed`` trains on; None for ``fraction >= 1`` (all of it)."""
    if fraction >= 1.0:
        return None
    n = max(1, int(n_train * fraction))
    idx = torch.randperm(n_train, generator=seeded_generator(10_000 + seed))[:n]
    return idx.sort().values
