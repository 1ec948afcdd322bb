"""Label noise on a copy of the training labels (``sweep.label_noise``): the corruption, its run keys, and
runs that train, probe and score on their own noisy labels."""

import json
from dataclasses import replace

import pytest
import torch

from sgdlab.config import ConfigError, from_dict
from sgdlab.data import noisy_labels
from sgdlab.data.spec import DataSpec
from sgdlab.phases import run_local
from sgdlab.runspec import RunSpec, run_key
from sgdlab.study import Study


def test_noisy_labels_flip_the_stated_fraction_to_other_classes():
    y = torch.arange(200_000) % 10
    out = noisy_labels(y, 0.3, 10, seed=5)
    flipped = out != y
    assert abs(float(flipped.float().mean()) - 0.3) < 0.005  # each entry flipped with probability 0.3
    assert torch.equal(y, torch.arange(200_000) % 10)  # the input is untouched
    assert torch.equal(out, noisy_labels(y, 0.3, 10, seed=5)) and not torch.equal(out, noisy_labels(y, 0.3, 10, 6))
    # a flipped label is uniform over the 9 *other* classes
    new = out[flipped & (y == 0)]
    counts = torch.bincount(new, minlength=10).float()
    assert counts[0] == 0 and (counts[1:] / counts[1:].sum() - 1 / 9).abs().max() < 0.01
    assert noisy_labels(y, 0.0, 10, seed=5) is y
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        noisy_labels(y, 1.0, 10, seed=0)
    with pytest.raises(ValueError, match="class labels"):
        noisy_labels(torch.zeros(4), 0.1, 10, seed=0)


def test_clean_runs_keep_their_keys_and_noisy_runs_get_new_ones():
    import hashlib

    from sgdlab.runspec import _jsonable

    data = DataSpec("fashion_mnist", "abc", 0.1, 0, 1000)
    spec = RunSpec(data, "mlp", {"widths": [8]}, "sgd", {"lr": 0.1}, 32, 10, 0, {"log_every": 5})
    d = spec.to_dict()
    d.pop("base_key")
    del d["data"]["label_noise"]  # the spec as it was before the field existed
    blob = json.dumps(_jsonable(d), sort_keys=True, separators=(",", ":"))
    assert run_key(spec) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    noisy = replace(spec, data=replace(data, label_noise=0.2))
    assert run_key(noisy) != run_key(spec) and "noise=0.2" in noisy.label


CFG = {
    "study": {"name": "noisy", "device": "cpu"},
    "data": {"datasets": ["xor"], "xor": {"n_train": 200, "n_test": 400}, "probe_size": 64},
    "train": {"dataset": "xor", "steps": 200, "log_every": 50, "eval_every": 0, "checkpoint_every": 0},
    "sweep": {
        "optimizers": [{"name": "adam", "lr": 0.01}],
        "seeds": [0],
        "batch_sizes": [32],
        "label_noise": [0.0, 0.4],
        "models": [{"name": "mlp", "kwargs": {"widths": [256]}}],
    },
    "probe": {"subset_size": 16, "every": 0, "trace_probes": 2, "density_probes": 0},
}


def test_a_noisy_run_trains_and_is_scored_on_its_own_noisy_labels(tmp_path, mlflow_store, monkeypatch):
    from sgdlab.data import run_labels
    from sgdlab.generalization import classification_error
    from sgdlab.models import build_model
    from sgdlab.prediction import predict_population
    from sgdlab.train import load_checkpoint

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    cfg = from_dict(CFG)
    rows = {r["label_noise"]: r for r in run_local(cfg, "sweep")["rows"]}
    assert set(rows) == {0.0, 0.4} and all(r["status"] == "finished" for r in rows.values())
    study = Study(cfg)
    splits = study.load(study.data_spec())
    noisy_y = run_labels(splits, 0.4)
    assert 0.3 < float((noisy_y != splits.y_train).float().mean()) < 0.5
    runs = {r.spec.data.label_noise: r for r in study.finished_runs()}
    model = build_model("mlp", splits.input_shape, splits.num_outputs, seed=0, widths=[256])
    model.load_state_dict(load_checkpoint(runs[0.4].checkpoint)["model"])
    err_noisy = classification_error(model, splits.x_train, noisy_y)
    err_clean = classification_error(model, splits.x_train, splits.y_train)
    # the loop's final train accuracy is on the labels it trained on; 256 units memorise the noisy copy,
    # so they disagree with the clean labels wherever the copy was flipped
    assert 1 - rows[0.4]["train/acc"] == pytest.approx(err_noisy)
    assert err_clean > err_noisy + 0.2

    run = runs[0.4]
    pred = predict_population(
        [(run.spec, run.checkpoint, run.row)],
        splits,
        splits.x_test[:20],
        splits.y_test[:20],
        flatness={"n_samples": 2, "n_iter": 3},
        hessian={"subset_size": 16, "trace_probes": 2},
    )[0]
    assert pred["true/train_err"] == pytest.approx(err_noisy) and pred["label_noise"] == 0.4


def test_bad_label_noise_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="label_noise"):
        from_dict({**CFG, "sweep": {**CFG["sweep"], "label_noise": [1.2]}})
