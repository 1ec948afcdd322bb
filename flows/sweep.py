"""Sweep flow: the grid of params.yaml -> one ``train-run`` task per run key -> ``runs.parquet``.

One MLflow parent run per sweep, one child run per training run. A diverged run is a result, not an
error; a run that raises is recorded as ``failed`` and the others go on; the flow fails at the end if
any run failed, after the table is written.
"""


from sgdlab.paths import apply_prefect_env, project_root

apply_prefect_env()

import os  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from flows.common import parent_run  # noqa: E402
from flows.prepare import prepare_flow  # noqa: E402
from flows.runners import configured, make_task_runner  # noqa: E402
from sgdlab import results, tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402
from sgdlab.sweep import expand  # noqa: E402
from tasks.train import train_run_task  # noqa: E402


def study_dirs(cfg: Config) -> tuple[Path, Path]:
    """(models dir, results dir) of the study: ``<models_dir>/<study>``, ``<results_dir>/<study>``."""
    root = project_root()
    return (root / cfg.study.models_dir / cfg.study.name).resolve(), (root / cfg.study.results_dir / cfg.study.name).resolve()


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), disable=os.environ.get("CI") == "true")


@flow(name="sweep")
def sweep_flow(cfg: Config) -> dict:
    """Train every run of the sweep (skipping finished keys, resuming interrupted ones)."""
    prep = configured(prepare_flow, cfg)(cfg, [cfg.train.dataset])[0]
    n_train = prep["n_train"] - int(round(cfg.data.val_fraction * prep["n_train"]))
    specs = expand(cfg, prep["data_hash"], n_train)  # validates everything before any training
    models_dir, results_dir = study_dirs(cfg)
    data = {"name": cfg.train.dataset, "root": str((project_root() / cfg.data.root).resolve()),
            "val_fraction": cfg.data.val_fraction, "probe_size": cfg.data.probe_size,
            "split_seed": cfg.data.split_seed}
    params = tracking.flatten({"train": cfg.train.model_dump(mode="json"), "sweep": cfg.sweep.model_dump(mode="json")})
    rows: list[dict] = []
    with parent_run(cfg, "sweep", "sweep", prep["data_hash"], params={**params, "n_runs": len(specs)}) as (exp, run, tags):
        ctx = {"experiment_id": exp, "parent_run_id": run, "tags": tags, "study": cfg.study.name}
        probe = cfg.probe.model_dump()
        futures = {train_run_task.submit(s.key, s.to_dict(), str(models_dir / s.key), data, ctx, cfg.study.device,
                                         probe): s for s in specs}
        failed = []
        with _progress(len(specs)) as bar:
            task = bar.add_task("", total=len(specs))
            for fut in as_completed(list(futures)):
                spec = futures[fut]
                try:
                    row = fut.result()
                except Exception as exc:  # recorded; the other runs go on
                    row = {"run_key": spec.key, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                           "optimizer": spec.optimizer, "lr": spec.lr, "batch_size": spec.batch_size,
                           "seed": spec.seed, "model": spec.model, "variant": spec.variant}
                    failed.append(f"{spec.label}: {row['reason']}")
                rows.append(row)
                bar.update(task, advance=1, description=f"{spec.label}: {row['status']}")
        order = {s.key: i for i, s in enumerate(specs)}
        rows.sort(key=lambda r: order[r["run_key"]])
        table_path = results.write_table(rows, results_dir / "runs.parquet")
        summary = results.summarize(rows)
        tracking.log_artifact(run, table_path)
        tracking.log_metrics(run, {"sweep/runs": len(rows), "sweep/trained": sum(not r.get("cached", True) for r in rows),
                                   "sweep/diverged": sum(r["status"] == "diverged" for r in rows),
                                   "sweep/failed": len(failed)})
        create_table_artifact(key="sweep-summary", table=[{k: (round(v, 4) if isinstance(v, float) else v)
                                                           for k, v in s.items()} for s in summary],
                              description=f"Sweep of study {cfg.study.name}: test accuracy mean ± std over seeds.")
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(rows)} runs failed (table written to {table_path}):\n"
                               + "\n".join(failed))
    return {"runs_table": str(table_path), "n_runs": len(rows), "rows": rows, "summary": summary}


def run_sweep(cfg: Config) -> dict:
    return sweep_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg)
