"""The study pipeline: prepare -> sweep (with in-training probes) -> probe checkpoints -> GAN -> predict ->
report, as phase subflows of one parent flow (each phase also runs alone). One MLflow parent run per
pipeline run; each phase's run is its child; every run carries the lineage tags.

``study_flow`` is the deployable entry point (it takes a params path, overrides and a profile, so a
scheduled run reads the current params.yaml when it starts).
"""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from prefect import flow  # noqa: E402

from flows.phases import parent_run, pipeline_run, run_phase  # noqa: E402
from flows.runners import make_task_runner  # noqa: E402
from flows.serve import SERVED_ENV, check_run_parameters  # noqa: E402
from sgdlab import (
    interrupt,  # noqa: E402
    tracking,  # noqa: E402
)
from sgdlab.config import Config, load_config  # noqa: E402
from sgdlab.phases import PHASES, get_phase  # noqa: E402
from sgdlab.validate import validate_config  # noqa: E402


@flow(name="pipeline")
def pipeline_flow(cfg: Config, phases: list[str] | None = None) -> dict:
    """Run the phases in order (default: all) under one MLflow parent run."""
    interrupt.reclaim()  # between phases too, SIGTERM/SIGINT are ours (see sgdlab.interrupt)
    phases = [get_phase(p).name for p in (phases or PHASES)]  # unknown names refused before any run
    validate_config(cfg)  # everything knowable from the config, before any compute
    out: dict = {"phases": {}, "timings_s": {}}
    with parent_run(cfg, "pipeline", params={"profile": cfg.profile or "", "phases": ",".join(phases)}) as ctx:
        with pipeline_run(ctx["parent_run_id"]):
            for phase in phases:
                interrupt.check(f"pipeline: stopped before {phase}")
                t0 = time.perf_counter()
                out["phases"][phase] = run_phase(cfg, phase)
                out["timings_s"][phase] = time.perf_counter() - t0
        tracking.log_metrics(ctx["parent_run_id"], {f"pipeline/{k}_s": v for k, v in out["timings_s"].items()})
        out["mlflow_run_id"] = ctx["parent_run_id"]
        out["experiment_id"] = ctx["experiment_id"]
    return out


def run_pipeline(cfg: Config, phases: list[str] | None = None) -> dict:
    return pipeline_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg, phases)


@flow(name="study")
def study_flow(
    params_path: str | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
    phases: list[str] | None = None,
) -> dict:
    """Deployable entry point: load the config when the run starts, then run the pipeline. Under
    ``sgdlab serve`` the run's parameters are checked first (see ``flows.serve.check_run_parameters``)."""
    served = os.environ.get(SERVED_ENV)
    if served:
        check_run_parameters(json.loads(served), params_path, overrides, profile)
    cfg = load_config(params_path, overrides or [], profile)
    return run_pipeline(cfg, phases)
