"""The pipeline from the command line: killed mid-sweep and re-run, and bad input at the pipeline level."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import spawn

pytestmark = pytest.mark.usefixtures("prefect_api")  # CLI processes on the session's Prefect server

REPO = Path(__file__).resolve().parents[1]
SGDLAB = [sys.executable, "-m", "sgdlab.cli"]


def _project(tmp_path, mlflow_store, **over):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["study"]["name"] = "cli"
    params["data"].update({"datasets": ["xor"], "xor": {"n_train": 400, "n_test": 100}, "probe_size": 32})
    params["train"].update({"dataset": "xor", "steps": 400, "log_every": 100, "eval_every": 0, "checkpoint_every": 100})
    params["sweep"].update(
        {
            "optimizers": [{"name": "sgd", "lr": [0.05, 0.1, 0.2, 0.4]}],
            "seeds": [0],
            "models": [{"name": "mlp", "kwargs": {"widths": [32, 32]}}],
            "batch_sizes": [32],
        }
    )
    # one run at a time (no population: the four lrs would train as one and finish together): the kill lands
    # between runs
    params["orchestration"].update({"max_workers": 1, "population": "off"})
    for k, v in over.items():
        params[k].update(v)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "SGDLAB_HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / ".prefect"),
        "MLFLOW_TRACKING_URI": mlflow_store,
    }
    return env


def _results(tmp_path):
    return {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "models" / "cli").glob("*/result.json")}


def test_killed_mid_sweep_then_rerun_finishes_without_retraining(tmp_path, mlflow_store):
    env = _project(tmp_path, mlflow_store)
    cmd = [*SGDLAB, "run", "--phase", "prepare", "--phase", "sweep"]
    proc = spawn(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(_results(tmp_path)) < 1:  # kill as soon as the first run has finished
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _results(tmp_path)
    assert 1 <= len(before) < 4

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _results(tmp_path)
    assert len(after) == 4
    assert all(after[k] == v for k, v in before.items())  # finished runs were not retrained


def test_killed_mid_population_then_rerun_resumes_every_member(tmp_path, mlflow_store):
    """The four lrs train as one population (orchestration.population: auto); SIGKILLed once every member has
    a checkpoint, the re-run resumes each member from its own checkpoint and finishes it in a population."""
    from sgdlab.results import read_result
    from sgdlab.train import load_checkpoint

    env = _project(
        tmp_path, mlflow_store,
        train={"steps": 3000, "log_every": 500, "checkpoint_every": 500},
        orchestration={"population": "auto"}, probe={"every": 0},
    )  # fmt: skip
    cmd = [*SGDLAB, "run", "--phase", "prepare", "--phase", "sweep"]
    proc = spawn(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = lambda: sorted((tmp_path / "models" / "cli").glob("*/checkpoint.pt"))  # noqa: E731
    deadline = time.monotonic() + 300
    while len(ckpts()) < 4:  # kill once every member has written a checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _results(tmp_path) == {}, "a member finished before the kill: no population left to resume"
    at_kill = {p.parent.name: load_checkpoint(p)["step"] for p in ckpts()}
    assert all(500 <= s < 3000 for s in at_kill.values()), at_kill

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for key, step in at_kill.items():
        row = read_result(tmp_path / "models" / "cli" / key)
        assert row["status"] == "finished" and row["steps_done"] == 3000, row
        assert row["resumed_from"] == step and row["population"] == 4, (key, row["resumed_from"], step)


def test_phase_with_missing_inputs_says_what_to_run(tmp_path, mlflow_store):
    env = _project(tmp_path, mlflow_store)
    r = subprocess.run([*SGDLAB, "probe"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "runs.parquet: no results table; run the sweep first" in r.stderr
    r = subprocess.run([*SGDLAB, "predict"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "no synthetic set; run the gan phase first" in r.stderr


def test_unknown_profile_and_phase_are_refused(tmp_path, mlflow_store):
    env = _project(tmp_path, mlflow_store)
    r = subprocess.run(
        [*SGDLAB, "run", "--profile", "huge"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "profile = 'huge': no such profile; available: full, population, quick" in r.stderr
    r = subprocess.run(
        [*SGDLAB, "run", "--phase", "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1 and "unknown phase(s) ['train']; phases are: prepare, sweep" in r.stderr
