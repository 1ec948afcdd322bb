"""Learning-rate schedules: exact values for each kind, warm-up, validation."""

import math

import pytest

from sgdlab.train import Schedule, lr_at, lr_factor


def test_constant():
    s = Schedule("constant")
    assert [lr_factor(s, t, 10) for t in range(10)] == [1.0] * 10


def test_step():
    s = Schedule("step", step_size=3, gamma=0.5)
    assert [lr_at(s, t, 10, 0.2) for t in range(7)] == [0.2] * 3 + [0.1] * 3 + [0.05]


def test_cosine_exact():
    s = Schedule("cosine", min_lr_ratio=0.1)
    T = 8
    for t in range(T):
        want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / T))
        assert lr_factor(s, t, T) == pytest.approx(want, abs=1e-15)
    assert lr_factor(s, 0, T) == 1.0
    assert lr_factor(s, T // 2, T) == pytest.approx(0.55, abs=1e-15)


def test_warmup_cosine():
    s = Schedule("warmup_cosine", warmup_steps=4)
    T = 14
    assert [lr_factor(s, t, T) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(s, 4, T) == 1.0  # cosine starts at its top right after warm-up
    assert lr_factor(s, 9, T) == pytest.approx(0.5, abs=1e-15)  # half-way through 10 cosine steps
    assert lr_factor(s, 13, T) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)), abs=1e-15)


def test_warmup_constant():
    s = Schedule("warmup_constant", warmup_steps=2)
    assert [lr_at(s, t, 5, 0.4) for t in range(5)] == [0.2, 0.4, 0.4, 0.4, 0.4]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kind": "linear"}, "kind='linear'"),
        ({"kind": "warmup_cosine", "warmup_steps": 0}, "warmup_steps=0"),
        ({"kind": "step", "gamma": 1.5}, "gamma=1.5"),
        ({"kind": "step", "step_size": 0}, "step_size=0"),
        ({"kind": "cosine", "min_lr_ratio": -0.1}, "min_lr_ratio=-0.1"),
    ],
)
def test_bad_schedule_names_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kw)
