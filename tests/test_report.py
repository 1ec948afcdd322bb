"""sgdlab.report: a synthetic study (with and without the optional phases) -> PNGs + one HTML page."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sgdlab.results import write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIVERGED_REASON = "loss 3.2e+08 > 1e4 x initial loss at step 140"
ALL_FIGS = [
    "fig1_training_curves",
    "fig2_edge_of_stability",
    "fig3_spectral_density",
    "fig4_predicted_vs_true",
    "fig5_measures",
    "fig6_summary",
    "fig7_gan_samples",
    "fig8_scaling_rules",
    "fig9_gan_curve",
]

# (optimizer, lr, batch size, variant, threshold factor): SGD threshold 2/lr, Adam (2+2b1)/((1-b1) lr)
GROUPS = [
    ("sgd", 0.05, 64, "base", 2.0),
    ("sgd", 0.2, 64, "base", 2.0),
    ("sgd", 0.1, 128, "linearx2", 2.0),
    ("momentum", 0.02, 64, "base", 3.8),
    ("adam", 1e-3, 64, "base", 38.0),
    ("adam", 3e-3, 128, "base", 38.0),
]


def make_study(
    root: Path, *, seeds: int = 3, optional: bool = True, steps: int = 400, n_points: int = 41
) -> tuple[Path, dict, Path]:
    """Write a realistic synthetic study: runs.parquet (+ probe, densities, predictions, scores and a GAN
    grid when ``optional``). Returns (results_dir, curves, gan_grid_png)."""
    rng = np.random.default_rng(0)
    res = root / "results"
    runs, probe, preds, curves, dens = [], [], [], {}, {}
    grid_steps = np.linspace(0, steps, n_points).astype(int)
    for gi, (opt, lr, bs, variant, tf) in enumerate(GROUPS):
        thr = tf / lr
        for seed in range(seeds):
            key = f"{gi:02d}{seed:02d}" + "a" * 12
            diverged = opt == "sgd" and lr == 0.2 and seed == seeds - 1
            rate = 0.004 + 0.002 * gi + 0.0005 * seed
            loss = 2.3 * np.exp(-rate * grid_steps) + 0.02 + 0.01 * rng.random(n_points)
            acc = 0.1 + (0.82 + 0.02 * (gi % 3) - 0.01 * seed) * (1 - np.exp(-2 * rate * grid_steps))
            if diverged:
                cut = n_points // 3
                loss = np.concatenate([loss[:cut], [5.0, 4e3, 3.2e8, float("nan")]])
                acc = np.concatenate([acc[:cut], [0.1, 0.1, 0.1, float("nan")]])
            st = grid_steps[: len(loss)]
            # progressive sharpening up to the threshold, then hovering at it (Edge of Stability)
            sharp = np.minimum(thr * (0.15 + 1.2 * st / steps), thr * (1 + 0.05 * rng.standard_normal(len(st))))
            c = {
                "train/loss": list(zip(st.tolist(), loss.tolist())),
                "test/acc": list(zip(st.tolist(), acc.tolist())),
                "hessian/threshold": [(int(s), thr) for s in st[::4]],
            }
            c["hessian/precond_lambda_max" if opt == "adam" else "hessian/lambda_max"] = list(
                zip(st[::4].tolist(), sharp[::4].tolist())
            )
            if opt == "adam":
                c["hessian/lambda_max"] = list(zip(st[::4].tolist(), (sharp[::4] * 1e-3 * lr * 1e4).tolist()))
            curves[key] = c
            final_acc = None if diverged else float(acc[-1])
            runs.append(
                {
                    "run_key": key,
                    "optimizer": opt,
                    "lr": lr,
                    "batch_size": bs,
                    "model": "mlp",
                    "seed": seed,
                    "variant": variant,
                    "status": "diverged" if diverged else "finished",
                    "n_train": 5000,
                    # the linear-rule group is a variant of group 0 (same seed)
                    "base_key": f"00{seed:02d}" + "a" * 12 if variant != "base" else "",
                    "reason": DIVERGED_REASON if diverged else None,
                    "steps": steps,
                    "steps_done": int(st[-1]) if diverged else steps,
                    "train/loss": None if diverged else float(loss[-1]),
                    "train/acc": None if diverged else min(1.0, float(acc[-1]) + 0.08),
                    "test/loss": None if diverged else float(loss[-1] + 0.3),
                    "test/acc": final_acc,
                    "val/loss": None,
                    "val/acc": final_acc,
                    "wall_time_s": 12.5 + gi,
                    "samples_per_s": 5.1e4 / (1 + gi),
                    "mlflow_run_id": f"run{gi}{seed}",
                }
            )
            if diverged:
                continue
            lam = float(sharp[-1]) if opt != "adam" else float(sharp[-1]) * 0.02
            probe.append(
                {
                    "run_key": key,
                    "hessian/lambda_max": lam,
                    "hessian/threshold": thr,
                    "hessian/trace": lam * 9.0,
                    "hessian/trace_stderr": lam * 0.4,
                    **({"hessian/precond_lambda_max": float(sharp[-1])} if opt == "adam" else {}),
                }
            )
            g = np.linspace(-0.1 * lam, 1.1 * lam, 300)
            d = np.exp(-0.5 * (g / (0.01 * lam)) ** 2) + 1e-3 * np.exp(-0.5 * ((g - lam) / (0.02 * lam)) ** 2)
            dens[key] = {"grid": g.tolist(), "density": (d / np.trapezoid(d, g)).tolist()}
            err = 1.0 - final_acc
            preds.append(
                {
                    "run_key": key,
                    "optimizer": opt,
                    "lr": lr,
                    "batch_size": bs,
                    "model": "mlp",
                    "seed": seed,
                    "true/test_err": err,
                    "pred/gan": float(np.clip(err + 0.015 * rng.standard_normal(), 0, 1)),
                    "pred/val": float(np.clip(err + 0.006 * rng.standard_normal(), 0, 1)),
                    "pred/train_err": max(0.0, err - 0.08),
                    "true/train_err": max(0.0, err - 0.08),
                    "true/gap": err - max(0.0, err - 0.08),
                    "measure/lambda_max": lam,
                    "measure/trace": lam * 9.0,
                    "measure/pacbayes_flatness": float(err * 40 + rng.standard_normal()),
                }
            )
    write_table(runs, res / "runs.parquet")
    gan = root / "gan_grid.png"
    if optional:
        write_table(probe, res / "probe.parquet")
        (res / "densities.json").write_text(json.dumps(dens))
        write_table(preds, res / "predictions.parquet")
        write_table(
            [
                {"predictor": "gan", "kind": "error", "mae": 0.012, "kendall_tau": 0.81, "psi": 0.7, "pgdl": 31.0},
                {"predictor": "val", "kind": "error", "mae": 0.005, "kendall_tau": 0.93, "psi": 0.88, "pgdl": 52.0},
                {
                    "predictor": "lambda_max",
                    "kind": "measure",
                    "mae": None,
                    "kendall_tau": -0.35,
                    "psi": -0.1,
                    "pgdl": 12.0,
                },
            ],
            res / "scores.parquet",
        )
        write_table(
            [
                {
                    "step": s,
                    "train_seconds": 0.5 * s,
                    "fd_synthetic_vs_val": 300.0 / (1 + s / 100),
                    "mae": 0.2 / (1 + s / 200),
                    "kendall_tau": min(0.9, s / 1000),
                    "err_gap": 0.1,
                    "n_classifiers": 12,
                    "fd_floor": 6.0,
                }
                for s in (100, 200, 400, 800)
            ],  # fmt: skip
            res / "gan_curve.parquet",
        )
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 3))
        fig.add_subplot().imshow(rng.random((28 * 4, 28 * 4)), cmap="gray")
        fig.savefig(gan, dpi=80)
    return res, curves, gan


def _check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    h, w = mpimg.imread(path).shape[:2]
    assert 200 <= w <= 4000 and 150 <= h <= 5000, (path.name, w, h)


def _check_self_contained(page: str) -> None:
    assert "data:image/png;base64," in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|file:|/|\.\.?/)""", page), "external or local link"
    assert "<script" not in page and "<link" not in page


def test_full_report(tmp_path):
    from sgdlab.report import build_report

    res, curves, gan = make_study(tmp_path, n_points=21)  # the demo in the report used 3 seeds, 41 points
    out = build_report(
        res, tmp_path / "report", study="synthetic", curves=curves, gan_grid=gan, notes=["seeded synthetic study"]
    )
    assert out.skipped == ()
    assert [p.stem for p in out.figures] == ALL_FIGS
    for p in out.figures:
        _check_png(p)
    page = out.html.read_text(encoding="utf-8")
    _check_self_contained(page)
    assert page.count("data:image/png;base64,") == len(ALL_FIGS)
    for n in range(1, 8):
        assert f'id="fig{n}"' in page
    assert html.escape(DIVERGED_REASON) in page and "seeded synthetic study" in page
    for title in ("Sweep summary", "Runs", "Hessian at the final checkpoints", "Predictor scores"):
        assert f"<h3>{title}</h3>" in page
    assert "Kaur, Cohen, Lipton 2023" in page and "signed Kendall" in page


def test_report_without_optional_inputs(tmp_path):
    from sgdlab.report import build_report

    res, _, _ = make_study(tmp_path, seeds=2, optional=False)
    out = build_report(res, tmp_path / "report", study="bare", curves={})
    # only the final-accuracy bars can be drawn from runs.parquet alone
    assert [p.stem for p in out.figures] == ["fig6_summary"]
    _check_png(out.figures[0])
    skipped = dict(out.skipped)
    assert set(skipped) == set(ALL_FIGS) - {"fig6_summary"}
    page = out.html.read_text(encoding="utf-8")
    _check_self_contained(page)
    for n in range(1, 8):
        assert f'id="fig{n}"' in page
    for reason in skipped.values():
        assert html.escape(reason) in page
    assert "densities.json not found" in skipped["fig3_spectral_density"]
    assert "predictions.parquet not found" in skipped["fig4_predicted_vs_true"]
    assert "no GAN sample grid" in skipped["fig7_gan_samples"]
    assert html.escape(DIVERGED_REASON) in page and "Table skipped" in page


def test_partial_curves_and_missing_gan_file(tmp_path):
    """Curves for some runs only, no sharpness curves, a gan_grid path that does not exist."""
    from sgdlab.report import build_report

    res, curves, _ = make_study(tmp_path, seeds=1, n_points=11)
    some = {k: {m: v for m, v in c.items() if not m.startswith("hessian/")} for k, c in list(curves.items())[:3]}
    out = build_report(res, tmp_path / "r", study="partial", curves=some, gan_grid=tmp_path / "nope.png")
    skipped = dict(out.skipped)
    assert set(skipped) == {"fig2_edge_of_stability", "fig7_gan_samples"}
    assert "hessian/lambda_max" in skipped["fig2_edge_of_stability"]
    assert "nope.png not found" in skipped["fig7_gan_samples"]


def test_regression_study_bad_gan_file_and_escaping(tmp_path):
    """No accuracy (the summary falls back to test loss), a GAN 'PNG' that is not one, markup in a reason."""
    from sgdlab.report import build_report

    res = tmp_path / "res"
    write_table(
        [
            {
                "run_key": f"k{i}",
                "optimizer": "sgd",
                "lr": 0.1,
                "batch_size": 8,
                "model": "linear",
                "seed": i,
                "variant": "base",
                "status": "failed" if i == 0 else "finished",
                "reason": "<b>OOM</b>" if i == 0 else None,
                "test/loss": None if i == 0 else 0.1 * i,
            }
            for i in range(3)
        ],
        res / "runs.parquet",
    )
    (tmp_path / "bad.png").write_text("not a png")
    out = build_report(
        res, tmp_path / "o", study="reg", curves={"k1": {"train/loss": [(0, 1.0)]}}, gan_grid=tmp_path / "bad.png"
    )
    assert [p.stem for p in out.figures] == ["fig1_training_curves", "fig6_summary"]
    assert "not a PNG" in dict(out.skipped)["fig7_gan_samples"]
    page = out.html.read_text(encoding="utf-8")
    assert "&lt;b&gt;OOM&lt;/b&gt;" in page and "<b>OOM" not in page


def test_missing_runs_table_names_the_file(tmp_path):
    from sgdlab.report import build_report

    with pytest.raises(FileNotFoundError, match=r"runs\.parquet"):
        build_report(tmp_path / "empty", tmp_path / "out", study="s", curves={})
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_named(tmp_path):
    from sgdlab.report import build_report

    res, _, _ = make_study(tmp_path, seeds=1, optional=False)
    with pytest.raises(TypeError, match=r"curves\['k'\]\['train/loss'\]"):
        build_report(res, tmp_path / "o", study="s", curves={"k": {"train/loss": [1.0, 2.0]}})
    with pytest.raises(ValueError, match="study"):
        build_report(res, tmp_path / "o", study=" ", curves={})
    write_table([], res / "runs.parquet")
    with pytest.raises(ValueError, match=r"runs\.parquet.*no rows"):
        build_report(res, tmp_path / "o", study="s", curves={})


def test_seed_band_statistics():
    from sgdlab.report import seed_band

    a = [(0, 1.0), (10, 2.0), (20, 3.0)]
    b = [(0, 3.0), (10, 4.0), (20, 5.0), (30, 9.0)]
    two = seed_band([a, b])
    np.testing.assert_allclose(two.steps, [0, 10, 20])  # only the range every seed covers
    np.testing.assert_allclose(two.mean, [2.0, 3.0, 4.0])
    assert two.kind == "minmax" and np.allclose(two.lo, [1, 2, 3]) and np.allclose(two.hi, [3, 4, 5])
    three = seed_band([a, b, [(0, 2.0), (5, float("nan")), (20, 4.0)]])  # NaN dropped, (20, 4) interpolated
    assert three.kind == "std" and three.n_seeds == 3
    np.testing.assert_allclose(three.mean, [2.0, 3.0, 4.0])
    np.testing.assert_allclose(three.hi - three.mean, [1.0, 1.0, 1.0])  # sample std of (1, 3, 2) etc.
    assert seed_band([[], None]) is None


def test_edge_of_stability_marks_unconverged_lanczos_points():
    from sgdlab.report import edge_of_stability

    runs = [
        {
            "run_key": "k",
            "optimizer": "sgd",
            "lr": 0.1,
            "batch_size": 32,
            "variant": "base",
            "seed": 0,
            "model": "mlp",
            "status": "finished",
        }
    ]
    curves = {
        "k": {
            "hessian/lambda_max": [(10, 5.0), (20, 12.0), (30, 19.0)],
            "hessian/threshold": [(10, 20.0), (20, 20.0), (30, 20.0)],
            "hessian/converged": [(10, 1.0), (20, 0.0), (30, 1.0)],
        }
    }
    fig = edge_of_stability(runs, curves)
    marked = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == "Lanczos not converged"]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [20.0]
    curves["k"]["hessian/converged"] = [(10, 1.0), (20, 1.0), (30, 1.0)]
    assert not [
        ln
        for ax in edge_of_stability(runs, curves).axes
        for ln in ax.get_lines()
        if ln.get_label() == "Lanczos not converged"
    ]


def test_scaling_rule_figure_puts_base_and_variant_on_epochs_and_sde_time():
    from sgdlab.report.figures_training import scaling_rules, sde_time

    runs = [
        {
            "run_key": "b",
            "optimizer": "sgd",
            "lr": 0.1,
            "batch_size": 32,
            "variant": "base",
            "seed": 0,
            "n_train": 3200,
            "hparams": '{"lr": 0.1}',
        },
        {
            "run_key": "v",
            "optimizer": "sgd",
            "lr": 0.2,
            "batch_size": 64,
            "variant": "linearx2",
            "seed": 0,
            "base_key": "b",
            "n_train": 3200,
            "hparams": '{"lr": 0.2}',
        },
        {
            "run_key": "s",
            "optimizer": "svag",
            "lr": 0.1,
            "batch_size": 32,
            "variant": "svagx2",
            "seed": 0,
            "base_key": "b",
            "n_train": 3200,
            "hparams": '{"lr": 0.1, "l": 2}',
        },
    ]
    curves = {
        "b": {"train/loss": [(0, 2.0), (100, 1.0), (200, 0.5)]},
        "v": {"train/loss": [(0, 2.0), (50, 1.0), (100, 0.5)]},
        "s": {"train/loss": [(0, 2.0), (200, 1.0), (400, 0.5)]},
    }
    fig = scaling_rules(runs, curves)
    ax_e, ax_t = fig.axes[:2]
    ends_e = sorted(float(ln.get_xdata()[-1]) for ln in ax_e.get_lines())
    ends_t = sorted(float(ln.get_xdata()[-1]) for ln in ax_t.get_lines())
    assert ends_e == pytest.approx([2.0, 2.0, 4.0])  # base and linear x2: 2 epochs; SVAG l=2 runs 2x the steps
    assert ends_t == pytest.approx([20.0, 20.0, 20.0])  # SDE time steps x eta: all three coincide
    adam = {"optimizer": "adam", "lr": 0.01, "hparams": "{}"}
    assert sde_time(adam, np.array([100.0]))[0] == pytest.approx(0.01)  # steps x eta^2 for Adam-type
