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
from dataclasses import replace
from pathlib import Path
from typing import Any

from sgdlab.results import read_result
from sgdlab.study import Study
from sgdlab.sweep import RunSpec


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def execute_run(
    study: Study,
    spec: RunSpec,
    tracking_ctx: dict[str, Any],
    on_step_factory: Callable[[Any, RunSpec], Callable | None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` in ``study.run_dir(spec.key)`` (or return its stored result); returns the runs-table row.

    The data is ``spec.data``, loaded through the study and verified against the key's data hash.
    ``tracking_ctx``: ``experiment_id``, ``parent_run_id``, ``tags`` (lineage). ``on_step_factory(splits,
    spec)`` may return an ``on_step`` hook (the Hessian probe).
    """
    from sgdlab import tracking

    run_dir = study.run_dir(spec.key)
    done = read_result(run_dir)
    if done is not None:
        return {**done, "cached": True}
    from sgdlab.models import build_model, param_count
    from sgdlab.train import DataTensors, LoopConfig, evaluate, train

    splits = study.load(replace(spec.data, train_fraction=1.0))  # verified against the key's data hash
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(
        spec.model,
        splits.input_shape,
        splits.num_outputs,
        seed=spec.seed,
        device=splits.x_train.device,
        **spec.model_kwargs,
    )
    cfg = LoopConfig(
        steps=spec.steps,
        batch_size=spec.batch_size,
        seed=spec.seed,
        device=str(splits.x_train.device),
        task=splits.task,
        **spec.loop,
    )
    from sgdlab.data import run_indices

    train_idx = run_indices(splits, spec.train_fraction, spec.seed)  # None: the whole training part
    x_tr, y_tr = (
        (splits.x_train, splits.y_train)
        if train_idx is None
        else (splits.x_train[train_idx], splits.y_train[train_idx])
    )
    tensors = DataTensors(x_tr, y_tr, splits.x_test, splits.y_test)

    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id is None:  # a fresh run; a resumed one keeps writing into its first MLflow run
        params = {**tracking.flatten({"spec": spec.to_dict()}), "run_key": spec.key, "n_params": param_count(model)}
        tags = {
            **tracking_ctx["tags"],
            "run_key": spec.key,
            "optimizer": spec.optimizer,
            "variant": spec.variant,
            "data_hash": spec.data_hash,
            "phase": "sweep",
        }
        run_id = tracking.start_run(
            tracking_ctx["experiment_id"], spec.label, tags, parent_run_id=tracking_ctx["parent_run_id"], params=params
        )
        tracking.log_dataset(
            run_id, spec.dataset, str(study.processed_dir(spec.dataset) / "train.parquet"), spec.data_hash
        )
        id_file.write_text(run_id)
    else:
        tracking.set_tags(run_id, {"resumed_by_flow_run": tracking_ctx["tags"].get("prefect_flow_run_id", "")})
    hook = on_step_factory(splits, spec) if on_step_factory else None
    try:
        with tracking.MetricBuffer(run_id) as sink:
            result = train(
                model,
                spec.optimizer,
                spec.hparams,
                tensors,
                cfg,
                checkpoint_path=run_dir / "checkpoint.pt",
                resume=True,
                metric_sink=sink,
                on_step=hook,
                progress=progress,
            )
            val = evaluate(model, splits.x_val, splits.y_val, splits.task) if len(splits.x_val) else {}
            sink({f"val/{k.split('/')[-1]}": v for k, v in val.items()}, result.steps_done)
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    row = {
        "run_key": spec.key,
        "base_key": spec.base_key,
        "variant": spec.variant,
        "study": study.name,
        "dataset": spec.dataset,
        "data_hash": spec.data_hash,
        "model": spec.model,
        "model_kwargs": spec.model_kwargs,
        "optimizer": spec.optimizer,
        "lr": spec.lr,
        "hparams": spec.hparams,
        "batch_size": spec.batch_size,
        "steps": spec.steps,
        "seed": spec.seed,
        "train_fraction": spec.train_fraction,
        "n_train": len(x_tr),
        "status": result.status,
        "reason": result.reason,
        "steps_done": result.steps_done,
        "n_params": param_count(model),
        **{k: float(v) for k, v in result.metrics.items()},
        **{f"val/{k.split('/')[-1]}": float(v) for k, v in val.items()},
        "wall_time_s": result.wall_time_s,
        "samples_per_s": result.samples_per_s,
        "resumed_from": result.resumed_from,
        "mlflow_run_id": run_id,
        "checkpoint": study.relative(run_dir / "checkpoint.pt"),
        "device": str(splits.x_train.device),
    }
    tracking.set_tags(
        run_id, {"status": result.status, **({"diverged_reason": result.reason} if result.reason else {})}
    )
    tracking.log_metrics(
        run_id,
        {f"final/{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        result.steps_done,
    )
    tracking.end_run(run_id, "FINISHED")
    # the run's own training examples (indices into the training part; None: all of it), for every later
    # per-run quantity (train error, gap, probes) to use exactly these
    indices = None if train_idx is None else train_idx.cpu().tolist()
    _write_json(run_dir / "result.json", {**row, "spec": spec.to_dict(), "train_indices": indices})
    return {**row, "cached": False}
