"""params.yaml validation: the shipped file validates; bad configs are rejected naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sgdlab.config import Config, ConfigError, apply_overrides, dump_config, from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_validate():
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.data.datasets and cfg.study.name


def test_config_is_frozen():
    cfg = load_config(REPO / "params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.study.seed = 3  # type: ignore[misc]


BAD = [
    ({"studdy": {}}, "studdy", "unknown key"),
    ({"study": {"nme": "x"}}, "study.nme", "unknown key"),
    ({"study": {"seed": -1}}, "study.seed", "greater than or equal to 0"),
    ({"study": {"seed": "abc"}}, "study.seed", "valid integer"),
    ({"study": {"device": "tpu"}}, "study.device", "'auto', 'cpu' or 'cuda'"),
    ({"study": {"name": "has space"}}, "study.name", "pattern"),
    ({"data": {"datasets": ["cifar10"]}}, "data.datasets", "unknown dataset 'cifar10'; allowed: fashion_mnist"),
    ({"data": {"datasets": []}}, "data.datasets", "at least one dataset"),
    ({"data": {"datasets": ["xor", "xor"]}}, "data.datasets", "duplicate dataset"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "less than 1"),
    ({"data": {"probe_size": 0}}, "data.probe_size", "greater than 0"),
    ({"data": {"probe_size": -5}}, "data.probe_size", "greater than 0"),
    (
        {"data": {"fashion_mnist": {"train_size": 70000}}},
        "data.fashion_mnist.train_size",
        "less than or equal to 60000",
    ),
    ({"data": {"mnist1d": {"train_split": 1.0}}}, "data.mnist1d.train_split", "less than 1"),
    (
        {"data": {"sparse_regression": {"kappa": 200, "d": 100}}},
        "data.sparse_regression",
        "kappa (200) must be <= d (100)",
    ),
    ({"data": {"sparse_regression": {"noise": -0.1}}}, "data.sparse_regression.noise", "greater than or equal to 0"),
    ({"data": {"xor": {"i": 3, "j": 3}}}, "data.xor", "distinct coordinates"),
    ({"data": {"separable": {"n_train": 7}}}, "data.separable.n_train", "must be even"),
    ({"orchestration": {"task_runner": "celery"}}, "orchestration.task_runner", "'thread', 'process' or 'dask'"),
    ({"orchestration": {"max_workers": 0}}, "orchestration.max_workers", "greater than or equal to 1"),
    (
        {"orchestration": {"population_min_members": 20}},
        "orchestration",
        "population_min_members=20 exceeds population_max_members=16",
    ),
    ({"tracking": {"experiment": 3}}, "tracking.experiment", "valid string"),
    ({"data": 5}, "data", "valid dictionary"),
]


@pytest.mark.parametrize("raw, key, msg", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_config_names_the_key(raw, key, msg):
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    text = str(info.value)
    assert f"params.yaml: {key}" in text, text
    assert msg in text, text


def test_bad_value_is_shown():
    with pytest.raises(ConfigError, match=r"data\.val_fraction = 1\.5"):
        from_dict({"data": {"val_fraction": 1.5}})


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"study": {"name": "s"}}))
    cfg = load_config(p, ["data.datasets=[xor, mnist1d]", "study.seed=7", "data.fashion_mnist.train_size=100"])
    assert cfg.data.datasets == ("xor", "mnist1d") and cfg.study.seed == 7
    assert cfg.data.fashion_mnist.train_size == 100 and cfg.study.name == "s"


@pytest.mark.parametrize(
    "item, match",
    [
        ("study.seed", "expected section.key=value"),
        ("study..seed=1", "bad key"),
        ("study.seed=[1,", "cannot parse value"),
        ("study.seed.x=1", "'seed' is a value, not a section"),
    ],
)
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({"study": {"seed": 1}}, [item])


def test_unknown_override_key_is_rejected(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("{}")
    with pytest.raises(ConfigError, match=r"study\.sed = 3: unknown key"):
        load_config(p, ["study.sed=3"])


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")


def test_dump_round_trips():
    cfg = load_config(REPO / "params.yaml")
    assert from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_config_prints_resolved_with_overrides():
    r = _cli("config", "--params", str(REPO / "params.yaml"), "--set", "study.seed=11")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["study"]["seed"] == 11


def test_cli_bad_override_exits_2_naming_key():
    r = _cli("config", "--params", str(REPO / "params.yaml"), "--set", "data.probe_size=-3")
    assert r.returncode == 2
    assert "data.probe_size = -3" in r.stderr


def test_cli_help_lists_commands():
    r = _cli("--help")
    assert r.returncode == 0
    for cmd in ("prepare", "run", "config", "ui"):
        assert cmd in r.stdout
