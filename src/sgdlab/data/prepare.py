"""Prepare a dataset: build it from its source and write ``<root>/processed/<name>/{train,test}.parquet``.

Idempotent: when both files exist, their metadata records the same generator params and their content
hashes to the recorded data hash, nothing is rebuilt. Anything else (missing, truncated, corrupt, made
with other settings) is rebuilt. This check is the only cache (no Prefect result cache on top: a cached
task result cannot see that the files changed since).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sgdlab import __version__
from sgdlab.config import DataConfig
from sgdlab.data import sources
from sgdlab.data.parquet import (
    DataFileError,
    RawDataset,
    content_hash,
    read_meta,
    read_split,
    write_dataset,
)


@dataclass(frozen=True)
class PreparedDataset:
    """What a prepare step produced (small: safe to pass between Prefect tasks)."""

    name: str
    train_path: str
    test_path: str
    data_hash: str
    n_train: int
    n_test: int
    source: str
    rebuilt: bool


def processed_dir(root: Path | str, name: str) -> Path:
    return Path(root) / "processed" / name


def _builder(name: str, cfg: DataConfig) -> tuple[Callable[[], RawDataset], dict]:
    """Return (build function, the params that identify its output)."""
    if name == "fashion_mnist":
        c = cfg.fashion_mnist
        return (lambda: sources.make_fashion_mnist(c.source_dir, c.train_size, c.test_size)), {
            "train_size": c.train_size,
            "test_size": c.test_size,
        }
    if name == "mnist1d":
        c = cfg.mnist1d
        return (lambda: sources.make_mnist1d(c.num_samples, c.train_split, c.seed)), c.model_dump()
    if name == "sparse_regression":
        c = cfg.sparse_regression
        return (lambda: sources.make_sparse_regression(**c.model_dump())), c.model_dump()
    if name == "xor":
        c = cfg.xor
        return (lambda: sources.make_xor(**c.model_dump())), c.model_dump()
    if name == "separable":
        c = cfg.separable
        return (lambda: sources.make_separable(**c.model_dump())), c.model_dump()
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(_NAMES))}")


_NAMES = ("fashion_mnist", "mnist1d", "sparse_regression", "xor", "separable")


def _up_to_date(out: Path, params: dict) -> dict | None:
    try:
        metas = [read_meta(out / "train.parquet"), read_meta(out / "test.parquet")]
        if any(m.get("params") != params for m in metas) or metas[0]["data_hash"] != metas[1]["data_hash"]:
            return None
        (x_tr, y_tr, _), (x_te, y_te, _) = read_split(out / "train.parquet"), read_split(out / "test.parquet")
    except (DataFileError, KeyError, ValueError):
        return None
    if content_hash(x_tr, y_tr, x_te, y_te) != metas[0]["data_hash"]:
        return None
    return metas[0]


def prepare_dataset(name: str, cfg: DataConfig, root: Path | str | None = None, force: bool = False) -> PreparedDataset:
    """Build ``name`` and write its Parquet splits (or reuse them when already up to date)."""
    build, params = _builder(name, cfg)
    out = processed_dir(root if root is not None else cfg.root, name)
    meta = None if force else _up_to_date(out, params)
    rebuilt = meta is None
    if rebuilt:
        if name == "fashion_mnist":  # verify the source before anything is written
            sources.verify_fashion_mnist(sources.fashion_mnist_dir(cfg.fashion_mnist.source_dir))
        ds = build()
        write_dataset(ds, out, __version__)
        meta = read_meta(out / "train.parquet")
    import pyarrow.parquet as pq

    return PreparedDataset(
        name=name,
        train_path=str(out / "train.parquet"),
        test_path=str(out / "test.parquet"),
        data_hash=meta["data_hash"],
        n_train=pq.ParquetFile(out / "train.parquet").metadata.num_rows,
        n_test=pq.ParquetFile(out / "test.parquet").metadata.num_rows,
        source=meta["source"],
        rebuilt=rebuilt,
    )
