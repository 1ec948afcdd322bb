"""Datasets as Parquet: one row per example, the example as a fixed-size list, metadata in the footer.

Schema: ``x: fixed_size_list<uint8|float32|float64>[prod(shape)]``, ``y: int64|float32|float64``.
File metadata key ``sgdlab`` holds JSON: dataset, split, task, per-example shape, source, source
checksums, generator params, the dataset's content hash and the sgdlab version. Writes go to a temporary
file in the same directory and are renamed into place, so a failure never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"sgdlab"


class DataFileError(ValueError):
    """A missing or corrupt processed data file; the message names the file and how to rebuild it."""


@dataclass(frozen=True)
class RawDataset:
    """A dataset in host memory before it is written: arrays plus provenance."""

    name: str
    task: str  # "classification" | "regression"
    num_classes: int | None
    x_train: np.ndarray  # (N, *shape)
    y_train: np.ndarray  # (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    checksums: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the sparse ground truth w*

    def content_hash(self) -> str:
        """sha256 over both splits' arrays (dtype, shape, bytes): the dataset's identity."""
        return content_hash(self.x_train, self.y_train, self.x_test, self.y_test)


def content_hash(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> str:
    """sha256 over the four arrays (dtype, shape, bytes): the identity of a prepared dataset. The loader
    recomputes it from what it read, so a file whose content differs from its metadata (or from a run
    key's data hash) is caught before training."""
    h = hashlib.sha256()
    for arr in (x_train, y_train, x_test, y_test):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    n = x.shape[0]
    flat = np.ascontiguousarray(x).reshape(n, -1)
    width = flat.shape[1]
    values = pa.array(flat.reshape(-1))
    xcol = pa.FixedSizeListArray.from_arrays(values, width)
    return pa.table({"x": xcol, "y": pa.array(np.ascontiguousarray(y))})


def write_split(path: Path, x: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> None:
    """Write one split atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = _table(x, y)
    meta = {**meta, "shape": list(x.shape[1:]), "x_dtype": str(x.dtype), "y_dtype": str(y.dtype)}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)  # CRCs, verified on read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_dataset(ds: RawDataset, out_dir: Path, version: str) -> str:
    """Write ``train.parquet`` and ``test.parquet`` under ``out_dir``; return the content hash."""
    data_hash = ds.content_hash()
    common = {
        "dataset": ds.name,
        "task": ds.task,
        "num_classes": ds.num_classes,
        "source": ds.source,
        "checksums": ds.checksums,
        "params": ds.params,
        "extra": ds.extra,
        "data_hash": data_hash,
        "sgdlab_version": version,
    }
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        write_split(Path(out_dir) / f"{split}.parquet", x, y, {**common, "split": split})
    return data_hash


def read_meta(path: Path) -> dict[str, Any]:
    """Read only the sgdlab metadata of a processed split."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: missing; run `sgdlab prepare` (or `dvc repro prepare`)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: not a readable Parquet file ({exc}); delete it and run `sgdlab prepare`") from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise DataFileError(f"{path}: no sgdlab metadata; not written by sgdlab prepare")
    return json.loads(raw)


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one split back exactly: (x with its per-example shape, y, metadata)."""
    path = Path(path)
    meta = read_meta(path)
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: corrupt Parquet ({exc}); delete it and run `sgdlab prepare`") from exc
    xcol = table.column("x").combine_chunks()
    n = len(xcol)
    x = xcol.flatten().to_numpy(zero_copy_only=False).astype(meta["x_dtype"], copy=False)
    x = x.reshape(n, *meta["shape"])
    y = table.column("y").to_numpy().astype(meta["y_dtype"], copy=False)
    return x, y, meta
