"""Execute one run of a sweep: the library behind the Prefect ``train-run`` task.

``execute_run`` is idempotent per run key: a finished (or diverged) key returns its stored result
without training; an interrupted one resumes bit-exactly from ``checkpoint.pt`` into the same MLflow
child run. Results are written to ``<run_dir>/result.json`` atomically, last, so a crash never leaves
a key that looks finished.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sgdlab.sweep import RunSpec

_cache_lock = threading.Lock()
_splits_cache: dict[tuple, Any] = {}


def load_cached(name: str, root: str, device: str, val_fraction: float, probe_size: int, split_seed: int):
    """``load_splits`` memoised per process (runs of a sweep share the dataset on the device)."""
    from sgdlab.data import load_splits

    train_file = Path(root) / "processed" / name / "train.parquet"
    stamp = train_file.stat().st_mtime_ns if train_file.exists() else 0
    key = (name, str(root), str(device), val_fraction, probe_size, split_seed, stamp)
    with _cache_lock:
        if key not in _splits_cache:
            if len(_splits_cache) >= 2:
                _splits_cache.pop(next(iter(_splits_cache)))
            _splits_cache[key] = load_splits(name, root, device, val_fraction, probe_size, split_seed)
        return _splits_cache[key]


def train_subset(splits, fraction: float, seed: int):
    """The training tensors of a run: all of the training part, or a seeded subset of ``fraction`` of it
    (population studies vary the amount of data to spread test errors)."""
    if fraction >= 1.0:
        return splits.x_train, splits.y_train
    import torch

    n = int(len(splits.x_train) * fraction)
    idx = torch.randperm(len(splits.x_train), generator=torch.Generator().manual_seed(10_000 + seed))[:n]
    idx = idx.sort().values.to(splits.x_train.device)
    return splits.x_train[idx], splits.y_train[idx]


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_result(run_dir: Path | str) -> dict | None:
    p = Path(run_dir) / "result.json"
    return json.loads(p.read_text()) if p.is_file() else None


def execute_run(
    spec: RunSpec,
    run_dir: Path | str,
    data: dict[str, Any],
    tracking_ctx: dict[str, Any],
    device: str = "auto",
    on_step_factory: Callable[[Any, RunSpec], Callable | None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` (or return its stored result); returns the runs-table row.

    ``data``: kwargs for :func:`load_cached` minus ``device``. ``tracking_ctx``: ``experiment_id``,
    ``parent_run_id``, ``tags`` (lineage), ``study``. ``on_step_factory(splits, spec)`` may return an
    ``on_step`` hook (the Hessian probe).
    """
    from sgdlab import tracking

    run_dir = Path(run_dir)
    done = read_result(run_dir)
    if done is not None:
        return {**done, "cached": True}
    run_dir.mkdir(parents=True, exist_ok=True)

    from sgdlab.models import build_model, param_count
    from sgdlab.train import DataTensors, LoopConfig, evaluate, train

    splits = load_cached(device=device, **data)
    model = build_model(spec.model, splits.input_shape, splits.num_outputs, seed=spec.seed,
                        device=splits.x_train.device, **spec.model_kwargs)
    cfg = LoopConfig(steps=spec.steps, batch_size=spec.batch_size, seed=spec.seed, device=str(splits.x_train.device),
                     task=splits.task, **spec.loop)
    x_tr, y_tr = train_subset(splits, spec.train_fraction, spec.seed)
    tensors = DataTensors(x_tr, y_tr, splits.x_test, splits.y_test)

    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id is None:  # a fresh run; a resumed one keeps writing into its first MLflow run
        params = {**tracking.flatten({"spec": spec.to_dict()}), "run_key": spec.key, "n_params": param_count(model)}
        tags = {**tracking_ctx["tags"], "run_key": spec.key, "optimizer": spec.optimizer, "variant": spec.variant,
                "data_hash": spec.data_hash, "phase": "sweep"}
        run_id = tracking.start_run(tracking_ctx["experiment_id"], spec.label, tags,
                                    parent_run_id=tracking_ctx["parent_run_id"], params=params)
        tracking.log_dataset(run_id, spec.dataset, data["root"] + f"/processed/{spec.dataset}/train.parquet", spec.data_hash)
        id_file.write_text(run_id)
    else:
        tracking.set_tags(run_id, {"resumed_by_flow_run": tracking_ctx["tags"].get("prefect_flow_run_id", "")})
    hook = on_step_factory(splits, spec) if on_step_factory else None
    try:
        with tracking.MetricBuffer(run_id) as sink:
            result = train(model, spec.optimizer, spec.hparams, tensors, cfg, checkpoint_path=run_dir / "checkpoint.pt",
                           resume=True, metric_sink=sink, on_step=hook, progress=progress)
            val = evaluate(model, splits.x_val, splits.y_val, splits.task) if len(splits.x_val) else {}
            sink({f"val/{k.split('/')[-1]}": v for k, v in val.items()}, result.steps_done)
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    row = {
        "run_key": spec.key, "base_key": spec.base_key, "variant": spec.variant, "study": tracking_ctx["study"],
        "dataset": spec.dataset, "data_hash": spec.data_hash, "model": spec.model, "model_kwargs": spec.model_kwargs,
        "optimizer": spec.optimizer, "lr": spec.lr, "hparams": spec.hparams, "batch_size": spec.batch_size,
        "steps": spec.steps, "seed": spec.seed, "train_fraction": spec.train_fraction, "status": result.status, "reason": result.reason,
        "steps_done": result.steps_done, "n_params": param_count(model),
        **{k: float(v) for k, v in result.metrics.items()},
        **{f"val/{k.split('/')[-1]}": float(v) for k, v in val.items()},
        "wall_time_s": result.wall_time_s, "samples_per_s": result.samples_per_s,
        "resumed_from": result.resumed_from, "mlflow_run_id": run_id,
        "checkpoint": str(run_dir / "checkpoint.pt"), "device": str(splits.x_train.device),
    }
    tracking.set_tags(run_id, {"status": result.status, **({"diverged_reason": result.reason} if result.reason else {})})
    tracking.log_metrics(run_id, {f"final/{k}": float(v) for k, v in result.metrics.items()
                                  if isinstance(v, (int, float))}, result.steps_done)
    tracking.end_run(run_id, "FINISHED")
    _write_json(run_dir / "result.json", {**row, "spec": spec.to_dict()})
    return {**row, "cached": False}
