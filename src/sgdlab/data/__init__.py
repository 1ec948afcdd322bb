"""Datasets: offline sources -> Parquet (with provenance) -> tensors on a device.

- :mod:`sgdlab.data.sources`: Fashion-MNIST IDX files, MNIST-1D generator, synthetic theory tasks.
- :mod:`sgdlab.data.prepare`: ``prepare_dataset(name, cfg)`` writes ``processed/<name>/{train,test}.parquet``.
- :mod:`sgdlab.data.loader`: ``load_splits(name, root, device, ...)`` -> :class:`TensorSplits`.
"""

from sgdlab.data.loader import TensorSplits, load_splits, resolve_device
from sgdlab.data.parquet import DataFileError, RawDataset, read_meta, read_split
from sgdlab.data.prepare import PreparedDataset, prepare_dataset, processed_dir
from sgdlab.data.sources import SourceError

__all__ = [
    "DataFileError", "PreparedDataset", "RawDataset", "SourceError", "TensorSplits",
    "load_splits", "prepare_dataset", "processed_dir", "read_meta", "read_split", "resolve_device",
]
