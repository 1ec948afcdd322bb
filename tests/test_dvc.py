"""`dvc repro` in a temporary clone: real git, real DVC, the real CLI as the stage command."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import needs_fashion

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args, cwd, env, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def _clone(dst: Path) -> None:
    """Copy what git would check out (tracked + untracked-not-ignored files) into a new git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def test_dvc_repro_prepare_runs_then_is_a_noop_and_push_pull_round_trip(tmp_path, mlflow_store, prefect_api):
    clone = tmp_path / "clone"
    clone.mkdir()
    _clone(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"]["datasets"] = ["xor", "separable"]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SGDLAB_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = mlflow_store
    env["PREFECT_API_URL"] = prefect_api  # the session's server (the make-run case below keeps the ephemeral API)
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


def _tiny_study(params: dict) -> dict:
    """The whole study at toy size: 400 Fashion-MNIST images, 2 runs of 30 steps, a 3-step GAN."""
    params["data"].update(
        {
            "datasets": ["fashion_mnist"],
            "probe_size": 32,
            "fashion_mnist": {**params["data"]["fashion_mnist"], "train_size": 400, "test_size": 100},
        }
    )
    params["train"].update(
        {"dataset": "fashion_mnist", "steps": 30, "log_every": 10, "eval_every": 0, "checkpoint_every": 0}
    )
    params["sweep"].update(
        {
            "optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.01}],
            "seeds": [0],
            "batch_sizes": [32],
            "models": [{"name": "mlp", "kwargs": {"widths": [8]}}],
        }
    )
    params["probe"].update({"subset_size": 32, "every": 0, "trace_probes": 2, "density_probes": 1, "lanczos_steps": 5})
    params["gan"].update(
        {"overrides": {"steps": 3, "batch_size": 8, "bn_stat_batches": 1}, "n_per_class": 8, "frechet_steps": 0}
    )
    params["predict"]["flatness"] = {"target": 0.1, "n_samples": 2, "n_iter": 3}
    return params


@needs_fashion
def test_make_run_leaves_dvc_knowing_everything_then_a_profile_edit_is_seen(tmp_path, mlflow_store):
    """`sgdlab run` on params.yaml as is, then `dvc status` is clean and `dvc repro` re-runs nothing; editing
    `profile:` makes DVC see the stages it affects."""
    clone = tmp_path / "clone"
    clone.mkdir()
    _clone(clone)
    params = _tiny_study(yaml.safe_load((clone / "params.yaml").read_text()))
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SGDLAB_"))}
    env.update(
        PATH=f"{BIN}:{env['PATH']}",
        MLFLOW_TRACKING_URI=mlflow_store,
        GIT_AUTHOR_NAME="t",
        GIT_COMMITTER_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    _run(["git", "init", "-q", "-b", "main"], clone, env)
    _run(["git", "add", "-A"], clone, env)
    _run(["git", "commit", "-q", "-m", "clone"], clone, env)

    run = _run([BIN / "sgdlab", "run"], clone, env)
    assert "dvc.lock: recorded prepare, sweep, probe, gan, predict, report" in run.stdout, run.stdout[-3000:]
    status = _run([BIN / "dvc", "status"], clone, env)
    assert "up to date" in status.stdout, status.stdout
    scores = json.loads((clone / "results" / params["study"]["name"] / "scores.json").read_text())
    # a 3-step GAN with frechet_steps: 0: no FD ratio, and never a pass (fail on calibration, or unknown)
    assert math.isnan(scores["gate/fd_ratio"]) and scores["gate/passed"] != 1.0
    again = _run([BIN / "dvc", "repro"], clone, env)
    assert "Running stage" not in again.stdout, again.stdout

    params["profile"] = "full"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run([BIN / "dvc", "status"], clone, env).stdout
    for stage in ("prepare", "sweep", "probe", "gan", "predict", "report"):
        assert f"{stage}:" in changed, changed
