"""Every per-run quantity on the run's own training examples: train error, gap, probe subsets."""

import json

import numpy as np
import pytest
import torch

from sgdlab.config import from_dict
from sgdlab.phases import run_local
from sgdlab.study import Study

CFG = {
    "study": {"name": "own-data", "device": "cpu"},
    "data": {"datasets": ["xor"], "xor": {"n_train": 200, "n_test": 400}, "probe_size": 64},
    "train": {"dataset": "xor", "steps": 300, "log_every": 50, "eval_every": 0, "checkpoint_every": 0},
    "sweep": {
        "optimizers": [{"name": "adam", "lr": 0.01}],
        "seeds": [0],
        "batch_sizes": [9],
        "train_fractions": [0.1],
        "models": [{"name": "mlp", "kwargs": {"widths": [64]}}],
    },
    "probe": {"subset_size": 16, "every": 0, "trace_probes": 2, "density_probes": 0},
}


def test_probe_subsets_are_drawn_from_the_runs_own_examples(tmp_path, monkeypatch):
    from sgdlab.data import probe_indices, run_indices

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    study = Study(from_dict(CFG))
    splits = study.load(study.data_spec(prepare=True))
    assert torch.equal(probe_indices(splits, None), splits.probe_idx)  # full-data runs: unchanged
    own = run_indices(splits, 0.1, seed=3)
    assert len(own) == 18
    pick = probe_indices(splits, own)
    assert set(pick.tolist()) <= set(own.tolist()) and len(pick) == 18  # capped at the run's 18 examples
    assert torch.equal(pick, probe_indices(splits, own))  # fixed


def test_train_error_and_gap_of_a_subset_run_are_on_its_own_data(tmp_path, mlflow_store, monkeypatch):
    from sgdlab.generalization import classification_error
    from sgdlab.models import build_model
    from sgdlab.prediction import predict_population
    from sgdlab.train import load_checkpoint

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    cfg = from_dict(CFG)
    row = run_local(cfg, "sweep")["rows"][0]
    study = Study(cfg)
    run = study.finished_runs()[0]
    stored = json.loads((run.checkpoint.parent / "result.json").read_text())
    assert row["n_train"] == 18 and len(stored["train_indices"]) == 18  # the run's examples, recorded
    splits = study.load(study.data_spec())
    own = torch.tensor(stored["train_indices"])
    model = build_model("mlp", splits.input_shape, splits.num_outputs, seed=0, widths=[64])
    model.load_state_dict(load_checkpoint(run.checkpoint)["model"])
    own_err = classification_error(model, splits.x_train[own], splits.y_train[own])
    full_err = classification_error(model, splits.x_train, splits.y_train)
    assert full_err - own_err > 0.1  # memorised its 18 examples, not the other 162

    x_syn, y_syn = splits.x_test[:20], splits.y_test[:20]
    pred = predict_population(
        [(run.spec, run.checkpoint, run.row)],
        splits,
        x_syn,
        y_syn,
        flatness={"n_samples": 2, "n_iter": 3},
        hessian={"subset_size": 16, "trace_probes": 2},
    )[0]
    assert pred["true/train_err"] == pytest.approx(own_err)
    assert pred["true/train_err"] == pytest.approx(1 - row["train/acc"])  # the loop's own final evaluation
    assert pred["true/gap"] == pytest.approx(pred["true/test_err"] - own_err)
    assert np.isfinite(pred["measure/lambda_max"]) and pred["n_train"] == 18


def test_adam_kind_runs_compare_preconditioned_sharpness_with_their_threshold(tmp_path, mlflow_store, monkeypatch):
    """rmsprop_bc (Adam with beta1 = 0) has the preconditioned threshold 2/lr: its final-checkpoint probe must
    measure the preconditioned sharpness too, never divide raw lambda_max by that threshold."""
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    cfg = from_dict(
        {
            **CFG,
            "train": {**CFG["train"], "steps": 20},
            "sweep": {
                **CFG["sweep"],
                "optimizers": [{"name": "rmsprop_bc", "lr": 0.001}],
                "train_fractions": [1.0],
                "batch_sizes": [32],
            },
        }
    )
    run_local(cfg, "sweep")
    out = run_local(cfg, "probe")
    m = next(iter(out["metrics"].values()))
    assert m["hessian/threshold"] == pytest.approx(2 / 0.001) and m["hessian/threshold_preconditioned"] == 1.0
    assert m["hessian/precond_lambda_max"] > 0
