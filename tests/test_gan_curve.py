"""Generator snapshots along GAN training and the FD-vs-time / tau-vs-time curve of the GAN predictor."""

import json
from pathlib import Path

import numpy as np
import pytest

from sgdlab.data.parquet import RawDataset, write_dataset


def _dataset(root, n_train=300, n_test=100):
    rng = np.random.default_rng(0)
    proto = rng.random((10, 1, 28, 28), dtype=np.float32)  # one prototype per class: learnable, not trivial

    def draw(n):
        y = np.arange(n) % 10
        x = np.clip(proto[y] + 0.3 * rng.standard_normal((n, 1, 28, 28), dtype=np.float32), 0, 1)
        return x.astype(np.float32), y

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    ds = RawDataset("fashion_mnist", "classification", 10, x_tr, y_tr, x_te, y_te, source="unit")
    write_dataset(ds, root / "processed" / "fashion_mnist", "0")


def _cfg(name, snapshots=2):
    from sgdlab.config import from_dict

    return from_dict(
        {
            "study": {"name": name, "device": "cpu"},
            "data": {"val_fraction": 0.2, "probe_size": 20},
            "train": {"dataset": "fashion_mnist", "steps": 20, "log_every": 10, "eval_every": 0, "checkpoint_every": 0},
            "sweep": {
                "optimizers": [{"name": "sgd", "lr": [0.01, 0.3]}],
                "seeds": [0],
                "batch_sizes": [16],
                "label_noise": [0.0, 0.5],
                "models": [{"name": "mlp", "kwargs": {"widths": [8]}}],
            },
            "probe": {"subset_size": 10, "every": 0, "trace_probes": 2, "density_probes": 0, "max_iter": 10},
            "gan": {
                "overrides": {
                    "steps": 4,
                    "batch_size": 8,
                    "bn_stat_batches": 1,
                    "g_widths": [8, 8, 4],
                    "d_widths": [4, 8, 8],
                },
                "n_per_class": 30,  # < prediction.CURVE_PER_CLASS: the curve uses 30, so its last point is the final predictor
                "frechet_steps": 3,
                "seed": 3,
                "snapshots": snapshots,
            },
            "predict": {"flatness": {"n_samples": 2, "n_iter": 2}},
        }
    )


def test_snapshots_give_the_curve_and_its_last_point_is_the_final_predictor(
    tmp_path, mlflow_store, monkeypatch, capsys
):
    from sgdlab import results
    from sgdlab.phases import run_local
    from sgdlab.prediction import CURVE_PER_CLASS
    from sgdlab.study import Study

    assert CURVE_PER_CLASS > 30
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    _dataset(tmp_path / "data")
    cfg = _cfg("curve")
    study = Study(cfg)
    run_local(cfg, "sweep")
    run_local(cfg, "gan")
    snap = study.path("gan", "snapshots")
    assert sorted(p.name for p in snap.glob("step_*.pt")) == ["step_0000002.pt", "step_0000004.pt"]
    curve = json.loads((snap / "curve.json").read_text())
    assert [c["step"] for c in curve] == [2, 4]
    assert all(np.isfinite(c["fd_synthetic_vs_val"]) and c["train_seconds"] >= 0 for c in curve)
    assert curve[0]["train_seconds"] <= curve[1]["train_seconds"]

    capsys.readouterr()
    run_local(cfg, "predict")
    out = capsys.readouterr().out  # the pass over the classifiers shows progress (minutes on a large population)
    assert "predict: classifier 4/4 [" in out and "predict: GAN snapshots: classifier 4/4 [" in out
    rows = results.read_table(study.path("predict", "gan_curve"))
    assert [r["step"] for r in rows] == [2, 4] and all(r["n_classifiers"] == 4 and r["n_per_class"] == 30 for r in rows)
    scores = {s["predictor"]: s for s in results.read_table(study.path("predict", "scores"))}
    # the last snapshot is the final generator, sampled with the same seed and size: the same predictions
    assert rows[-1]["mae"] == pytest.approx(scores["gan"]["mae"], abs=1e-12)
    assert rows[-1]["kendall_tau"] == pytest.approx(scores["gan"]["kendall_tau"], abs=1e-12)
    assert rows[-1]["fd_floor"] == pytest.approx(
        json.loads(study.path("gan", "meta").read_text())["frechet_train_vs_val"]
    )

    run_local(cfg, "report")
    png = study.results_dir / "report" / "fig9_gan_curve.png"
    assert png.is_file() and png.stat().st_size > 10_000  # the figure, not the small placeholder

    # another study on the same training set reuses the generator and brings its snapshots along
    other = _cfg("curve-2")
    out = run_local(other, "gan")
    assert out["trained"] is False and "_shared/gan/" in out["reused_from"]
    snap2 = Study(other).path("gan", "snapshots")
    assert sorted(p.name for p in snap2.glob("step_*.pt")) == ["step_0000002.pt", "step_0000004.pt"]


def test_no_snapshots_leave_an_empty_curve_and_a_placeholder(tmp_path, mlflow_store, monkeypatch):
    from sgdlab.phases import run_local
    from sgdlab.study import Study

    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    _dataset(tmp_path / "data")
    cfg = _cfg("flat", snapshots=0)
    run_local(cfg, "gan")
    snap = Study(cfg).path("gan", "snapshots")
    assert json.loads((snap / "curve.json").read_text()) == [] and not list(snap.glob("step_*.pt"))
    assert Path(snap).is_dir()  # the DVC output exists
