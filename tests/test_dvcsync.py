"""sgdlab.dvcsync: a phase run outside `dvc repro` is recorded in dvc.lock, so `dvc repro` is a no-op.

Real git and real DVC in a temporary copy of the repo; the real CLI (`sgdlab prepare`) makes the outputs.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_dvc import _clone as copy_checkout

from sgdlab.dvcsync import DvcError, StageSync, is_dvc_repo, record_stages, status

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(mlflow_uri: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SGDLAB_", "DVC_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "t"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "t@example.com"
    return env


def _run(args, cwd, env):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def _clone(dst: Path, env: dict, git: bool = True) -> Path:
    """What git would check out (tracked + untracked-not-ignored files), as a new git repo, with the
    two fast datasets only."""
    copy_checkout(dst)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["data"]["datasets"] = ["xor", "separable"]
    params["train"]["dataset"] = "xor"  # a study trains on a dataset that prepare builds
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        _run(["git", "init", "-q", "-b", "main"], dst, env)
        _run(["git", "add", "-A"], dst, env)
        _run(["git", "commit", "-q", "-m", "clone"], dst, env)
    return dst


def _stage_paths(clone: Path, stage: str) -> tuple[list[str], list[str]]:
    """(deps, outs + metrics + plots) of a dvc.yaml stage, ${...} resolved from params.yaml."""
    params = yaml.safe_load((clone / "params.yaml").read_text())

    def resolve(path: str) -> str:
        def value(m):
            v = params
            for part in m.group(1).strip().split("."):
                v = v[part]
            return str(v)

        return re.sub(r"\$\{([^}]*)\}", value, path)

    def paths(entries):
        return [resolve(e if isinstance(e, str) else next(iter(e))) for e in entries or []]

    st = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"][stage]
    return paths(st.get("deps")), [p for k in ("outs", "metrics", "plots") for p in paths(st.get(k))]


def _stand_in(clone: Path, path: str) -> None:
    """A placeholder output: a file if the name has a suffix, else a folder holding one file."""
    p = clone / path
    if p.exists():
        return
    if p.suffix:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}" if p.suffix == ".json" else "x")
    else:
        p.mkdir(parents=True)
        (p / "part").write_text("x")


@pytest.fixture(autouse=True)
def _no_dvc_stage(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)  # as if not run from inside `dvc repro`


@pytest.mark.slow  # ~50 s; the default suite has the whole `sgdlab run` -> dvc status case in test_dvc.py
def test_prepare_run_by_the_cli_is_recorded_and_dvc_repro_is_a_noop(tmp_path, mlflow_store):
    env = _env(mlflow_store)
    clone = _clone(tmp_path / "clone", env)
    _run([BIN / "sgdlab", "prepare"], clone, env)
    assert (clone / "data" / "processed" / "xor" / "train.parquet").is_file()
    assert not (clone / "dvc.lock").exists()  # the bug: DVC does not know what the phase produced

    sync = record_stages(clone, ["prepare"])
    assert isinstance(sync, StageSync)
    assert sync.ok and sync.recorded == ("prepare",) and not sync.skipped, sync
    assert sync.command[1:] == ("--wait-for-lock", "commit", "--force", "--no-relink", "dvc.yaml:prepare")
    print(f"record_stages(prepare): {sync.seconds:.2f} s")

    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    stage = lock["stages"]["prepare"]
    deps, outs = _stage_paths(clone, "prepare")
    assert [o["path"] for o in stage["outs"]] == outs == ["data/processed"]
    assert stage["outs"][0]["md5"].endswith(".dir")
    assert {d["path"] for d in stage["deps"]} == set(deps)
    assert stage["params"]["params.yaml"]["data"]["datasets"] == ["xor", "separable"]

    md5 = stage["outs"][0]["md5"]  # the outs are in the DVC cache, so `dvc push` versions them
    assert (clone / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()

    assert status(clone, ["prepare"]) == {"prepare": True}  # `dvc status --json dvc.yaml:prepare`: {}
    repro = _run([BIN / "dvc", "repro", "prepare"], clone, env)
    assert "Running stage" not in repro.stdout and "didn't change" in repro.stdout, repro.stdout


def test_a_stage_with_a_missing_out_is_skipped_naming_the_path(tmp_path):
    clone = _clone(tmp_path / "clone", _env(), git=False)
    deps, outs = _stage_paths(clone, "sweep")
    for p in deps + outs[1:]:  # everything there but the first out, as if the phase wrote only part
        _stand_in(clone, p)

    sync = record_stages(clone, ["sweep"])
    assert sync.recorded == () and sync.ok and sync.command == ()  # DVC was not even started
    assert "missing" in sync.skipped["sweep"] and outs[0] in sync.skipped["sweep"], sync.skipped
    assert all(p not in sync.skipped["sweep"] for p in outs[1:])
    assert "{" not in sync.skipped["sweep"]  # ${...} resolved from params.yaml
    assert not (clone / "dvc.lock").exists()


def test_an_unknown_stage_name_raises_naming_it(tmp_path):
    clone = _clone(tmp_path / "clone", _env(), git=False)
    with pytest.raises(ValueError, match="no_such_stage"):
        record_stages(clone, ["prepare", "no_such_stage"])
    with pytest.raises(ValueError, match="no_such_stage"):
        status(clone, ["no_such_stage"])


def test_a_directory_that_is_not_a_dvc_repo_is_skipped(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a dvc.yaml but no .dvc/
    assert not is_dvc_repo(tmp_path)
    sync = record_stages(tmp_path, ["prepare"])
    assert sync.recorded == () and sync.ok
    assert "not a DVC repo" in sync.skipped["prepare"]
    assert not (tmp_path / "dvc.lock").exists()
    with pytest.raises(DvcError):
        status(tmp_path, ["prepare"])


def test_inside_a_dvc_stage_command_nothing_is_run(tmp_path, monkeypatch):
    clone = _clone(tmp_path / "clone", _env(), git=False)
    monkeypatch.setenv("DVC_STAGE", "prepare")  # `dvc repro` holds the repo lock and records it itself
    sync = record_stages(clone, ["prepare"])
    assert sync.recorded == () and sync.command == ()
    assert "inside DVC stage" in sync.skipped["prepare"]


def test_a_dvc_failure_is_reported_not_raised_and_the_other_stages_are_recorded(tmp_path):
    env = _env()
    clone = _clone(tmp_path / "clone", env)
    # Stand-ins for everything prepare and probe read and write; one of probe's outs is tracked by
    # git, which DVC refuses: the batch commit fails and each stage is retried alone.
    for stage in ("prepare", "probe"):
        deps, outs = _stage_paths(clone, stage)
        for p in deps + outs:
            _stand_in(clone, p)
    tracked = next(p for p in outs if (clone / p).is_file())
    _run(["git", "add", "-f", tracked], clone, env)

    sync = record_stages(clone, ["prepare", "probe"])
    assert not sync.ok and sync.recorded == ("prepare",) and not sync.skipped, sync
    assert "already tracked by SCM" in sync.failed["probe"] and tracked in sync.stderr
    assert "prepare" in yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    assert status(clone, ["prepare", "probe"]) == {"prepare": True, "probe": False}
