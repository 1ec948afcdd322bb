"""The Study layer: run keys see every data setting, runs train only on the data their key names, paths
stay inside (and relative to) the project, and everything knowable is refused at load."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sgdlab.config import ConfigError, from_dict, load_config
from sgdlab.data import DataFileError
from sgdlab.phases import PHASES, UndeclaredSectionError, run_local
from sgdlab.study import Study
from sgdlab.sweep import expand
from sgdlab.validate import validate_config

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "study": {"name": "study-test", "device": "cpu"},
    "data": {"datasets": ["xor"], "xor": {"n_train": 200, "n_test": 100}, "probe_size": 32},
    "train": {"dataset": "xor", "steps": 20, "log_every": 10, "eval_every": 0, "checkpoint_every": 10},
    "sweep": {
        "optimizers": [{"name": "sgd", "lr": 0.1}],
        "seeds": [0],
        "batch_sizes": [32],
        "models": [{"name": "mlp", "kwargs": {"widths": [8]}}],
    },
    "probe": {"subset_size": 32, "every": 0, "trace_probes": 2, "density_probes": 0},
}


def _cfg(**sections):
    raw = json.loads(json.dumps(BASE))
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return from_dict(raw)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    return tmp_path


def _keys(cfg):
    study = Study(cfg)
    return [s.key for s in expand(cfg, study.data_spec(prepare=True), study.n_train(study.data_spec()))]


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"val_fraction": 0.3}},
        {"data": {"split_seed": 1}},
        {"data": {"probe_size": 16}},
        {"data": {"xor": {"n_train": 300, "n_test": 100}}},
        {"probe": {"every": 10}},
    ],
)
def test_every_data_setting_is_in_the_run_key(home, change):
    assert _keys(_cfg(**change)) != _keys(_cfg())
    assert _keys(_cfg()) == _keys(_cfg())  # and nothing else moves it


def test_a_run_never_trains_on_data_other_than_its_key_says(home, mlflow_store):
    from sgdlab import tracking
    from sgdlab.runner import execute_run

    cfg = _cfg()
    study = Study(cfg)
    spec = expand(cfg, study.data_spec(prepare=True), 180)[0]
    # The file is re-prepared with other settings (as `sgdlab prepare --set ...` would): the old key must not
    # train on it, and the error says what to do.
    Study(_cfg(data={"xor": {"n_train": 300, "n_test": 100}})).data_spec(prepare=True)
    exp = tracking.ensure_experiment("study-test")
    ctx = {"experiment_id": exp, "parent_run_id": None, "tags": tracking.lineage_tags("study-test")}
    with pytest.raises(DataFileError, match=r"xor/train\.parquet: holds data .* but the run expects .*sgdlab prepare"):
        execute_run(study, spec, ctx)
    assert not study.run_dir(spec.key).exists()  # nothing written for the refused run


def test_prepare_rebuilds_what_differs_and_the_loader_catches_edited_content(home):
    from sgdlab.data import read_meta, read_split
    from sgdlab.data.parquet import write_split

    small, big = Study(_cfg()), Study(_cfg(data={"xor": {"n_train": 300, "n_test": 100}}))
    h_small = small.data_spec(prepare=True).data_hash
    h_big = big.data_spec(prepare=True).data_hash
    assert h_big != h_small
    assert small.data_spec(prepare=True).data_hash == h_small  # the configured size is rebuilt, not reused
    train = small.processed_dir() / "train.parquet"
    x, y, meta = read_split(train)
    x = np.array(x)
    x[0] = -x[0]  # same metadata, other content
    write_split(train, x, np.array(y), {k: v for k, v in meta.items() if k not in ("shape", "x_dtype", "y_dtype")})
    assert read_meta(train)["data_hash"] == h_small
    with pytest.raises(DataFileError, match=r"train\.parquet: content hash .* differs from the recorded data hash"):
        small.load(small.data_spec())
    assert small.data_spec(prepare=True).data_hash == h_small  # prepare notices and rebuilds it


def test_a_copied_project_probes_its_own_checkpoints(tmp_path, mlflow_store, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    monkeypatch.setenv("SGDLAB_HOME", str(a))
    cfg = _cfg()
    rows = run_local(cfg, "sweep")["rows"]
    assert rows[0]["checkpoint"] == f"{rows[0]['run_key']}/checkpoint.pt"
    shutil.copytree(a, b)
    shutil.rmtree(a / "models")  # the original's checkpoints are gone: b must not need them
    monkeypatch.setenv("SGDLAB_HOME", str(b))
    out = run_local(cfg, "probe")
    assert out["probed"] == 1 and out["metrics"][rows[0]["run_key"]]["hessian/lambda_max"] > 0
    assert [r.checkpoint for r in Study(cfg).finished_runs()] == [b / "models" / "study-test" / rows[0]["checkpoint"]]


def test_paths_stay_inside_the_project(home):
    for name in (".", "..", ".hidden", "a/b"):
        with pytest.raises(ConfigError, match=r"study\.name"):
            _cfg(study={"name": name})
    for section, key in (("study", "models_dir"), ("study", "results_dir"), ("data", "root")):
        cfg = _cfg(**{section: {key: "../elsewhere"}})
        with pytest.raises(ConfigError, match=rf"{section}\.{key} = '\.\./elsewhere'.*outside the project"):
            Study(cfg)
    outside = Study(_cfg(study={"models_dir": "../elsewhere", "allow_outside_project": True}))
    assert outside.models_dir == (home.parent / "elsewhere" / "study-test").resolve()
    with pytest.raises(ConfigError, match=r"profiles\.big\.study\.name: a profile cannot move"):
        from_dict({**BASE, "profiles": {"big": {"study": {"name": "big"}}}})


def test_absolute_paths_in_an_old_table_are_refused(home):
    study = Study(_cfg())
    with pytest.raises(ValueError, match=r"/elsewhere/k/checkpoint\.pt: an absolute path"):
        study.resolve("/elsewhere/k/checkpoint.pt")


@pytest.mark.parametrize(
    "over, match",
    [
        ({"sweep": {"optimizers": [{"name": "adamm", "lr": 0.1}]}}, r"unknown optimizer 'adamm'.*Did you mean: adam"),
        ({"sweep": {"optimizers": [{"name": "sgd", "lr": 0.1, "hparams": {"betas": [0.9, 0.99]}}]}}, r"\(sgd\).*betas"),
        ({"sweep": {"optimizers": [{"name": "sgd", "lr": float("inf")}]}}, r"lr.*finite number > 0"),
        ({"sweep": {"models": [{"name": "mlp", "kwargs": {"depth": 3}}]}}, r"sweep\.models\[0\]\.kwargs\.depth"),
        ({"sweep": {"batch_sizes": [500]}}, r"sweep\.batch_sizes: 500 is larger than the 180 training examples"),
        ({"gan": {"profile": "huge"}}, r"params\.yaml: gan: .*huge"),
        ({"gan": {"overrides": {"stepz": 3}}}, r"params\.yaml: gan: .*stepz"),
        ({"train": {"schedule": {"kind": "warmup_cosine", "warmup_steps": 0}}}, r"train\.schedule.*warmup_steps"),
        ({"train": {"schedule": {"kind": "step", "gamma": 2}}}, r"train\.schedule.*gamma=2.*\(0, 1\]"),
        ({"train": {"schedule": {"kind": "linear"}}}, r"train\.schedule.*kind='linear'"),
        ({"train": {"physical_batch_size": 5}}, r"physical_batch_size=5 must divide batch_size=32"),
    ],
)
def test_bad_input_is_refused_at_load(home, over, match):
    with pytest.raises(ValueError, match=match):
        validate_config(_cfg(**over))


def test_sgdlab_config_refuses_before_compute_and_leaves_nothing(home):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (home / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", home / "dvc.yaml")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", "config", "--set", "sweep.optimizers=[{name: adamm, lr: 0.1}]"],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2 and "unknown optimizer 'adamm'" in r.stderr, r.stderr
    assert not (home / "mlflow").exists() and not (home / "data" / "processed").exists()
    print(f"sgdlab config refused a bad optimizer in {elapsed:.1f} s (process start and imports included)")


@pytest.mark.parametrize(
    "schedule",
    [
        {"kind": "constant"},
        {"kind": "step", "step_size": 2, "gamma": 0.5},
        {"kind": "cosine", "min_lr_ratio": 0.1},
        {"kind": "warmup_cosine", "warmup_steps": 2},
        {"kind": "warmup_constant", "warmup_steps": 3},
    ],
)
def test_every_schedule_the_config_accepts_trains(schedule):
    import torch

    from sgdlab.models import build_model
    from sgdlab.sweep import loop_settings
    from sgdlab.train import DataTensors, LoopConfig, train

    cfg = _cfg(train={"schedule": schedule, "checkpoint_every": 0})
    loop = LoopConfig(steps=6, batch_size=8, **{**loop_settings(cfg), "log_every": 1})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    model = build_model("mlp", (4,), 2, seed=0, widths=[4])
    res = train(model, "sgd", {"lr": 0.1}, DataTensors(x, y, x, y), loop)
    assert res.status == "finished" and res.steps_done == 6


@pytest.mark.parametrize("profile", sorted(yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]))
def test_every_shipped_profile_loads_and_expands(profile):
    cfg = load_config(REPO / "params.yaml", profile=profile)
    study = validate_config(cfg, root=REPO)
    assert study.results_dir == REPO / "results" / "default"  # a profile never moves the outputs DVC declares
    from sgdlab.data import DataSpec

    d = cfg.data
    assert expand(
        cfg, DataSpec(cfg.train.dataset, "0" * 64, d.val_fraction, d.split_seed, d.probe_size), study.expected_n_train()
    )


def test_a_phase_cannot_read_a_section_it_does_not_declare(home):
    study = PHASES["report"].study(_cfg())
    assert study.cfg.study.name == "study-test"
    with pytest.raises(UndeclaredSectionError, match=r"phase 'report' reads params section 'gan'"):
        _ = study.cfg.gan


def test_probe_trace_method_is_a_setting_and_part_of_the_key(home):
    assert _cfg(probe={"trace_method": "hutch++"}).probe.trace_method == "hutch++"
    with pytest.raises(ConfigError, match=r"probe\.trace_method"):
        _cfg(probe={"trace_method": "hutch"})
    every = {"every": 10}
    assert _keys(_cfg(probe={**every, "trace_method": "hutch++"})) != _keys(_cfg(probe=every))
