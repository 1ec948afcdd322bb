"""The gan and predict phases: no test data reaches the GAN, refusals of mismatched synthetic sets,
predictor scoring on constructed populations."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sgdlab.data.parquet import RawDataset, write_dataset, write_split
from sgdlab.prediction import SyntheticSetError, load_synthetic, score_predictors


def _poisoned_dataset(root, n_train=200, n_test=20):
    """28x28 float images whose TEST split is all NaN: if any GAN code touched it, NaN would spread."""
    rng = np.random.default_rng(0)
    ds = RawDataset(
        "fashion_mnist",
        "classification",
        10,
        rng.random((n_train, 1, 28, 28), dtype=np.float32),
        np.arange(n_train) % 10,
        np.full((n_test, 1, 28, 28), np.nan, dtype=np.float32),
        np.arange(n_test) % 10,
        source="unit",
    )
    write_dataset(ds, root / "processed" / "fashion_mnist", "0")


def test_gan_phase_reads_only_the_training_part(tmp_path, mlflow_store, monkeypatch):
    from sgdlab.config import from_dict
    from sgdlab.phases import run_local

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    _poisoned_dataset(tmp_path / "data")
    cfg = from_dict(
        {
            "study": {"name": "gan-test", "device": "cpu"},
            "data": {"val_fraction": 0.25, "probe_size": 10},
            "gan": {
                "profile": "cpu",
                "overrides": {"steps": 3, "batch_size": 8, "bn_stat_batches": 1},
                "n_per_class": 4,
                "seed": 0,
                "frechet_steps": 3,
            },
        }
    )
    out = run_local(cfg, "gan")
    x, y, meta = load_synthetic(out["synthetic"], meta_hash := _hash(tmp_path / "data"))
    assert torch.isfinite(x).all() and x.shape == (40, 1, 28, 28) and sorted(set(y.tolist())) == list(range(10))
    assert np.isfinite(out["frechet_synthetic_vs_val"]) and np.isfinite(out["frechet_train_vs_val"])
    assert np.isfinite(out["frechet_synthetic_vs_train"])
    assert np.isnan(out["frechet_synthetic_vs_test"])  # the (poisoned) test split is only in this diagnostic
    assert meta["data_hash"] == meta_hash and meta["generator_hash"] == out["generator_hash"]
    again = run_local(cfg, "gan")  # same config and data: reused
    assert again["trained"] is False and again["generator_hash"] == out["generator_hash"]
    assert out["trained"] is True and again["reused_from"] is None  # its own generator.pt

    # another study on the same training set and GAN config: the project's shared generator, no training
    other = cfg.model_copy(update={"study": cfg.study.model_copy(update={"name": "gan-test-2"})})
    second = run_local(other, "gan")
    assert second["trained"] is False and second["generator_hash"] == out["generator_hash"]
    assert "_shared/gan/" in second["reused_from"]
    assert "gan-test-2" in second["checkpoint"] and Path(second["checkpoint"]).is_file()  # its own DVC output
    # without the shared cache (another machine): the generator another study has as its DVC output
    import shutil

    shutil.rmtree(tmp_path / "models" / "_shared")
    fourth = run_local(cfg.model_copy(update={"study": cfg.study.model_copy(update={"name": "gan-test-4"})}), "gan")
    assert fourth["trained"] is False and fourth["generator_hash"] == out["generator_hash"]
    assert fourth["reused_from"].endswith("gan/generator.pt") and "_shared" not in fourth["reused_from"]
    # a different training part (validation split changed) never reuses it
    split = from_dict({**cfg.model_dump(mode="json"), "study": {"name": "gan-test-3", "device": "cpu"},
                       "data": {"val_fraction": 0.2, "probe_size": 10}})  # fmt: skip
    third = run_local(split, "gan")
    assert third["trained"] is True and third["reused_from"] is None


def _hash(root):
    from sgdlab.data import read_meta

    return read_meta(root / "processed" / "fashion_mnist" / "train.parquet")["data_hash"]


def test_synthetic_set_from_another_data_hash_is_refused(tmp_path):
    p = tmp_path / "synthetic.parquet"
    write_split(p, np.zeros((4, 1, 2, 2), np.float32), np.arange(4), {"data_hash": "a" * 64, "generator_hash": "g"})
    with pytest.raises(SyntheticSetError, match=r"synthetic\.parquet: made from training data aaaaaaaaaaaa"):
        load_synthetic(p, "b" * 64)
    x, y, _ = load_synthetic(p, "b" * 64, force=True)
    assert x.shape == (4, 1, 2, 2)


def test_missing_or_corrupt_synthetic_set_names_the_file(tmp_path):
    with pytest.raises(SyntheticSetError, match=r"nope\.parquet: missing.*gan"):
        load_synthetic(tmp_path / "nope.parquet", "x")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(SyntheticSetError, match=r"bad\.parquet"):
        load_synthetic(bad, "x")


def test_classifier_that_does_not_fit_the_gan_is_refused():
    from sgdlab.prediction import _check_compatible

    x_syn = torch.zeros(4, 1, 28, 28)
    wrong_classes = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))
    with pytest.raises(SyntheticSetError, match="has 3 outputs, the GAN's synthetic set 10 classes"):
        _check_compatible(wrong_classes, x_syn, 10, "mlp seed=0")
    wrong_shape = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    with pytest.raises(SyntheticSetError, match=r"cannot take synthetic inputs of shape \(1, 28, 28\)"):
        _check_compatible(wrong_shape, x_syn, 10, "conv1d seed=0")


def _population(n=12):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        test_err = 0.1 + 0.02 * i
        rows.append(
            {
                "run_key": f"k{i}",
                "optimizer": ["sgd", "adam"][i % 2],
                "lr": [0.1, 0.01, 0.001][i % 3],
                "batch_size": 128,
                "model": "mlp",
                "steps": 100,
                "train_fraction": 1.0,
                "true/test_err": test_err,
                "true/train_err": 0.05,
                "true/gap": test_err - 0.05,
                "pred/gan": test_err,
                "pred/val": test_err + 0.01,
                "pred/train_err": 0.05,
                "measure/lambda_max": -test_err,  # perfectly anti-correlated
                "measure/trace": float(rng.random()),
            }
        )
    return rows


def test_scores_on_a_constructed_population():
    scores = {s["predictor"]: s for s in score_predictors(_population())}
    assert scores["gan"]["mae"] == pytest.approx(0.0) and scores["gan"]["kendall_tau"] == pytest.approx(1.0)
    assert scores["val"]["mae"] == pytest.approx(0.01) and scores["val"]["kendall_tau"] == pytest.approx(1.0)
    assert scores["gan"]["pgdl"] == pytest.approx(100.0)
    assert scores["lambda_max"]["kendall_tau"] == pytest.approx(-1.0)
    assert scores["lambda_max"]["mae"] is None and scores["lambda_max"]["kind"] == "measure"
    assert abs(scores["trace"]["kendall_tau"]) < 0.6
    with pytest.raises(ValueError, match="at least 2 classifiers"):
        score_predictors(_population(1))


def test_measures_are_scored_against_the_gap_and_predictors_against_test_error():
    # Test error falls with lr while the gap grows. lambda_max tracks the gap: against the gap its tau is
    # +1 (what Jiang et al. score), against test error it would be -1.
    rows = []
    for i, lr in enumerate([0.1, 0.2, 0.4, 0.8]):
        test_err, gap = 0.5 - 0.1 * i, 0.02 * i
        rows.append(
            {
                "run_key": str(i),
                "lr": lr,
                "optimizer": "sgd",
                "true/test_err": test_err,
                "true/train_err": test_err - gap,
                "true/gap": gap,
                "pred/gan": test_err + 0.01,
                "measure/lambda_max": 10.0 + i,
            }
        )
    scores = {s["predictor"]: s for s in score_predictors(rows)}
    assert scores["lambda_max"]["target"] == "gap" and scores["lambda_max"]["kendall_tau"] == pytest.approx(1.0)
    assert scores["gan"]["target"] == "test_err" and scores["gan"]["kendall_tau"] == pytest.approx(1.0)
    assert scores["gan"]["mae"] == pytest.approx(0.01) and scores["lambda_max"]["mae"] is None


def test_classifiers_outside_the_gans_training_set_get_no_gan_prediction():
    rows = [
        {
            "run_key": str(i),
            "lr": lr,
            "train_fraction": f,
            "true/test_err": 0.1 * (i + 1),
            "true/train_err": 0.0,
            "true/gap": 0.1 * (i + 1),
            "pred/gan": (0.1 * (i + 1) + 0.01) if f == 1.0 else float("nan"),
            "pred/val": 0.1 * (i + 1),
        }
        for i, (lr, f) in enumerate([(0.1, 1.0), (0.2, 1.0), (0.4, 0.05), (0.8, 1.0)])
    ]
    scores = {s["predictor"]: s for s in score_predictors(rows)}
    assert scores["gan"]["n_models"] == 3 and scores["gan"]["mae"] == pytest.approx(0.01)
    assert scores["val"]["n_models"] == 4


def test_model_width_is_a_scored_axis():
    from sgdlab.prediction import AXES

    rows = [
        {
            "run_key": str(i),
            "model": "mlp",
            "model_kwargs": f'{{"widths": [{w}]}}',
            "lr": 0.1,
            "true/test_err": 0.1 * (i + 1),
            "true/train_err": 0.0,
            "true/gap": 0.1 * (i + 1),
            "measure/lambda_max": float(i),
        }
        for i, w in enumerate([32, 256, 32, 256])
    ]
    assert "model_kwargs" in AXES
    s = score_predictors(rows)[0]
    assert s["psi"] is not None and s["pgdl"] is not None  # the widths are the varied axis


def test_frechet_diagnostic_compares_references_of_one_size(tmp_path):
    """FD(synthetic, test) vs FD(synthetic, train) is only a fair comparison at equal reference sizes (an FD
    estimate's bias shrinks as the reference grows): every diagnostic reference is cut to the train sample's n."""
    from sgdlab.gan import GANConfig
    from sgdlab.prediction import train_and_sample

    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 28, 28, generator=g)
    y = torch.arange(300) % 10
    x_ref, y_ref = x[:40] + 0.01, y[:40]  # a held-out set of 40: n = max(40, 2000) capped by the 300 examples
    paths = {k: tmp_path / f"{k}.{ext}" for k, ext in
             (("generator", "pt"), ("synthetic", "parquet"), ("samples", "png"), ("meta", "json"))}  # fmt: skip
    cfg = GANConfig.profile("cpu", steps=2, batch_size=8, bn_stat_batches=1, device="cpu")
    out = train_and_sample(
        x, y, 10, "h" * 64, cfg, paths, n_per_class=4, seed=0, x_ref=x_ref, y_ref=y_ref, frechet_steps=2,
        diagnostics={"all_train": (torch.cat([x, x]), torch.cat([y, y]))},  # 600 examples, the first 300 = train
    )  # fmt: skip
    assert out["frechet_diagnostic_n"] == 300
    # the diagnostic reference is cut to the same 300 examples as the train sample: the same number exactly
    assert out["frechet_synthetic_vs_all_train"] == out["frechet_synthetic_vs_train"]
