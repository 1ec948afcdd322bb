"""Phase ``prepare``: every configured dataset -> ``<data.root>/processed/<name>/{train,test}.parquet``.

One unit per dataset. The library check in :func:`sgdlab.data.prepare_dataset` is the cache: files that
exist, were made with these settings and hash to their recorded content are kept; anything missing,
truncated, corrupt or made with other settings is rebuilt. A rebuilt dataset gets an MLflow child run
with its sizes and data hash.
"""

from __future__ import annotations

import hashlib

from sgdlab import tracking
from sgdlab.phases import Outcome, Plan, Unit, raise_failures
from sgdlab.study import Study


def plan(study: Study, datasets: list[str] | None = None) -> Plan:
    names = list(datasets or study.cfg.data.datasets)
    unknown = [n for n in names if n not in study.cfg.data.datasets]
    if unknown:
        raise ValueError(f"dataset(s) {unknown} are not in data.datasets {list(study.cfg.data.datasets)}")
    return Plan(
        [Unit(n, {"name": n}) for n in names], params=tracking.flatten({"data": study.cfg.data.model_dump(mode="json")})
    )


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.data import prepare_dataset

    name = payload["name"]
    result = prepare_dataset(name, study.cfg.data, study.data_root)
    out = {**result.__dict__, "mlflow_run_id": None}
    if result.rebuilt:  # a kept dataset already has its run
        run_id = tracking.start_run(
            ctx["experiment_id"],
            f"prepare-{name}",
            {**ctx["tags"], "data_hash": result.data_hash, "phase": "prepare"},
            parent_run_id=ctx["parent_run_id"],
            params={"dataset": name, "source": result.source},
        )
        tracking.log_metrics(run_id, {"data/n_train": result.n_train, "data/n_test": result.n_test})
        tracking.log_dataset(run_id, name, result.train_path, result.data_hash, context="training")
        tracking.log_dataset(run_id, f"{name}-test", result.test_path, result.data_hash, context="test")
        tracking.end_run(run_id)
        out["mlflow_run_id"] = run_id
    return out


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    raise_failures("prepare", outcomes)
    results = [o.value for o in outcomes]
    for r in results:
        tracking.log_dataset(ctx["parent_run_id"], r["name"], r["train_path"], r["data_hash"])
        print(
            f"prepared {r['name']}: {r['n_train']} train / {r['n_test']} test "
            f"({'rebuilt' if r['rebuilt'] else 'up to date'}) -> {r['train_path']}"
        )
    hashes = sorted(r["data_hash"] for r in results)
    combined = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    tracking.set_tags(ctx["parent_run_id"], {"data_hash": combined})
    return {"datasets": results}
