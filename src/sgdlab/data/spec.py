"""The identity of the data one run sees (no torch: the config and sweep layers use it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """Exactly the data one run sees; part of every run key (``sgdlab.sweep.run_key``).

    dataset: the prepared dataset's name; data_hash: content hash of its prepared train+test arrays
    (:func:`sgdlab.data.parquet.content_hash`, verified against the file on every load); val_fraction,
    split_seed: the seeded split of the Parquet train split into training and validation parts;
    probe_size: the fixed seeded Hessian-probe subset; train_fraction: the run trains on a seeded subset
    of this fraction of the training part (1.0: all of it); label_noise: the run trains on a copy of the
    training labels in which this seeded fraction is replaced by another class, drawn uniformly
    (:func:`sgdlab.data.noisy_labels`; 0.0: the labels as prepared; left out of the run key when 0.0, so
    the keys of clean runs are what they were before the field existed).
    """

    dataset: str
    data_hash: str
    val_fraction: float
    split_seed: int
    probe_size: int
    train_fraction: float = 1.0
    label_noise: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
