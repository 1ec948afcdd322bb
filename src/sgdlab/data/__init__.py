"""Datasets: offline sources -> Parquet (with provenance) -> tensors on a device.

- :mod:`sgdlab.data.sources`: Fashion-MNIST IDX files, MNIST-1D generator, synthetic theory tasks.
- :mod:`sgdlab.data.prepare`: ``prepare_dataset(name, cfg)`` writes ``processed/<name>/{train,test}.parquet``.
- :mod:`sgdlab.data.loader`: ``load_splits(name, root, device, ...)`` / ``load_spec(DataSpec, root, device)``
  -> :class:`TensorSplits`, the content hash verified.
"""

from sgdlab.data.loader import (
    TensorSplits,
    load_spec,
    load_splits,
    noisy_labels,
    probe_indices,
    resolve_device,
    run_indices,
    run_labels,
    run_probe_data,
    train_subset_indices,
)
from sgdlab.data.parquet import DataFileError, RawDataset, read_meta, read_split
from sgdlab.data.prepare import PreparedDataset, prepare_dataset, processed_dir
from sgdlab.data.sources import SourceError
from sgdlab.data.spec import DataSpec

__all__ = [
    "DataFileError",
    "DataSpec",
    "PreparedDataset",
    "RawDataset",
    "SourceError",
    "TensorSplits",
    "load_spec",
    "load_splits",
    "prepare_dataset",
    "probe_indices",
    "processed_dir",
    "read_meta",
    "read_split",
    "resolve_device",
    "noisy_labels",
    "run_indices",
    "run_labels",
    "run_probe_data",
    "train_subset_indices",
]
