"""Execute one run of a sweep: the library behind the Prefect ``train-run`` task.

``execute_run`` is idempotent per run key: a finished (or diverged) key returns its stored result
without training; an interrupted one resumes bit-exactly from ``checkpoint.pt`` into the same MLflow
child run, logging only the points its history does not hold yet. Results are written to
``<run_dir>/result.json`` atomically, last, so a crash never leaves a key that looks finished. A key is
trained by one process at a time (:class:`sgdlab.locks.RunLock` on ``<run_dir>.lock``): a second sweep on
the same study waits for it and then reads its result.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sgdlab.results import read_result
from sgdlab.study import Study
from sgdlab.sweep import RunSpec


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _read_run_id(path: Path) -> str | None:
    """The recorded MLflow run id, or None when the file is missing, empty or not an id (a full disk)."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text if text and text.isalnum() else None


def _child_tags_params(spec: RunSpec, ctx: dict[str, Any], n_params) -> tuple[dict[str, str], dict[str, Any]]:
    """(tags, params) of a key's MLflow child run: lineage, run key, optimizer, variant, data hash; the spec."""
    from sgdlab import tracking

    tags = {
        **ctx["tags"],
        "run_key": spec.key,
        "optimizer": spec.optimizer,
        "variant": spec.variant,
        "data_hash": spec.data_hash,
        "phase": "sweep",
    }
    search = (spec.extra or {}).get("search")
    if search:  # a search trial: MLflow can filter on tags.search_study / tags.search_trial
        tags.update({f"search_{k}": str(v) for k, v in search.items()})
    params = {**tracking.flatten({"spec": spec.to_dict()}), "run_key": spec.key, "n_params": n_params}
    return tags, params


def _child_run(study: Study, spec: RunSpec, run_dir: Path, ctx: dict[str, Any], n_params: int) -> tuple[str, bool]:
    """(MLflow child run id of this key, whether it was created now).

    One child run per key, whatever was killed when: the id recorded in ``mlflow_run_id`` when it names a
    live run; else the run an earlier attempt created but was killed before recording (found by its
    ``run_key`` tag); else a new run. The id file is written atomically right after, so an empty or
    half-written file is never read as an id, and a dangling one (its run deleted from the store) is replaced.
    """
    from sgdlab import tracking

    id_file = run_dir / "mlflow_run_id"
    run_id = _read_run_id(id_file)
    if run_id is not None and not tracking.run_exists(run_id):
        import warnings

        warnings.warn(f"{id_file}: MLflow run {run_id} is not in the store; using or creating another", stacklevel=2)
        run_id = None
    recovered = False
    if run_id is None:
        run_id = tracking.find_tagged_run(ctx["experiment_id"], run_key=spec.key, phase="sweep")
        recovered = run_id is not None
    created = run_id is None
    tags, params = _child_tags_params(spec, ctx, n_params)
    if recovered:  # the attempt that created it may have been killed before logging them (same values: a no-op)
        tracking.log_params(run_id, params)
    if created:
        run_id = tracking.start_run(
            ctx["experiment_id"], spec.label, tags, parent_run_id=ctx["parent_run_id"], params=params
        )
        tracking.log_dataset(
            run_id, spec.dataset, str(study.processed_dir(spec.dataset) / "train.parquet"), spec.data_hash
        )
    else:
        tracking.set_tags(run_id, {"resumed_by_flow_run": ctx["tags"].get("prefect_flow_run_id", "")})
    if _read_run_id(id_file) != run_id:
        _write_text(id_file, run_id)
    return run_id, created


def _ensure_tracked(study: Study, spec: RunSpec, run_dir: Path, done: dict, ctx: dict[str, Any]) -> dict:
    """A cached result whose MLflow run is not in the store (the store was deleted or replaced): re-create a
    child run for the key with its params and final metrics, tagged ``history=lost``, and record the new id in
    ``result.json`` and ``mlflow_run_id``. The per-step curves cannot be re-created: they lived in that store."""
    from sgdlab import tracking

    old = done.get("mlflow_run_id")
    if old and tracking.run_exists(old):
        return done
    import warnings

    tags, params = _child_tags_params(spec, ctx, done.get("n_params"))
    tags["status"] = str(done.get("status"))
    tags["history"] = "lost: re-created from the cached result, the per-step curves went with the old store"
    run_id = tracking.start_run(
        ctx["experiment_id"], spec.label, tags, parent_run_id=ctx["parent_run_id"], params=params
    )
    finals = {k: float(v) for k, v in done.items() if k.startswith(("train/", "test/", "val/")) and v is not None}
    tracking.log_metrics(run_id, {f"final/{k}": v for k, v in finals.items()}, int(done.get("steps_done") or 0))
    tracking.end_run(run_id, "FINISHED")
    warnings.warn(
        f"run key {spec.key}: MLflow run {old} is not in the store {tracking.tracking_uri()}; re-created it as "
        f"{run_id} from the cached result (final metrics only)",
        stacklevel=3,
    )
    done = {**done, "mlflow_run_id": run_id}
    _write_json(run_dir / "result.json", done)
    _write_text(run_dir / "mlflow_run_id", run_id)
    return done


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
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
    from sgdlab import interrupt

    interrupt.check(f"run {spec.key} not started")  # after Ctrl-C / SIGTERM nothing new starts
    run_dir = study.run_dir(spec.key)
    done = read_result(run_dir)
    if done is not None:
        return {**_ensure_tracked(study, spec, run_dir, done, tracking_ctx), "cached": True}
    from sgdlab.locks import RunLock

    def waiting(owner: dict) -> None:
        print(f"{spec.label}: run key {spec.key} is being trained by {owner or 'another process'}; waiting", flush=True)

    # one process per key; the others wait, then reuse its result. Beside the run's folder, which is created
    # only once the data checks out.
    with RunLock(run_dir.with_name(f"{run_dir.name}.lock"), on_wait=waiting):
        done = read_result(run_dir)
        if done is not None:
            return {**_ensure_tracked(study, spec, run_dir, done, tracking_ctx), "cached": True}
        return _train(study, spec, tracking_ctx, on_step_factory, progress, run_dir)


@dataclass
class _Prepared:
    """One key ready to train: its data, model, loop config and MLflow child run."""

    spec: RunSpec
    run_dir: Path
    splits: Any
    model: Any
    cfg: Any
    tensors: Any
    train_idx: Any
    run_id: str
    logged: dict
    hook: Callable | None


def _prepare_run(study, spec, tracking_ctx, on_step_factory, run_dir: Path) -> _Prepared:
    from sgdlab import tracking
    from sgdlab.models import build_model, param_count
    from sgdlab.train import DataTensors, LoopConfig

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
    from sgdlab.data import run_indices, run_labels

    train_idx = run_indices(splits, spec.train_fraction, spec.seed)  # None: the whole training part
    y_all = run_labels(splits, spec.data.label_noise)  # the prepared labels, or their noisy copy
    x_tr, y_tr = (splits.x_train, y_all) if train_idx is None else (splits.x_train[train_idx], y_all[train_idx])
    tensors = DataTensors(x_tr, y_tr, splits.x_test, splits.y_test, splits.x_val, splits.y_val)
    run_id, created = _child_run(study, spec, run_dir, tracking_ctx, param_count(model))
    # a resumed run replays from its checkpoint: the points its store already holds are not logged again
    logged = {} if created else tracking.last_logged_steps(run_id)
    hook = on_step_factory(splits, spec) if on_step_factory else None
    return _Prepared(spec, run_dir, splits, model, cfg, tensors, train_idx, run_id, logged, hook)


def _log_val(p: _Prepared, sink, result) -> dict:
    from sgdlab.train import evaluate

    splits = p.splits
    val = evaluate(p.model, splits.x_val, splits.y_val, splits.task) if len(splits.x_val) else {}
    sink({f"val/{k.split('/')[-1]}": v for k, v in val.items()}, result.steps_done)
    return val


def _end_failed(run_id: str, exc: BaseException) -> None:
    from sgdlab import tracking
    from sgdlab.interrupt import Interrupted

    tracking.end_run(run_id, "KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED")


def _train(study, spec, tracking_ctx, on_step_factory, progress, run_dir: Path) -> dict[str, Any]:
    p = _prepare_run(study, spec, tracking_ctx, on_step_factory, run_dir)
    return _train_prepared(study, p, progress)


def _train_prepared(study, p: _Prepared, progress, population_note: str | None = None) -> dict[str, Any]:
    from sgdlab import tracking
    from sgdlab.train import train

    try:
        with tracking.MetricBuffer(p.run_id, logged=p.logged) as sink:
            result = train(
                p.model,
                p.spec.optimizer,
                p.spec.hparams,
                p.tensors,
                p.cfg,
                checkpoint_path=p.run_dir / "checkpoint.pt",
                resume=True,
                metric_sink=sink,
                on_step=p.hook,
                progress=progress,
            )
            val = _log_val(p, sink, result)
    except BaseException as exc:
        _end_failed(p.run_id, exc)
        raise
    return _record_run(study, p, result, val, 1, population_note)


def _record_run(study, p: _Prepared, result, val: dict, population: int, note: str | None = None) -> dict[str, Any]:
    """The runs-table row, the child run's tags and final metrics, then ``result.json`` (last)."""
    from sgdlab import tracking
    from sgdlab.models import param_count

    spec, run_id, splits, run_dir = p.spec, p.run_id, p.splits, p.run_dir
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
        # -1 for a grid run; else the search study and trial number (sweep.optimizers[i].search)
        "search_study": int((spec.extra or {}).get("search", {}).get("study", -1)),
        "search_trial": int((spec.extra or {}).get("search", {}).get("trial", -1)),
        "train_fraction": spec.train_fraction,
        "label_noise": spec.data.label_noise,
        "n_train": len(p.tensors.x_train),
        "status": result.status,
        "reason": result.reason,
        "steps_done": result.steps_done,
        "n_params": param_count(p.model),
        **{k: float(v) for k, v in result.metrics.items()},
        **{f"val/{k.split('/')[-1]}": float(v) for k, v in val.items()},
        "wall_time_s": result.wall_time_s,
        "samples_per_s": result.samples_per_s,
        "resumed_from": result.resumed_from,
        "population": population,  # members trained together with this key (1: alone)
        "mlflow_run_id": run_id,
        "checkpoint": study.relative(run_dir / "checkpoint.pt"),
        "device": str(splits.x_train.device),
    }
    tags = {"status": result.status, **({"diverged_reason": result.reason} if result.reason else {})}
    tags["trained_as"] = f"population of {population}" if population > 1 else "alone"
    if note:
        tags["trained_alone_because"] = note[:500]
    if result.quarantined:
        tags["checkpoint_quarantined"] = study.relative(Path(result.quarantined))
    tracking.set_tags(run_id, tags)
    tracking.log_metrics(
        run_id,
        {f"final/{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        result.steps_done,
    )
    tracking.end_run(run_id, "FINISHED")
    # the run's own training examples (indices into the training part; None: all of it), for every later
    # per-run quantity (train error, gap, probes) to use exactly these
    train_idx = p.train_idx
    indices = None if train_idx is None else train_idx.cpu().tolist()
    _write_json(run_dir / "result.json", {**row, "spec": spec.to_dict(), "train_indices": indices})
    return {**row, "cached": False}


def execute_population(
    study: Study,
    specs: list[RunSpec],
    tracking_ctx: dict[str, Any],
    on_step_factory: Callable[[Any, RunSpec], Callable | None] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train ``specs`` (same model, data, optimizer family, batch size, steps and loop settings; seeds and
    hyper-parameters differ) as one population (:mod:`sgdlab.train.population`); per key exactly what
    :func:`execute_run` gives: cached results, locks, MLflow child runs, checkpoints, resume, ``result.json``.

    Returns one entry per spec, in order: its runs-table row, or ``{"run_key", "error"}`` for a key that
    failed (the others go on). Keys another process is training are left to it (then read back, as
    ``execute_run`` does). When the model cannot be vectorised (BatchNorm, dropout) the keys train one after
    another and their child runs say why (tag ``trained_alone_because``).
    """
    from contextlib import ExitStack

    from sgdlab import interrupt, tracking
    from sgdlab.locks import RunLock
    from sgdlab.train.population import Member, population_blocker, train_population

    interrupt.check(f"population of {len(specs)} not started")
    out: dict[str, dict[str, Any]] = {}
    locks, later, todo = [], [], []
    try:
        for spec in specs:
            run_dir = study.run_dir(spec.key)
            done = read_result(run_dir)
            if done is None:
                lock = RunLock(run_dir.with_name(f"{run_dir.name}.lock"))
                if not lock.acquire(blocking=False):
                    later.append(spec)  # another process trains it: wait for it below, alone
                    continue
                locks.append(lock)
                done = read_result(run_dir)  # finished between the first look and the lock
            if done is not None:
                out[spec.key] = {**_ensure_tracked(study, spec, run_dir, done, tracking_ctx), "cached": True}
            else:
                todo.append(spec)
        prepared = []
        for spec in todo:
            try:
                prepared.append(_prepare_run(study, spec, tracking_ctx, on_step_factory, study.run_dir(spec.key)))
            except Exception as exc:  # e.g. a damaged data file: this key fails, the others go on
                out[spec.key] = {"run_key": spec.key, "error": f"{type(exc).__name__}: {exc}"}
        blocker = (
            population_blocker(prepared[0].model, prepared[0].spec.optimizer, prepared[0].cfg) if prepared else None
        )
        if len(prepared) == 1 or blocker:
            for p in prepared:
                try:
                    out[p.spec.key] = _train_prepared(study, p, progress, blocker)
                except interrupt.Interrupted:
                    raise
                except Exception as exc:
                    out[p.spec.key] = {"run_key": p.spec.key, "error": f"{type(exc).__name__}: {exc}"}
        elif prepared:
            with ExitStack() as stack:
                sinks = [stack.enter_context(tracking.MetricBuffer(p.run_id, logged=p.logged)) for p in prepared]
                members = [
                    Member(p.model, p.spec.optimizer, p.spec.hparams, p.tensors, p.cfg, p.run_dir / "checkpoint.pt",
                           sink, p.hook)
                    for p, sink in zip(prepared, sinks)
                ]  # fmt: skip
                try:
                    results = train_population(members, progress=progress)
                except BaseException as exc:
                    for p in prepared:
                        _end_failed(p.run_id, exc)
                    raise
                vals = {}
                for p, sink, res in zip(prepared, sinks, results):
                    if not isinstance(res, BaseException):
                        vals[p.spec.key] = _log_val(p, sink, res)
            for p, res in zip(prepared, results):
                if isinstance(res, BaseException):
                    _end_failed(p.run_id, res)
                    out[p.spec.key] = {"run_key": p.spec.key, "error": f"{type(res).__name__}: {res}"}
                else:
                    out[p.spec.key] = _record_run(study, p, res, vals[p.spec.key], len(prepared))
    finally:
        for lock in locks:
            lock.release()
    for spec in later:
        try:
            out[spec.key] = execute_run(study, spec, tracking_ctx, on_step_factory, progress)
        except interrupt.Interrupted:
            raise
        except Exception as exc:
            out[spec.key] = {"run_key": spec.key, "error": f"{type(exc).__name__}: {exc}"}
    return [out[s.key] for s in specs]
