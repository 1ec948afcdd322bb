"""Dataset sources, all offline: Fashion-MNIST IDX files, the MNIST-1D generator, and the synthetic
tasks of the theory papers. Each ``make_*`` returns a :class:`RawDataset` in host memory; nothing is
written here, so a failing source (bad checksum, truncated file) can never leave a partial output.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from sgdlab.data.idx import IDXError, read_idx_file
from sgdlab.data.parquet import RawDataset

FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HOWTO = (
    "install the Debian package with `apt-get install dataset-fashion-mnist` (files land in "
    f"{FASHION_MNIST_DEFAULT_DIR}), or point data.fashion_mnist.source_dir / $SGDLAB_FASHION_MNIST_DIR "
    "at a directory holding the four original *-ubyte.gz files"
)
# SHA-256 of the original Zalando files (identical in the Debian package).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}


class SourceError(FileNotFoundError):
    """A dataset source is missing or does not verify; the message says how to get it."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fashion_mnist_dir(configured: str | None = None) -> Path:
    return Path(configured or os.environ.get("SGDLAB_FASHION_MNIST_DIR") or FASHION_MNIST_DEFAULT_DIR)


def verify_fashion_mnist(directory: Path, expected: dict[str, str] = FASHION_MNIST_SHA256) -> dict[str, str]:
    """Check the four files exist and match their SHA-256; return {file: sha256}."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceError(f"Fashion-MNIST directory {directory} does not exist; {FASHION_MNIST_HOWTO}")
    sums = {}
    for name, want in expected.items():
        path = directory / name
        if not path.is_file():
            raise SourceError(f"Fashion-MNIST file {path} is missing; {FASHION_MNIST_HOWTO}")
        got = sha256_file(path)
        if got != want:
            raise SourceError(
                f"Fashion-MNIST file {path} has SHA-256 {got}, expected {want} (corrupt or a different "
                f"file); {FASHION_MNIST_HOWTO}"
            )
        sums[name] = got
    return sums


def make_fashion_mnist(
    source_dir: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    expected: dict[str, str] = FASHION_MNIST_SHA256,
) -> RawDataset:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60k/10k 28x28 uint8 images, 10 classes."""
    directory = fashion_mnist_dir(source_dir)
    sums = verify_fashion_mnist(directory, expected)
    arrays = {}
    for name in expected:
        try:
            arrays[name] = read_idx_file(directory / name)
        except IDXError as exc:
            raise SourceError(f"{exc}; {FASHION_MNIST_HOWTO}") from exc
    x_tr, y_tr = arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]
    x_te, y_te = arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise SourceError(f"{directory}: {split} images {x.shape} and labels {y.shape} do not match")
    x_tr, y_tr = x_tr[:train_size], y_tr[:train_size]
    x_te, y_te = x_te[:test_size], y_te[:test_size]
    return RawDataset(
        name="fashion_mnist",
        task="classification",
        num_classes=10,
        x_train=x_tr[:, None].astype(np.uint8),  # (N, 1, 28, 28)
        y_train=y_tr.astype(np.int64),
        x_test=x_te[:, None].astype(np.uint8),
        y_test=y_te.astype(np.int64),
        source=str(directory),
        checksums=sums,
        params={"train_size": train_size, "test_size": test_size},
    )


def make_mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42) -> RawDataset:
    """MNIST-1D (Greydanus & Kobak 2024), generated locally by ``mnist1d.data.make_dataset``.

    The generator seeds numpy's global RNG; we save and restore it so preparing data has no side effect.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    state = np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    return RawDataset(
        name="mnist1d",
        task="classification",
        num_classes=10,
        x_train=d["x"].astype(np.float32)[:, None],  # (N, 1, 40)
        y_train=d["y"].astype(np.int64),
        x_test=d["x_test"].astype(np.float32)[:, None],
        y_test=d["y_test"].astype(np.int64),
        source="mnist1d.data.make_dataset",
        params={"num_samples": num_samples, "train_split": train_split, "seed": seed},
    )


def make_sparse_regression(d: int, n_train: int, n_test: int, kappa: int, noise: float, seed: int) -> RawDataset:
    """kappa-sparse overparametrized linear regression (label-noise SGD studies: HaoChen et al. 2021;
    Li, Wang, Arora 2022): x ~ N(0, I_d), w* with exactly kappa nonzero entries equal to +-1 on a random
    support, y = <w*, x> + noise * xi. The ground truth is stored in the file metadata (``extra``)."""
    rng = np.random.default_rng(seed)
    support = np.sort(rng.choice(d, size=kappa, replace=False))
    w = np.zeros(d)
    w[support] = rng.choice([-1.0, 1.0], size=kappa)
    x_tr, x_te = rng.standard_normal((n_train, d)), rng.standard_normal((n_test, d))
    y_tr = x_tr @ w + noise * rng.standard_normal(n_train)
    y_te = x_te @ w + noise * rng.standard_normal(n_test)
    return RawDataset(
        name="sparse_regression",
        task="regression",
        num_classes=None,
        x_train=x_tr.astype(np.float32),
        y_train=y_tr.astype(np.float32),
        x_test=x_te.astype(np.float32),
        y_test=y_te.astype(np.float32),
        source="sgdlab.data.sources.make_sparse_regression",
        params={"d": d, "n_train": n_train, "n_test": n_test, "kappa": kappa, "noise": noise, "seed": seed},
        extra={"w_star": w.tolist(), "support": support.tolist()},
    )


def make_xor(d: int, i: int, j: int, n_train: int, n_test: int, seed: int) -> RawDataset:
    """XOR on the Boolean hypercube: x uniform on {-1, +1}^d, label y = -x_i x_j (in +-1).

    Stored as class ``(1 + y) / 2`` (class 1 <=> x_i != x_j) so cross-entropy models can use it."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.choice([-1.0, 1.0], size=(n, d))
        y_pm = -x[:, i] * x[:, j]
        return x.astype(np.float32), ((1 + y_pm) / 2).astype(np.int64)

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return RawDataset(
        name="xor",
        task="classification",
        num_classes=2,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        source="sgdlab.data.sources.make_xor",
        params={"d": d, "i": i, "j": j, "n_train": n_train, "n_test": n_test, "seed": seed},
    )


def make_separable(d: int, n_train: int, n_test: int, margin: float, seed: int) -> RawDataset:
    """Linearly separable symmetric data (implicit-bias studies, e.g. Soudry et al. 2018; Lyu & Li 2020):
    a unit w*, x ~ N(0, I_d) rejected when |<w*, x>| < margin, label sign(<w*, x>); every point comes
    with its mirror (-x, -y), so the set is symmetric and separable by w* with margin >= ``margin``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        half, xs = n // 2, []
        while sum(len(b) for b in xs) < half:
            cand = rng.standard_normal((2 * half + 16, d))
            xs.append(cand[np.abs(cand @ w) >= margin])
        x = np.concatenate(xs)[:half]
        x = np.concatenate([x, -x])
        y = (x @ w > 0).astype(np.int64)
        perm = rng.permutation(n)
        return x[perm].astype(np.float32), y[perm]

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return RawDataset(
        name="separable",
        task="classification",
        num_classes=2,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        source="sgdlab.data.sources.make_separable",
        params={"d": d, "n_train": n_train, "n_test": n_test, "margin": margin, "seed": seed},
        extra={"w_star": w.tolist()},
    )
