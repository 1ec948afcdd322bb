"""The optimizer benchmark end to end at toy size: `sgdlab bench-optimizers --file` through the real Prefect
flows, sweeps and MLflow store (2 families, 1 workload, 1 study x 2 trials, 2 seeds with Hessian probes), then
the outputs: the report, the figure, the scores on the MLflow parent run, every trial a child run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[1]

BENCH = """
title: toy benchmark
protocol: {search: quasirandom, studies: 1, trials: 2, seeds: 2, seed: 0, curvature: true}
optimizers:
  sgd: {space: {lr: {low: 0.05, high: 0.5, log: true}}}
  adam: {space: {lr: {low: 0.003, high: 0.03, log: true}}}
workloads:
  xor:
    title: XOR, MLP 2-16-2
    target: {metric: val/acc, value: 0.9, note: "a toy target for the test"}
    sections:
      data: {datasets: [xor], xor: {n_train: 200, n_test: 100}, probe_size: 32}
      train: {dataset: xor, steps: 60, log_every: 20, eval_every: 20, checkpoint_every: 0}
      sweep: {batch_sizes: [32], models: [{name: mlp, kwargs: {widths: [16]}}]}
      probe: {subset_size: 32, every: 30, lanczos_steps: 8, max_iter: 10}
scales: {quick: {}, full: {}}
"""


def test_the_benchmark_runs_end_to_end_and_scores_land_in_mlflow(tmp_path, mlflow_store):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "bench.yaml").write_text(BENCH)
    env = {**os.environ, "SGDLAB_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow_store}
    cmd = [sys.executable, "-m", "sgdlab.cli", "bench-optimizers", "--file", str(tmp_path / "bench.yaml")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = tmp_path / "results" / "optbench"
    summary = json.loads((out / "scores.json").read_text())
    assert set(summary["steps"]["score"]) == {"sgd", "adam"}
    for o, score in summary["steps"]["score"].items():
        assert 0.0 <= score <= 1.0, (o, score)
    ws = summary["workloads"]["xor"]
    assert ws["budget_steps"] == 60 and ws["trials"] == {"sgd": 2, "adam": 2}
    assert all(len(ws["seeds"][o]["seeds"]) == 2 for o in ("sgd", "adam"))
    assert "## xor: XOR, MLP 2-16-2" in (out / "report.md").read_text()
    assert (out / "profile.png").stat().st_size > 10_000
    assert (out / "scores.parquet").is_file()
    from sgdlab import tracking

    (parent,) = tracking.find_runs("optbench", "tags.`optbench.scale` = 'quick'")
    assert {f"score/{o}" for o in ("sgd", "adam")} <= set(parent.data.metrics)
    children = [r for r in tracking.find_runs("optbench", "tags.phase = 'sweep'") if "run_key" in r.data.tags]
    assert len({r.data.tags["run_key"] for r in children}) == 2 * 2 + 2 * 2  # trials + seed runs
