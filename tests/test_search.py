"""Seeded hyper-parameter search (``sweep.optimizers[i].search``): trials fixed by the config, each its own run
key; a search SIGKILLed mid-way and re-run ends with exactly its trials, none repeated."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest

from sgdlab.config import ConfigError, from_dict
from sgdlab.data import DataSpec
from sgdlab.optbench import search
from sgdlab.sweep import SweepError, expand

SPACE = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "1-beta2": {"low": 1e-3, "high": 1e-1, "log": True}}


def _cfg(**search_over):
    s = {"kind": "quasirandom", "trials": 8, "studies": 2, "seed": 3, "space": SPACE, **search_over}
    return from_dict(
        {
            "data": {"datasets": ["xor"]},
            "train": {"dataset": "xor", "steps": 40, "log_every": 10, "eval_every": 20, "checkpoint_every": 20},
            "sweep": {"optimizers": [{"name": "adam", "lr": 0.001, "search": s}], "seeds": [0, 1], "batch_sizes": [16]},
        }
    )


def _data():
    return DataSpec("xor", "h" * 64, 0.1, 0, 50)


def test_trials_are_fixed_by_the_config_within_bounds_and_become_run_keys():
    specs = expand(_cfg(), _data(), 180)
    assert len(specs) == 2 * 8 * 2  # studies x trials x seeds
    assert len({s.key for s in specs}) == len(specs)
    assert [s.key for s in expand(_cfg(), _data(), 180)] == [s.key for s in specs]  # stable: resumable
    meta = [s.extra["search"] for s in specs]
    assert sorted({(m["study"], m["trial"]) for m in meta}) == [(s, t) for s in range(2) for t in range(8)]
    for s in specs:
        assert 1e-4 <= s.hparams["lr"] <= 1e-1
        assert 0.9 <= s.hparams["betas"][1] <= 0.999 and s.hparams["betas"][0] == 0.9  # beta1 left at default
        assert "trial " in s.label
    lrs = {(s.extra["search"]["study"], s.extra["search"]["trial"]): s.lr for s in specs}
    assert lrs[(0, 0)] != lrs[(1, 0)]  # independent studies draw different points
    assert expand(_cfg(seed=4), _data(), 180)[0].key != specs[0].key


def test_log_uniform_and_the_halton_sequence_covers_the_cube_more_evenly_than_random():
    from scipy.stats import qmc

    u_q = search.unit_points("quasirandom", 64, 2, 0)
    u_r = search.unit_points("random", 64, 2, 0)
    assert qmc.discrepancy(u_q) < 0.5 * qmc.discrepancy(u_r)
    cfg = _cfg(kind="random", trials=2000, studies=1, space={"lr": SPACE["lr"]})
    logs = np.log10([t["values"]["lr"] for t in search.trials(cfg.sweep.optimizers[0].search)])
    assert abs(np.median(logs) - (-2.5)) < 0.1 and abs(np.mean(logs < -3) - 1 / 3) < 0.04  # uniform in log10


def test_bad_search_settings_are_refused_naming_the_key():
    for space, msg in [
        ({"lr": {"low": 0.1, "high": 0.01}}, "low < high"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log: true needs low > 0"),
        ({}, "needs at least one parameter"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            _cfg(space=space)
    with pytest.raises(ConfigError, match="search.kind"):
        _cfg(kind="bayesian")
    with pytest.raises(SweepError, match=r"sweep.optimizers\[0\] \(adam\): search.space: 'momentum' is not a numeric"):
        expand(_cfg(space={"momentum": {"low": 0.1, "high": 0.9}}), _data(), 180)
    with pytest.raises(SweepError, match=r"search trial 0/\d+ .*beta2"):
        expand(_cfg(space={"beta2": {"low": 0.5, "high": 1.5}}), _data(), 180)  # betas must stay in [0, 1)


def test_a_search_killed_mid_way_finishes_with_exactly_its_trials(tmp_path, mlflow_store, monkeypatch):
    """4 quasirandom trials of sgd; the process SIGKILLs itself inside the third trial's training; the re-run
    trains what is left: 4 results, trials 0-3 each once, one MLflow child run per trial with its number."""
    from test_faults import _child_runs, _finish, _start

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    raw = {
        "study": {"name": "search"},
        "data": {"root": str(tmp_path / "data"), "datasets": ["xor"], "xor": {"n_train": 200, "n_test": 100}},
        "train": {"dataset": "xor", "steps": 300, "log_every": 10, "eval_every": 0, "checkpoint_every": 100},
        "sweep": {
            "optimizers": [
                {
                    "name": "sgd",
                    "lr": 0.1,
                    "search": {
                        "kind": "quasirandom",
                        "trials": 4,
                        "space": {"lr": {"low": 0.01, "high": 0.5, "log": True}},
                    },
                }
            ],
            "seeds": [0],
            "batch_sizes": [16],
            "models": [{"name": "mlp", "kwargs": {"widths": [16]}}],
        },
    }
    from sgdlab.study import Study

    cfg = from_dict(raw)
    st = Study(cfg)
    data = st.data_spec(prepare=True)
    specs = expand(cfg, data, st.n_train(data))
    third = next(s for s in specs if s.extra["search"]["trial"] == 2)
    proc = _start(tmp_path, raw, mlflow_store, "kill", die_at=[third.key, 150])
    proc.wait(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    rows = _finish(_start(tmp_path, raw, mlflow_store, "rerun"))
    assert sorted(r["run_key"] for r in rows) == sorted(s.key for s in specs)
    assert sum(not r["cached"] for r in rows) == 2  # the killed trial (resumed) and the one never started
    runs = _child_runs("search")
    assert {k: len(v) for k, v in runs.items()} == {s.key: 1 for s in specs}
    assert sorted(int(v[0].data.tags["search_trial"]) for v in runs.values()) == [0, 1, 2, 3]
    result = json.loads((tmp_path / "models" / "search" / third.key / "result.json").read_text())
    assert result["status"] == "finished" and result["resumed_from"] == 100
    assert all(
        math.isfinite(json.loads((tmp_path / "models" / "search" / s.key / "result.json").read_text())["train/loss"])
        for s in specs
    )
