"""Benchmark scores on constructed tables, against hand-computed answers."""

import math

import numpy as np
import pytest

from sgdlab.optbench.scoring import (
    benchmark_score,
    external_tuning_time,
    group_mean_ci,
    mean_ci,
    performance_ratios,
    profile,
    time_to_target,
)

INF = math.inf


def test_time_to_target_first_crossing_nan_and_direction():
    steps = [100, 200, 300, 400]
    assert time_to_target(steps, [0.5, 0.31, 0.30, 0.2], 0.30) == 300  # <= target, first time
    assert time_to_target(steps, [0.5, float("nan"), 0.4, 0.35], 0.30) == INF  # never
    assert time_to_target(steps, [0.5, float("nan"), 0.1, 0.1], 0.30) == 300  # NaN never counts
    assert time_to_target(steps, [0.1, 0.5, 0.93, 0.95], 0.925, minimize=False) == 300  # accuracy
    with pytest.raises(ValueError, match="increasing"):
        time_to_target([2, 1], [0, 0], 1)
    with pytest.raises(ValueError, match="2 times but 1 values"):
        time_to_target([1, 2], [0], 1)


def test_external_tuning_is_the_median_over_studies_of_the_fastest_trial():
    # 3 studies of 3 trials: fastest per study 300, 200, 500 -> median 300
    assert external_tuning_time([[400, 300, INF], [200, 900, 250], [INF, 500, 600]]) == 300
    # 4 studies: fastest 100, 300, inf, inf -> median of (300, inf) is inf: half never reached it
    assert external_tuning_time([[100], [300], [INF], [INF]]) == INF
    assert external_tuning_time([[100], [300], [200], [INF]]) == 250  # (200 + 300) / 2
    with pytest.raises(ValueError, match="at least one trial"):
        external_tuning_time([[]])


# 3 submissions x 4 workloads, times in steps; worked by hand:
TIMES = {
    "a": {"w1": 100, "w2": 400, "w3": 300, "w4": INF},
    "b": {"w1": 200, "w2": 100, "w3": 300, "w4": 1000},
    "c": {"w1": 500, "w2": 200, "w3": 150, "w4": 5000},
}
# ratios to the best per workload (best: w1 100, w2 100, w3 150, w4 1000):
#   a: 1, 4, 2, inf       b: 2, 1, 2, 1       c: 5 -> inf (> r_max), 2, 1, 5 -> inf
# B = mean_w max(0, 4 - r) / 3:
#   a: (3 + 0 + 2 + 0) / 4 / 3 = 5/12      b: (2 + 3 + 2 + 3) / 12 = 10/12      c: (0 + 2 + 3 + 0) / 12 = 5/12
WANT_RATIOS = {
    "a": {"w1": 1.0, "w2": 4.0, "w3": 2.0, "w4": INF},
    "b": {"w1": 2.0, "w2": 1.0, "w3": 2.0, "w4": 1.0},
    "c": {"w1": INF, "w2": 2.0, "w3": 1.0, "w4": INF},
}
WANT_SCORE = {"a": 5 / 12, "b": 10 / 12, "c": 5 / 12}


def test_ratios_profile_and_score_by_hand():
    r = performance_ratios(TIMES)
    assert r == WANT_RATIOS
    assert list(profile(r["a"], [1, 1.99, 2, 3.99, 4])) == [0.25, 0.25, 0.5, 0.5, 0.75]
    for s, want in WANT_SCORE.items():
        assert benchmark_score(r[s]) == pytest.approx(want, abs=1e-15)


def test_score_matches_the_trapezoidal_rule_on_a_fine_grid():
    """AlgoPerf's script: rho on a tau grid over [1, r_max], trapezoidal integral, divided by r_max - 1."""
    r = performance_ratios(TIMES)
    taus = np.linspace(1.0, 4.0, 30001)
    for s in TIMES:
        rho = profile(r[s], taus)
        trapz = float(np.sum((rho[1:] + rho[:-1]) / 2 * np.diff(taus))) / 3.0
        assert benchmark_score(r[s]) == pytest.approx(trapz, abs=1e-4)


def test_score_edge_cases_and_bad_tables():
    assert benchmark_score({"w": 1.0}) == 1.0 and benchmark_score({"w": INF}) == 0.0
    with pytest.raises(ValueError, match="submission 'b' has workloads"):
        performance_ratios({"a": {"w1": 1, "w2": 2}, "b": {"w1": 1}})
    with pytest.raises(ValueError, match="time of 'a' on 'w1' is -1"):
        performance_ratios({"a": {"w1": -1}})
    with pytest.raises(ValueError, match="r_max=1"):
        benchmark_score({"w": 1.0}, r_max=1)


def test_t_interval_by_hand_and_its_coverage():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), t_{0.975, 3} = 3.182446305284263
    ci = mean_ci([1, 2, 3, 4])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (ci.mean, ci.n) == (2.5, 4)
    assert ci.lo == pytest.approx(2.5 - half, rel=1e-12) and ci.hi == pytest.approx(2.5 + half, rel=1e-12)
    one = mean_ci([7.0])
    assert one.mean == 7.0 and math.isnan(one.lo) and "no CI" in one.format()
    with pytest.raises(ValueError, match="1 NaN value"):
        mean_ci([1.0, float("nan")])
    # 95% intervals of 3 normal draws cover the true mean about 95% of the time
    rng = np.random.default_rng(0)
    cover = np.mean([(lambda c: c.lo <= 1.0 <= c.hi)(mean_ci(rng.normal(1.0, 2.0, 3))) for _ in range(4000)])
    assert 0.94 <= cover <= 0.96


def test_grouping_by_everything_but_the_seed():
    rows = [
        {"optimizer": "sgd", "lr": 0.1, "seed": 0, "err": 0.10},
        {"optimizer": "sgd", "lr": 0.1, "seed": 1, "err": 0.14},
        {"optimizer": "sgd", "lr": 0.2, "seed": 0, "err": 0.30},
        {"optimizer": "adam", "lr": 0.1, "seed": 0, "err": 0.20},
        {"optimizer": "adam", "lr": 0.1, "seed": 1, "err": 0.22},
    ]
    got = {(g["optimizer"], g["lr"]): g for g in group_mean_ci(rows, "err")}
    assert set(got) == {("sgd", 0.1), ("sgd", 0.2), ("adam", 0.1)}
    assert got[("sgd", 0.1)]["mean"] == pytest.approx(0.12) and got[("sgd", 0.1)]["n"] == 2
    assert got[("sgd", 0.2)]["n"] == 1 and math.isnan(got[("sgd", 0.2)]["ci_lo"])
    by_opt = {g["optimizer"]: g for g in group_mean_ci(rows, "err", by=["optimizer"])}
    assert by_opt["sgd"]["n"] == 3 and by_opt["sgd"]["mean"] == pytest.approx(0.18)


def test_sweep_summary_and_report_table_carry_the_t_interval():
    from sgdlab.report.tables import _pm
    from sgdlab.results import summarize

    base = {"model": "mlp", "optimizer": "sgd", "lr": 0.1, "batch_size": 32, "steps": 10, "train_fraction": 1.0}
    rows = [
        {**base, "variant": "base", "seed": s, "status": "finished", "test/acc": a} for s, a in enumerate([0.8, 0.9])
    ]
    rows.append({**base, "variant": "base", "seed": 2, "status": "diverged", "test/acc": None})
    rows.append({**base, "variant": "linearx2", "seed": 0, "status": "finished", "test/acc": 0.7})
    got = {g["variant"]: g for g in summarize(rows)}
    half = 12.706204736174698 * math.sqrt(0.005) / math.sqrt(2)  # t_{0.975, 1} s / sqrt(n), s^2 = 0.005
    g = got["base"]
    assert g["test/acc mean"] == pytest.approx(0.85) and g["diverged"] == 1
    assert g["test/acc ci95 lo"] == pytest.approx(0.85 - half) and g["test/acc ci95 hi"] == pytest.approx(0.85 + half)
    assert got["linearx2"]["test/acc ci95 lo"] is None  # one seed: no interval
    assert _pm(0.85, 0.0707, 100.0, 0.2147, 1.4853) == "85.0 ± 7.1 [21.5, 148.5]"
    assert _pm(0.7, 0.0, 100.0) == "70.0 ± 0.0"
