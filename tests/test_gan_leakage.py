"""The synthetic test set is built from the training split only.

Two guards: (1) structural: no function on the GAN path has a parameter through which
validation/test data could enter; (2) behavioural: the test split, NaN-poisoned and wrapped in
a tensor subclass that fails on any torch operation, sits next to the train split in the same
``splits`` mapping a flow would hold; the whole GAN path (train, sample, predict) runs without
touching it, and its outputs are bit-identical to a run where the test split holds other
values. A positive control shows the tripwire fires when test data does reach ``train_gan``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from sgdlab.gan import GANConfig, generator_hash, sample_synthetic, train_gan
from sgdlab.generalization import GANPredictor

CFG = GANConfig(
    z_dim=8,
    g_widths=(8, 8, 4),
    d_widths=(4, 8, 8),
    steps=3,
    batch_size=8,
    log_every=1,
    bn_stat_batches=1,
    device="cpu",
    seed=0,
)


class Tripwire(torch.Tensor):
    """A tensor that records and refuses every torch operation applied to it."""

    touched: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        Tripwire.touched.append(getattr(func, "__name__", repr(func)))
        raise AssertionError(f"test split touched by {getattr(func, '__name__', func)}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _splits(test_fill: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.rand(24, 1, 28, 28, generator=g), torch.arange(24) % 3
    x_test = torch.full((12, 1, 28, 28), test_fill).as_subclass(Tripwire)
    return {"train": (x_train, y_train), "test": (x_test, torch.arange(12) % 3)}


def _gan_path(splits, classifier: nn.Module):
    """What a flow does for the GAN predictor: only the train split is handed over."""
    x_train, y_train = splits["train"]
    gan = train_gan(x_train, y_train, 3, CFG)
    x_syn, y_syn = sample_synthetic(gan.generator, 3, 4, seed=0)
    return gan, x_syn, y_syn, GANPredictor(x_syn, y_syn).predict(classifier)


def test_signatures_admit_no_held_out_data():
    params = list(inspect.signature(train_gan).parameters)
    assert params == [
        "x_train",
        "y_train",
        "num_classes",
        "cfg",
        "data_range",
        "progress",
        "metric_sink",
        "checkpoint_path",
        "monitor",  # output only: it receives a copy of the EMA generator (test below)
        "monitor_every",
    ]
    for fn in (train_gan, sample_synthetic):
        names = " ".join(inspect.signature(fn).parameters).lower()
        assert "test" not in names and "val" not in names


def test_gan_path_never_touches_the_poisoned_test_split():
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    Tripwire.touched.clear()
    poisoned = _splits(float("nan"))
    gan_a, x_a, y_a, err_a = _gan_path(poisoned, classifier)
    assert Tripwire.touched == []
    assert torch.isfinite(x_a).all() and 0.0 <= err_a <= 1.0
    assert all(torch.isfinite(p).all() for p in gan_a.generator.parameters())
    # a different test split changes nothing downstream, bit for bit
    gan_b, x_b, _, err_b = _gan_path(_splits(0.5), classifier)
    assert generator_hash(gan_a.generator) == generator_hash(gan_b.generator)
    assert torch.equal(x_a, x_b) and err_a == err_b


def test_monitor_sees_copies_and_changes_nothing():
    """The FD-vs-time hook gets a copy of the EMA generator at the monitored steps; scribbling on
    that copy (as a careless monitor could) leaves the trained generator bit-identical."""
    x, y = _splits(0.5)["train"]
    plain = train_gan(x, y, 3, CFG)
    seen = []

    def monitor(step, seconds, g):
        seen.append((step, seconds >= 0.0, g.training))
        with torch.no_grad():
            for p in g.parameters():
                p.fill_(7.0)

    watched = train_gan(x, y, 3, CFG, monitor=monitor, monitor_every=2)
    assert seen == [(2, True, False), (3, True, False)]
    assert generator_hash(watched.generator) == generator_hash(plain.generator)
    with pytest.raises(ValueError, match="monitor_every"):
        train_gan(x, y, 3, CFG, monitor=monitor, monitor_every=-1)


def test_tripwire_fires_when_test_data_reaches_training():
    Tripwire.touched.clear()
    x_test, y_test = _splits(float("nan"))["test"]
    with pytest.raises(AssertionError, match="test split touched"):
        train_gan(x_test, y_test, 3, CFG)
    assert Tripwire.touched
