"""Probe flow: curvature of every finished run of the sweep at its final checkpoint.

Writes ``results/<study>/probe.parquet`` (``run_key`` + ``hessian/*`` columns; ``sgdlab.results.load_runs``
joins it onto ``runs.parquet``) and ``final/hessian/*`` metrics to each run's MLflow child run; spectral
densities (when ``probe.density_probes`` > 0) go to ``results/<study>/densities.json``. The sweep's own
table is left alone: it is the sweep stage's DVC output.
"""


from sgdlab.paths import apply_prefect_env, project_root

apply_prefect_env()

import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow  # noqa: E402

from flows.common import parent_run  # noqa: E402
from flows.runners import make_task_runner  # noqa: E402
from flows.sweep import study_dirs  # noqa: E402
from sgdlab import results, tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402
from tasks.probe import probe_task  # noqa: E402


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@flow(name="probe")
def probe_flow(cfg: Config) -> dict:
    _, results_dir = study_dirs(cfg)
    table = results_dir / "runs.parquet"
    rows = results.read_table(table)  # a missing table names itself and says to run the sweep
    todo = [r for r in rows if r.get("status") == "finished"]
    data = {"name": cfg.train.dataset, "root": str((project_root() / cfg.data.root).resolve()),
            "val_fraction": cfg.data.val_fraction, "probe_size": cfg.data.probe_size, "split_seed": cfg.data.split_seed}
    probe = cfg.probe.model_dump()
    data_hash = rows[0]["data_hash"] if rows else ""
    with parent_run(cfg, "probe", "probe", data_hash, params=tracking.flatten({"probe": probe})) as (_exp, run, _tags):
        futures = {}
        for r in todo:
            spec = json.loads(Path(r["checkpoint"]).with_name("result.json").read_text())["spec"]
            futures[r["run_key"]] = probe_task.submit(r["run_key"], spec, r["checkpoint"], _sha(r["checkpoint"]), data,
                                                      probe, cfg.study.device, r["mlflow_run_id"])
        out = {k: f.result() for k, f in futures.items()}
        updates = {k: {m: v for m, v in o.items() if not m.startswith("_")} for k, o in out.items()}
        probe_table = results.write_table([{"run_key": k, **m} for k, m in updates.items()], results_dir / "probe.parquet")
        densities = {k: o["_density"] for k, o in out.items() if "_density" in o}
        (results_dir / "densities.json").write_text(json.dumps(densities))
        tracking.log_metrics(run, {"probe/runs": len(out)})
        tracking.log_artifact(run, probe_table)
    return {"runs_table": str(table), "probe_table": str(probe_table), "probed": len(out), "metrics": updates}


def run_probe(cfg: Config) -> dict:
    return probe_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg)
