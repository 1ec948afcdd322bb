"""The whole study through `dvc repro` in a temporary clone: real git, DVC, Prefect (ephemeral, one per
stage), MLflow; then a no-op repro, an lr change that re-runs only what depends on it, and `dvc exp run`."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from test_dvc import _clone, _run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "study": {"name": "e2e"},
    "data": {"datasets": ["fashion_mnist"], "fashion_mnist": {"train_size": 600, "test_size": 200}, "probe_size": 64},
    "train": {"steps": 20, "log_every": 5, "eval_every": 10, "checkpoint_every": 10},
    "sweep": {
        "optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.001}],
        "seeds": [0],
        "batch_sizes": [32],
        "models": [{"name": "mlp", "kwargs": {"widths": [32]}}],
    },
    "probe": {
        "subset_size": 64,
        "every": 10,
        "trace_probes": 4,
        "density_probes": 1,
        "lanczos_steps": 8,
        "max_iter": 30,
    },
    "gan": {"overrides": {"steps": 4, "batch_size": 16, "bn_stat_batches": 1}, "n_per_class": 8, "frechet_steps": 4},
    "predict": {"flatness": {"n_samples": 2, "n_iter": 6}},
}


def _merge(base, over):
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


@pytest.mark.slow  # ~7 min on 2 cores (a Prefect API per stage); the default suite has test_dvc.py's small version
def test_dvc_repro_runs_the_study_then_noop_then_partial_rerun(tmp_path, _mlflow_template):
    clone = tmp_path / "clone"
    clone.mkdir()
    _clone(clone)
    params = _merge(yaml.safe_load((clone / "params.yaml").read_text()), json.loads(json.dumps(TINY)))
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (clone / "mlflow").mkdir(exist_ok=True)
    shutil.copy(_mlflow_template, clone / "mlflow" / "mlflow.db")  # skip the migrations; the default URI

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SGDLAB_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "t"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "t@example.com"
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "clone"]):
        _run(cmd, clone, env)

    first = _run([BIN / "dvc", "repro"], clone, env)
    for stage in ("prepare", "sweep", "probe", "gan", "predict", "report"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout[-3000:]
    res = clone / "results" / "e2e"
    for f in (
        "runs.parquet",
        "probe.parquet",
        "predictions.parquet",
        "scores.parquet",
        "scores.json",
        "gan/synthetic.parquet",
        "gan/samples.png",
        "report/report.html",
        "report/fig1_training_curves.png",
    ):
        assert (res / f).is_file(), f
    scores = json.loads((res / "scores.json").read_text())
    assert {"gan/mae", "val/mae", "lambda_max/kendall_tau", "gate/passed", "gate/fd_ratio"} <= set(scores)
    metrics = _run([BIN / "dvc", "metrics", "show"], clone, env).stdout
    assert "gan/mae" in metrics

    # MLflow: one pipeline... here one run per stage (each stage is its own flow run), all tagged
    sys.path.insert(0, str(REPO / "src"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    phases = {r.data.tags.get("phase") for r in runs}
    assert {"prepare", "sweep", "probe", "gan", "predict", "report"} <= phases
    assert all(r.data.tags.get("git_commit") not in (None, "unknown") for r in runs)
    assert all(r.data.tags.get("dvc_stage") for r in runs)  # DVC_STAGE reached every run
    trained = [r for r in runs if "run_key" in r.data.tags]
    assert len(trained) == 2

    second = _run([BIN / "dvc", "repro"], clone, env)
    assert "Running stage" not in second.stdout, second.stdout

    sgd_result = next((clone / "models" / "e2e").glob("*/result.json"))
    sgd_dirs = {p.parent.name: p.stat().st_mtime_ns for p in (clone / "models" / "e2e").glob("*/result.json")}
    params["sweep"]["optimizers"][1]["lr"] = 0.002  # change adam's lr only
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([BIN / "dvc", "repro"], clone, env)
    assert "Running stage 'sweep'" in third.stdout and "Running stage 'gan'" not in third.stdout
    assert "Running stage 'prepare'" not in third.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in (clone / "models" / "e2e").glob("*/result.json")}
    assert all(after[k] == v for k, v in sgd_dirs.items())  # the unchanged runs were not retrained
    assert len(after) == 3  # ... and exactly one new run was trained
    assert sgd_result.is_file()
    runs = client.search_runs([exp.experiment_id], max_results=500)
    assert len([r for r in runs if "run_key" in r.data.tags]) == 3

    exp_run = _run([BIN / "dvc", "exp", "run", "-S", "predict.flatness.n_samples=3"], clone, env)
    assert "Running stage 'predict'" in exp_run.stdout
    runs = client.search_runs([exp.experiment_id], max_results=500)
    assert any(r.data.tags.get("dvc_exp_name") for r in runs)  # the experiment's runs land in the main store
