"""Sources, Parquet round trips, synthetic task properties, the loader, and prepare's error paths."""

import gzip
import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import FASHION_DIR, needs_fashion

from sgdlab.config import DataConfig
from sgdlab.data import (
    DataFileError,
    SourceError,
    load_splits,
    prepare_dataset,
    read_split,
    sources,
)
from sgdlab.data.idx import encode_idx
from sgdlab.data.parquet import RawDataset, write_dataset


def _fake_fashion(directory, n_train=12, n_test=6, truncate=None):
    """Write four small IDX.gz files; return the {file: sha256} they verify against."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    sums = {}
    for name, a in arrays.items():
        blob = gzip.compress(encode_idx(a))
        if name == truncate:
            blob = blob[: len(blob) // 2]
        (directory / name).write_bytes(blob)
        sums[name] = hashlib.sha256(blob).hexdigest()
    return arrays, sums


def test_fashion_reader_on_hand_made_files(tmp_path):
    arrays, sums = _fake_fashion(tmp_path / "fm")
    ds = sources.make_fashion_mnist(str(tmp_path / "fm"), expected=sums)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert np.array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64))
    assert ds.checksums == sums


def test_missing_directory_says_how_to_get_it(tmp_path):
    with pytest.raises(SourceError, match="apt-get install dataset-fashion-mnist") as info:
        sources.make_fashion_mnist(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(info.value)


def test_checksum_mismatch_names_file_and_writes_nothing(tmp_path):
    _fake_fashion(tmp_path / "fm")  # real checksums will not match these files
    cfg = DataConfig(fashion_mnist={"source_dir": str(tmp_path / "fm")})
    with pytest.raises(SourceError, match=r"train-images-idx3-ubyte\.gz has SHA-256 .*apt-get install"):
        prepare_dataset("fashion_mnist", cfg, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
    _, sums = _fake_fashion(tmp_path / "fm", truncate="t10k-images-idx3-ubyte.gz")
    with pytest.raises(SourceError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip.*apt-get"):
        sources.make_fashion_mnist(str(tmp_path / "fm"), expected=sums)


def test_failed_rebuild_keeps_previous_files(tmp_path):
    cfg = DataConfig(datasets=("xor",))
    prepare_dataset("xor", cfg, tmp_path)
    before = (tmp_path / "processed/xor/train.parquet").read_bytes()
    cfg_bad = DataConfig(fashion_mnist={"source_dir": str(tmp_path / "missing")})
    with pytest.raises(SourceError):
        prepare_dataset("fashion_mnist", cfg_bad, tmp_path)
    assert (tmp_path / "processed/xor/train.parquet").read_bytes() == before
    assert not (tmp_path / "processed/fashion_mnist").exists()


@needs_fashion
def test_real_fashion_mnist_verifies():
    sums = sources.verify_fashion_mnist(FASHION_DIR)
    assert sums == sources.FASHION_MNIST_SHA256


def _raw(x, y):
    return RawDataset(
        "t",
        "classification",
        3,
        x,
        y,
        x[:2],
        y[:2],
        source="unit",
        checksums={"f": "abc"},
        params={"k": 1},
        extra={"w": [1.0]},
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_parquet_round_trip_exact(tmp_path, dtype):
    rng = np.random.default_rng(1)
    x = (rng.random((7, 1, 5, 4)) * 255).astype(dtype)
    y = rng.integers(0, 3, 7).astype(np.int64)
    h = write_dataset(_raw(x, y), tmp_path, "9.9")
    x2, y2, meta = read_split(tmp_path / "train.parquet")
    assert x2.dtype == x.dtype and x2.shape == x.shape and np.array_equal(x2, x)
    assert np.array_equal(y2, y)
    assert meta["data_hash"] == h and meta["sgdlab_version"] == "9.9"
    assert meta["checksums"] == {"f": "abc"} and meta["params"] == {"k": 1} and meta["split"] == "train"
    schema = pq.read_schema(tmp_path / "train.parquet")
    xtype = schema.field("x").type
    assert xtype.list_size == 20 and xtype.value_type.to_pandas_dtype() == dtype


def test_corrupt_parquet_names_the_file(tmp_path):
    p = tmp_path / "processed" / "xor"
    p.mkdir(parents=True)
    (p / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    (p / "test.parquet").write_bytes(b"junk")
    with pytest.raises(DataFileError, match=r"train\.parquet: not a readable Parquet file.*sgdlab prepare"):
        load_splits("xor", tmp_path)


def test_unprepared_dataset_error(tmp_path):
    with pytest.raises(DataFileError, match="not prepared; run `sgdlab prepare`"):
        load_splits("mnist1d", tmp_path)


def test_sparse_regression_properties_and_determinism():
    a = sources.make_sparse_regression(d=50, n_train=20, n_test=30, kappa=4, noise=0.0, seed=3)
    b = sources.make_sparse_regression(d=50, n_train=20, n_test=30, kappa=4, noise=0.0, seed=3)
    c = sources.make_sparse_regression(d=50, n_train=20, n_test=30, kappa=4, noise=0.0, seed=4)
    assert a.content_hash() == b.content_hash() != c.content_hash()
    w = np.array(a.extra["w_star"])
    assert np.count_nonzero(w) == 4 and set(np.abs(w[w != 0])) == {1.0}
    assert np.allclose(a.x_train.astype(np.float64) @ w, a.y_train, atol=1e-5)  # noiseless: y = <w*, x>
    assert a.x_train.shape == (20, 50)


def test_xor_labels():
    ds = sources.make_xor(d=8, i=2, j=5, n_train=64, n_test=16, seed=0)
    y_pm = 2 * ds.y_train - 1
    assert np.array_equal(y_pm, -ds.x_train[:, 2] * ds.x_train[:, 5])
    assert set(np.unique(ds.x_train)) == {-1.0, 1.0}
    assert sources.make_xor(8, 2, 5, 64, 16, 0).content_hash() == ds.content_hash()


def test_separable_symmetric_with_margin():
    ds = sources.make_separable(d=5, n_train=40, n_test=20, margin=0.3, seed=2)
    w = np.array(ds.extra["w_star"])
    s = ds.x_train.astype(np.float64) @ w
    assert np.all(np.abs(s) >= 0.3 - 1e-6)
    assert np.array_equal(s > 0, ds.y_train == 1)  # separable by w*
    # symmetric: every point's mirror is in the set with the opposite label
    pts = {tuple(np.round(x, 5)): y for x, y in zip(ds.x_train, ds.y_train)}
    assert all(pts[tuple(np.round(-x, 5))] == 1 - y for x, y in zip(ds.x_train, ds.y_train))


def test_mnist1d_generator_is_deterministic_and_side_effect_free():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = sources.make_mnist1d(num_samples=200, seed=7)
    assert np.array_equal(np.random.get_state()[1], state)
    b = sources.make_mnist1d(num_samples=200, seed=7)
    assert a.content_hash() == b.content_hash()
    assert a.x_train.shape == (160, 1, 40) and set(np.unique(a.y_train)) <= set(range(10))


def test_loader_splits_probe_and_normalisation(tmp_path):
    _, sums = _fake_fashion(tmp_path / "fm", n_train=40, n_test=10)
    ds = sources.make_fashion_mnist(str(tmp_path / "fm"), expected=sums)
    write_dataset(ds, tmp_path / "processed" / "fashion_mnist", "0")
    s = load_splits("fashion_mnist", tmp_path, "cpu", val_fraction=0.25, probe_size=8, split_seed=1)
    assert s.x_train.shape == (30, 1, 28, 28) and s.x_val.shape == (10, 1, 28, 28) and s.x_test.shape[0] == 10
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert abs(s.x_train.mean().item()) < 1e-5 and abs(s.x_train.std().item() - 1) < 1e-5
    # val and train parts partition the Parquet train split, deterministically
    raw = torch.from_numpy(ds.x_train.astype(np.float32) / 255)
    norm = s.meta["normalization"]
    back = torch.cat([s.x_train, s.x_val]) * norm["std"] + norm["mean"]
    assert sorted(map(lambda t: round(t.sum().item(), 2), back)) == sorted(map(lambda t: round(t.sum().item(), 2), raw))
    s2 = load_splits("fashion_mnist", tmp_path, "cpu", val_fraction=0.25, probe_size=8, split_seed=1)
    assert torch.equal(s.probe_idx, s2.probe_idx) and len(s.probe_idx) == 8 and s.probe_idx.max() < 30
    assert s.num_outputs == 10 and s.input_shape == (1, 28, 28)


def test_prepare_is_idempotent(tmp_path):
    cfg = DataConfig(datasets=("separable",))
    first = prepare_dataset("separable", cfg, tmp_path)
    second = prepare_dataset("separable", cfg, tmp_path)
    assert first.rebuilt and not second.rebuilt and first.data_hash == second.data_hash
    third = prepare_dataset("separable", DataConfig(separable={"seed": 5}), tmp_path)
    assert third.rebuilt and third.data_hash != first.data_hash
