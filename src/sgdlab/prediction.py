"""GAN-based test-error prediction over a population of classifiers, scored against the alternatives.

The method (Zhang, Gupta, Saunshi, Arora, ICLR 2022): train a class-conditional GAN on the *same training
part* the classifiers were trained on, sample a labelled synthetic set, and take each classifier's error on
it as its predicted test error. This module is the library behind the ``gan`` and ``predict`` phases:

- :func:`train_and_sample`: GAN on ``splits.x_train`` only (the function never receives test data), a
  synthetic set written to Parquet with the generator hash and the training data hash, a sample grid, and
  the class-conditional Frechet distance of the synthetic set to the held-out validation part (features
  from a small CNN trained on the training part: no downloaded Inception weights exist offline).
- :func:`load_synthetic`: reads it back, refusing a set made from another data hash unless forced.
- :func:`predict_population`: every predictor on every finished classifier of the sweep.
- :func:`score_predictors`: MAE, signed Kendall tau, granulated Kendall Psi and the PGDL score.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ERROR_PREDICTORS = ("gan", "val", "train_err")
CLASS_NAMES = {
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
}
MEASURES = ("lambda_max", "trace", "pacbayes_flatness")
AXES = (
    "optimizer",
    "lr",
    "batch_size",
    "model",
    "model_kwargs",
    "steps",
    "train_fraction",
    "label_noise",
)  # model_kwargs: widths


class SyntheticSetError(ValueError):
    """A synthetic set that does not belong to this data (or is missing/corrupt); names the file."""


def data_range(splits) -> tuple[float, float]:
    """The [0, 1] pixel range in the loader's standardised units (what the GAN must output)."""
    norm = splits.meta.get("normalization") or {}
    if not norm:
        return (float(splits.x_train.min()), float(splits.x_train.max()))
    return ((0.0 - norm["mean"]) / norm["std"], (1.0 - norm["mean"]) / norm["std"])


def training_set_hash(x, y) -> str:
    """SHA-256 of the training tensors' bytes (what the GAN sees), so a generator is reused only for the very
    same training part: a changed validation split or seed gives another hash."""
    h = hashlib.sha256()
    for t in (x, y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# samples per class behind each point of the FD-vs-time and tau-vs-time curves: this many, or the synthetic
# set's n_per_class when smaller (then the last point is exactly the final GAN predictor)
CURVE_PER_CLASS = 500


def _copy_atomic(src: Path, dst: Path) -> None:
    import os
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def train_and_sample(
    x_train,
    y_train,
    num_classes: int,
    data_hash: str,
    gan_cfg,
    paths: dict[str, Path],
    *,
    n_per_class: int,
    seed: int,
    x_ref=None,
    y_ref=None,
    range_: tuple[float, float] = (0.0, 1.0),
    frechet_steps: int = 400,
    class_names: list[str] | None = None,
    diagnostics=None,
    metric_sink: Callable | None = None,
    progress: Callable | None = None,
    shared_dir: Path | None = None,
    snapshots: int = 0,
    other_studies: Path | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the GAN on the training part, sample the synthetic set, measure its quality.

    ``paths``: where to write (``generator``, ``synthetic``, ``samples``, ``meta``: the gan phase's outputs
    in the Study's table). ``x_ref, y_ref``: held-out *training-distribution* data for the Frechet distance
    (the validation part). ``diagnostics``: ``{"test": (x, y)}`` for the paper's own diagnostic (Zhang et
    al. 2022: the synthetic set is closer to the test data than to the training data), used only after the
    generator is trained and sampled, never by GAN training. Reuses the generator when it exists with the
    same config, data hash and training-set content.

    ``shared_dir``: a generator cache shared by every study of the project, keyed by the GAN config and the
    training set's content hash (:func:`training_set_hash`): a study whose own generator is missing or stale
    copies a matching one from there instead of training (``reused_from`` in the result), and a newly
    trained generator is put there for the next study. The study's own ``generator.pt`` stays its DVC output.

    ``snapshots``: when the GAN trains, keep this many evenly spaced generators along training in
    ``paths["snapshots"]`` (``step_<step>.pt``, the last one the final generator) and their FD to the held-out
    set against GAN training time in ``curve.json`` there: the FD-vs-time curve; the predict phase adds tau
    and MAE per snapshot. A reused generator brings the snapshots it was trained with (from the shared cache).
    ``other_studies``: a results root whose ``*/gan/gan.json`` are searched (after the shared cache) for a
    generator of the same config and training set: the studies' own DVC outputs, so a generator that `dvc pull`
    brought with another study is reused too.
    Returns a dict of paths and figures (small; safe to pass between tasks)."""
    from sgdlab.data.parquet import write_split
    from sgdlab.gan import (
        CorruptGANCheckpoint,
        generator_hash,
        load_gan,
        sample_grid_png,
        sample_synthetic,
        save_gan,
        save_snapshot,
        train_gan,
    )
    from sgdlab.gan.frechet import class_conditional_frechet_features, extract_features, train_feature_net

    if not isinstance(snapshots, int) or snapshots < 0:
        raise ValueError(f"gan.snapshots={snapshots!r}: must be an int >= 0")
    snap_dir = Path(paths["snapshots"]) if "snapshots" in paths else None
    counts = np.bincount(y_ref.cpu().numpy(), minlength=num_classes) if y_ref is not None else np.zeros(1)
    net = None

    def feature_net():
        nonlocal net
        if net is None:
            net = train_feature_net(
                x_train, y_train, num_classes, data_range=range_, seed=seed, device=x_train.device, steps=frechet_steps
            )
        return net

    ref_feats = None

    def ref_features():  # the held-out set's features: one pass, shared by the snapshots and the final set
        nonlocal ref_feats
        if ref_feats is None:
            ref_feats = extract_features(feature_net(), x_ref)
        return ref_feats

    ckpt, meta_path = Path(paths["generator"]), Path(paths["meta"])
    for p in paths.values():
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    want = {"config": gan_cfg.to_dict(), "data_hash": data_hash, "train_hash": training_set_hash(x_train, y_train)}
    key = hashlib.sha256(json.dumps([want["config"], want["train_hash"]], sort_keys=True).encode()).hexdigest()[:16]
    shared = Path(shared_dir) / key / "generator.pt" if shared_dir is not None else None

    def load(path: Path):
        try:
            return load_gan(path, num_classes=num_classes, sample_shape=tuple(x_train.shape[1:]), device=x_train.device)
        except CorruptGANCheckpoint as exc:  # never sample from a damaged generator: keep it aside, retrain
            import warnings

            from sgdlab.integrity import quarantine

            warnings.warn(f"{exc}; moved to {quarantine(path)}; not using it", stacklevel=3)
            return None

    res, reused_from, trained = None, None, False
    if ckpt.is_file() and all(meta.get(k) == v for k, v in want.items()):
        res = load(ckpt)
    if res is None and shared is not None and shared.is_file():
        res = load(shared)
        if res is not None:
            _copy_atomic(shared, ckpt)
            reused_from = str(shared)
    if res is None and other_studies is not None:
        for other in sorted(Path(other_studies).glob("*/gan/gan.json")):
            if other.resolve() == meta_path.resolve():
                continue
            try:
                theirs = json.loads(other.read_text())
            except ValueError:
                continue
            cand = other.parent / "generator.pt"
            if (
                theirs.get("config") == want["config"]
                and theirs.get("train_hash") == want["train_hash"]
                and cand.is_file()
            ):
                res = load(cand)
                if res is not None:
                    _copy_atomic(cand, ckpt)
                    reused_from = str(cand)
                    if shared is not None and not shared.is_file():
                        _copy_atomic(cand, shared)
                    break
    if res is None:
        curve: list[dict] = []
        monitor, every = None, 0
        if snapshots and snap_dir is not None:
            import shutil

            shutil.rmtree(snap_dir, ignore_errors=True)  # the snapshots of another generator
            snap_dir.mkdir(parents=True)
            every = max(1, gan_cfg.steps // snapshots)
            curve_n = min(n_per_class, CURVE_PER_CLASS)
            fd_ok = bool(frechet_steps) and counts.min() >= 2

            def monitor(step: int, seconds: float, g) -> None:
                save_snapshot(
                    g,
                    snap_dir / f"step_{step:07d}.pt",
                    config=gan_cfg,
                    num_classes=num_classes,
                    sample_shape=tuple(x_train.shape[1:]),
                    data_range=range_,
                    step=step,
                    train_seconds=seconds,
                )
                row = {"step": step, "train_seconds": round(seconds, 2)}
                if fd_ok:
                    xs, ys = sample_synthetic(g, num_classes, curve_n, seed, device=x_train.device)
                    row["fd_synthetic_vs_val"] = class_conditional_frechet_features(
                        extract_features(feature_net(), xs), ys, ref_features(), y_ref, num_classes
                    ).mean
                curve.append(row)
                if metric_sink is not None and "fd_synthetic_vs_val" in row:
                    metric_sink({"gan/curve_fd_synthetic_vs_val": row["fd_synthetic_vs_val"]}, step)

        res = train_gan(
            x_train,
            y_train,
            num_classes,
            gan_cfg,
            data_range=range_,
            progress=progress,
            metric_sink=metric_sink,
            monitor=monitor,
            monitor_every=every,
        )
        save_gan(res, ckpt)
        trained = True
        if monitor is not None:
            (snap_dir / "curve.json").write_text(json.dumps(curve, indent=1))
        if shared is not None:
            _copy_atomic(ckpt, shared)
            if monitor is not None:
                import shutil

                shutil.rmtree(shared.parent / "snapshots", ignore_errors=True)
                shutil.copytree(snap_dir, shared.parent / "snapshots")
    elif reused_from is not None and snap_dir is not None and (shared.parent / "snapshots").is_dir():
        import shutil

        shutil.rmtree(snap_dir, ignore_errors=True)
        shutil.copytree(shared.parent / "snapshots", snap_dir)
    if snap_dir is not None and not (snap_dir / "curve.json").is_file():
        snap_dir.mkdir(parents=True, exist_ok=True)
        (snap_dir / "curve.json").write_text("[]")  # no snapshots: an empty curve (the DVC output exists)
    g_hash = generator_hash(res.generator)
    x_syn, y_syn = sample_synthetic(res.generator, num_classes, n_per_class, seed, device=x_train.device)
    common = {
        "dataset": "synthetic",
        "task": "classification",
        "num_classes": num_classes,
        "source": f"class-conditional GAN {ckpt.name}",
        "generator_hash": g_hash,
        "data_hash": data_hash,
        "n_per_class": n_per_class,
        "seed": seed,
        "gan_config": gan_cfg.to_dict(),
    }
    syn_path = Path(paths["synthetic"])
    write_split(
        syn_path, x_syn.float().cpu().numpy(), y_syn.cpu().numpy().astype(np.int64), {**common, "split": "synthetic"}
    )
    names = list(class_names) if class_names and len(class_names) == num_classes else None
    grid = sample_grid_png(res.generator, Path(paths["samples"]), n_per_class=8, seed=seed, class_names=names)
    fd = {}
    if frechet_steps and counts.min() < 2:
        fd["frechet_skipped"] = f"held-out set has {int(counts.min())} example(s) of some class; need >= 2 per class"
    elif frechet_steps:
        net = feature_net()
        n = min(len(x_train), max(len(x_ref), 2000))
        # each set through the feature net once (the synthetic set is compared with three references)
        f_syn, f_train, f_ref = extract_features(net, x_syn), extract_features(net, x_train[:n]), ref_features()
        fd["frechet_synthetic_vs_val"] = class_conditional_frechet_features(
            f_syn, y_syn, f_ref, y_ref, num_classes
        ).mean
        fd["frechet_train_vs_val"] = class_conditional_frechet_features(
            f_train, y_train[:n], f_ref, y_ref, num_classes
        ).mean
        # the paper's diagnostic: synthetic vs test and vs the training data, each reference cut to the same n
        # examples: an FD estimate's bias shrinks with the reference's size (its covariance estimate), so
        # references of different sizes (test 10000 vs train 6000) would favour the larger one
        fd["frechet_synthetic_vs_train"] = class_conditional_frechet_features(
            f_syn, y_syn, f_train, y_train[:n], num_classes
        ).mean
        fd["frechet_diagnostic_n"] = n
        for name, (xd, yd) in (diagnostics or {}).items():
            try:
                fd[f"frechet_synthetic_vs_{name}"] = class_conditional_frechet_features(
                    f_syn, y_syn, extract_features(net, xd[:n]), yd[:n], num_classes
                ).mean
            except ValueError as exc:  # e.g. a class with < 2 examples, non-finite data: no number, a reason
                fd[f"frechet_synthetic_vs_{name}"] = float("nan")
                fd[f"frechet_synthetic_vs_{name}_skipped"] = str(exc)
    meta = {
        **want,
        "generator_hash": g_hash,
        "wall_time_s": res.wall_time_s,
        "steps": res.steps,
        "sample_seed": seed,  # the synthetic set's latents (the curve samples its snapshots with them too)
        "n_per_class": n_per_class,
        "reused_from": reused_from,
        **fd,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return {
        "checkpoint": str(ckpt),
        "synthetic": str(syn_path),
        "grid": str(grid),
        "generator_hash": g_hash,
        "trained": trained,
        "reused_from": reused_from,
        "wall_time_s": res.wall_time_s,
        **fd,
    }


def load_synthetic(path: Path | str, data_hash: str, device="cpu", force: bool = False):
    """The synthetic set as tensors ``(x, y)``; refuses one built from another training set unless ``force``."""
    import torch

    from sgdlab.data.parquet import DataFileError, read_split

    try:
        x, y, meta = read_split(Path(path))
    except DataFileError as exc:
        raise SyntheticSetError(f"{exc} (the synthetic set comes from the gan phase: `sgdlab gan sample`)") from None
    if meta.get("data_hash") != data_hash and not force:
        raise SyntheticSetError(
            f"{path}: made from training data {str(meta.get('data_hash'))[:12]}..., but the "
            f"classifiers were trained on {data_hash[:12]}...; re-run the gan phase or pass force"
        )
    return torch.from_numpy(np.array(x)).to(device), torch.from_numpy(np.array(y)).to(device), meta


def _check_compatible(model, x_syn, num_classes: int, label: str) -> None:
    import torch

    try:
        with torch.no_grad():
            out = model(x_syn[:2])
    except RuntimeError as exc:
        raise SyntheticSetError(
            f"classifier {label} cannot take synthetic inputs of shape {tuple(x_syn.shape[1:])}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if out.shape[-1] != num_classes:
        raise SyntheticSetError(
            f"classifier {label} has {out.shape[-1]} outputs, the GAN's synthetic set {num_classes} classes"
        )


def predict_population(
    specs_and_ckpts: list[tuple[Any, str, dict]],
    splits,
    x_syn,
    y_syn,
    *,
    probe_rows: dict[str, dict] | None = None,
    flatness: dict | None = None,
    hessian: dict | None = None,
    progress=None,
) -> list[dict[str, Any]]:
    """Every predictor on every classifier: ``(spec, checkpoint, row)`` triples from the sweep.
    ``progress(done, total)`` is called after each classifier.

    Rows hold ``true/test_err`` (error on the real test split: the target, used only for scoring),
    ``pred/<name>`` predicted test errors and ``measure/<name>`` generalization measures (larger =
    predicted worse). Every per-run quantity is computed on the run's own training examples (its train
    fraction): ``true/train_err`` and so ``true/gap``; the measures on a fixed seeded subset of those.
    lambda_max and trace come from the probe phase when it ran (same subset and settings), else are
    computed here."""
    import functools

    from sgdlab.data import run_indices, run_labels, run_probe_data
    from sgdlab.generalization import (
        GANPredictor,
        PACBayesFlatnessPredictor,
        SharpnessPredictor,
        TracePredictor,
        TrainErrorPredictor,
        ValidationPredictor,
        classification_error,
    )
    from sgdlab.train import loss_fn

    probe_rows = probe_rows or {}
    flatness = flatness or {}
    hessian = hessian or {}
    subset_size = hessian.get("subset_size", len(splits.probe_idx))
    gan, val = GANPredictor(x_syn, y_syn), ValidationPredictor(splits.x_val, splits.y_val)
    loss = functools.partial(loss_fn, splits.task)
    rows = []
    for spec, ckpt_path, run in specs_and_ckpts:
        model = _load_classifier(spec, ckpt_path, splits)
        _check_compatible(model, x_syn, splits.num_outputs, spec.label)
        # every per-run quantity on the run's own training examples (its train fraction), the measures on
        # a fixed seeded subset of those
        # (and with the labels it trained on: a label-noise run's train error is on its noisy copy)
        idx = run_indices(splits, spec.train_fraction, spec.seed)
        y_all = run_labels(splits, spec.data.label_noise)
        x_own, y_own = (splits.x_train, y_all) if idx is None else (splits.x_train[idx], y_all[idx])
        xp, yp = run_probe_data(splits, spec.train_fraction, spec.seed, subset_size, spec.data.label_noise)
        row = {
            "run_key": run["run_key"],
            **{a: run.get(a) for a in AXES},
            "seed": spec.seed,
            "n_train": len(x_own),
            "true/test_err": classification_error(model, splits.x_test, splits.y_test),
        }
        row["true/train_err"] = TrainErrorPredictor(x_own, y_own).predict(model)
        # Zhang et al. train the GAN on the classifiers' own training set: a classifier trained on a subset
        # of the GAN's training data is outside the protocol, so it gets no GAN prediction (NaN; not scored)
        row["pred/gan"] = gan.predict(model) if spec.train_fraction >= 1.0 else float("nan")
        row["pred/val"], row["pred/train_err"] = val.predict(model), row["true/train_err"]
        probed = probe_rows.get(run["run_key"], {})
        row["measure/lambda_max"] = probed.get("hessian/lambda_max") or SharpnessPredictor(
            xp, yp, loss_fn=loss, tol=hessian.get("tol", 1e-3)
        ).predict(model)
        row["measure/trace"] = probed.get("hessian/trace") or TracePredictor(
            xp, yp, loss_fn=loss, n_probes=max(2, hessian.get("trace_probes", 20))
        ).predict(model)
        row["measure/pacbayes_flatness"] = PACBayesFlatnessPredictor(
            xp,
            yp,
            n_samples=flatness.get("n_samples", 8),
            target=flatness.get("target", 0.1),
            n_iter=flatness.get("n_iter", 20),
        ).predict(model)
        row["true/gap"] = row["true/test_err"] - row["true/train_err"]
        rows.append(row)
        if progress is not None:
            progress(len(rows), len(specs_and_ckpts))
    return rows


def _load_classifier(spec, ckpt_path, splits):
    from sgdlab.models import build_model
    from sgdlab.train import load_checkpoint

    model = build_model(
        spec.model,
        splits.input_shape,
        splits.num_outputs,
        seed=spec.seed,
        device=splits.x_train.device,
        **spec.model_kwargs,
    )
    model.load_state_dict(load_checkpoint(ckpt_path)["model"])
    return model.eval()


def gan_curve(
    snap_dir: Path | str,
    specs_and_ckpts: list[tuple[Any, str, dict]],
    splits,
    rows,
    seed: int,
    per_class: int = CURVE_PER_CLASS,
    progress=None,
) -> list[dict]:
    """The GAN predictor along GAN training: for every generator snapshot of the gan phase (``snap_dir``:
    ``step_*.pt`` and ``curve.json``), its step, training seconds and FD to the validation part, and the MAE
    and Kendall tau of its predictions (error on ``per_class`` samples per class, latents seeded by ``seed`` as
    the synthetic set's) against the true
    test errors of the classifiers in ``rows`` that the GAN predictor scores (finite ``pred/gan``), and
    ``err_gap`` = mean error on the snapshot's samples - mean validation error. [] without snapshots.
    ``progress(done, total)`` is called after each classifier."""
    import math

    from sgdlab.gan import load_snapshot, sample_synthetic
    from sgdlab.generalization import classification_error, kendall_tau, mae

    snap_dir = Path(snap_dir)
    files = sorted(snap_dir.glob("step_*.pt"))
    scored = {r["run_key"]: r for r in rows if r.get("pred/gan") is not None and math.isfinite(r["pred/gan"])}
    if not files or len(scored) < 2:
        return []
    fd_at = {}
    if (snap_dir / "curve.json").is_file():
        fd_at = {c["step"]: c.get("fd_synthetic_vs_val") for c in json.loads((snap_dir / "curve.json").read_text())}
    device = splits.x_train.device
    sets = []
    for f in files:
        g, info = load_snapshot(f, device)
        sets.append((info, *sample_synthetic(g, splits.num_outputs, per_class, seed, device=device)))
    pred: list[dict[str, float]] = [{} for _ in sets]
    for spec, ckpt_path, run in specs_and_ckpts:
        if run["run_key"] not in scored:
            continue
        model = _load_classifier(spec, ckpt_path, splits)
        for i, (_, xs, ys) in enumerate(sets):
            pred[i][run["run_key"]] = classification_error(model, xs, ys)
        if progress is not None:
            progress(len(pred[0]), len(scored))
    keys = [k for k in scored if k in pred[0]]
    true = [scored[k]["true/test_err"] for k in keys]
    val = float(np.mean([scored[k]["pred/val"] for k in keys]))
    out = []
    for (info, _, _), p in zip(sets, pred):
        ps = [p[k] for k in keys]
        out.append(
            {
                "step": info["step"],
                "train_seconds": info["train_seconds"],
                "fd_synthetic_vs_val": fd_at.get(info["step"]),
                "mae": mae(ps, true),
                "kendall_tau": kendall_tau(ps, true),
                "err_gap": float(np.mean(ps)) - val,
                "n_classifiers": len(keys),
                "n_per_class": per_class,
            }
        )
    return out


def score_predictors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per predictor, each scored against its own target (named in the ``target`` column):

    - predictors of test error (``pred/*``: GAN, validation, train error) against the true test error:
      MAE, signed Kendall tau and granulated Kendall Psi; their PGDL score uses the predicted gap
      (prediction - train error) against the true gap;
    - generalization measures (``measure/*``: lambda_max, trace, PAC-Bayes flatness) against the
      generalization gap (test error - train error on the run's own training data), as in Jiang et al.
      2020 ("Fantastic Generalization Measures") and the PGDL competition: Kendall tau, Psi, PGDL.
    """
    from sgdlab.generalization import granulated_kendall, kendall_tau, mae, pgdl_score

    if len(rows) < 2:
        raise ValueError(f"scoring needs at least 2 classifiers, got {len(rows)}")
    true = np.array([r["true/test_err"] for r in rows])
    gap = np.array([r["true/gap"] for r in rows])
    train_err = np.array([r["true/train_err"] for r in rows])
    varied = {a: [str(r.get(a)) for r in rows] for a in AXES if len({str(r.get(a)) for r in rows}) > 1}
    out = []
    for col in sorted(k for k in rows[0] if k.startswith(("pred/", "measure/"))):
        all_vals = np.array([np.nan if r.get(col) is None else r[col] for r in rows], dtype=float)
        ok = np.isfinite(all_vals)  # e.g. no GAN prediction for classifiers outside the GAN's training set
        kind = "error" if col.startswith("pred/") else "measure"
        entry = {
            "predictor": col.split("/", 1)[1],
            "kind": kind,
            "n_models": int(ok.sum()),
            "target": "test_err" if kind == "error" else "gap",
            "mae": None,
            "kendall_tau": None,
            "psi": None,
            "pgdl": None,
        }
        if ok.sum() >= 2:
            vals, t, g, tr = all_vals[ok], true[ok], gap[ok], train_err[ok]
            target = t if kind == "error" else g
            entry["mae"] = mae(vals, t) if kind == "error" else None
            entry["kendall_tau"] = kendall_tau(vals, target)
            sub = [r for r, k in zip(rows, ok) if k]
            axes = {a: [str(r.get(a)) for r in sub] for a in varied if len({str(r.get(a)) for r in sub}) > 1}
            if axes:
                entry["psi"] = granulated_kendall(vals, target, axes)[0]
                entry["pgdl"] = pgdl_score(vals if kind == "measure" else vals - tr, g, axes)
        out.append(entry)
    return out
