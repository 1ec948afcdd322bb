"""`dvc repro` in a temporary clone: real git, real DVC, the real CLI as the stage command."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args, cwd, env, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def _clone(dst: Path) -> None:
    """Copy what git would check out (tracked + untracked-not-ignored files) into a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def test_dvc_repro_prepare_runs_then_is_a_noop_and_push_pull_round_trip(tmp_path, mlflow_store):
    clone = tmp_path / "clone"
    clone.mkdir()
    _clone(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"]["datasets"] = ["xor", "separable"]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SGDLAB_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = mlflow_store
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "t"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "t@example.com"
    _run(["git", "init", "-q", "-b", "main"], clone, env)
    _run(["git", "add", "-A"], clone, env)
    _run(["git", "commit", "-q", "-m", "clone"], clone, env)

    first = _run([BIN / "dvc", "repro", "prepare"], clone, env)
    assert "Running stage 'prepare'" in first.stdout, first.stdout
    out = clone / "data" / "processed"
    for name in ("xor", "separable"):
        assert (out / name / "train.parquet").is_file() and (out / name / "test.parquet").is_file()
    assert (clone / "dvc.lock").is_file()
    assert "/processed" in (clone / "data" / ".gitignore").read_text()  # DVC keeps outs out of git

    second = _run([BIN / "dvc", "repro", "prepare"], clone, env)
    assert "Running stage" not in second.stdout and "didn't change" in second.stdout, second.stdout

    # Changing a param the stage declares re-runs it.
    _run([BIN / "dvc", "push", "prepare"], clone, env)
    before = (out / "xor" / "train.parquet").read_bytes()
    shutil.rmtree(out)
    _run([BIN / "dvc", "pull", "prepare"], clone, env)
    assert (out / "xor" / "train.parquet").read_bytes() == before
    assert (clone / ".dvc-remote").is_dir()  # the default local remote, git-ignored

    params["data"]["xor"]["seed"] = 1
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([BIN / "dvc", "repro", "prepare"], clone, env)
    assert "Running stage 'prepare'" in third.stdout
    assert (out / "xor" / "train.parquet").read_bytes() != before
