"""Hessian probing wired into sweeps: along training (on_step) and on final checkpoints (probe flow)."""

import json

from sgdlab import results, tracking
from sgdlab.config import from_dict


def test_probe_during_training_and_on_checkpoints(prefect_harness, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    from flows.phases import run_phase

    cfg = from_dict(
        {
            "study": {"name": "probe-test"},
            "data": {
                "root": str(tmp_path / "data"),
                "datasets": ["xor"],
                "xor": {"n_train": 200, "n_test": 100},
                "probe_size": 64,
            },
            "train": {"dataset": "xor", "steps": 40, "log_every": 10, "eval_every": 20, "checkpoint_every": 20},
            "sweep": {
                "optimizers": [{"name": "sgd", "lr": 0.2}, {"name": "adam", "lr": 0.003}],
                "seeds": [0],
                "batch_sizes": [32],
                "models": [{"name": "mlp", "kwargs": {"widths": [8], "activation": "tanh"}}],
            },
            "probe": {"subset_size": 64, "every": 20, "trace_probes": 4, "density_probes": 1, "lanczos_steps": 10},
        }
    )
    swept = run_phase(cfg, "sweep")
    sgd_row = next(r for r in swept["rows"] if r["optimizer"] == "sgd")
    history = dict(tracking.iter_metric_history(sgd_row["mlflow_run_id"], "hessian/lambda_max"))
    assert sorted(history) == [20, 40] and all(v > 0 for v in history.values())
    thr = dict(tracking.iter_metric_history(sgd_row["mlflow_run_id"], "hessian/threshold"))
    assert abs(thr[20] - 2 / 0.2) < 1e-9  # 2/eta for SGD

    out = run_phase(cfg, "probe")
    assert out["probed"] == 2
    table = {r["optimizer"]: r for r in results.load_runs(tmp_path / "results" / "probe-test")}
    assert table["sgd"]["hessian/lambda_max"] > 0 and table["sgd"]["hessian/trace_stderr"] >= 0
    assert abs(table["sgd"]["hessian/threshold"] - 10.0) < 1e-9
    assert table["adam"]["hessian/precond_lambda_max"] > 0
    run = tracking.client().get_run(table["sgd"]["mlflow_run_id"])
    assert run.data.metrics["final/hessian/lambda_max"] == table["sgd"]["hessian/lambda_max"]
    dens = json.loads((tmp_path / "results" / "probe-test" / "densities.json").read_text())
    assert set(dens) == {table["sgd"]["run_key"], table["adam"]["run_key"]}

    again = run_phase(cfg, "probe")  # same checkpoints, same settings: cached, same numbers
    assert again["metrics"] == out["metrics"]
