"""The study pipeline: prepare -> sweep (with in-training probes) -> probe checkpoints -> GAN -> predict ->
report, as phase subflows of one parent flow (each phase also runs alone). One MLflow parent run per
pipeline run; each phase's run is its child; every run carries the lineage tags.

``study_flow`` is the deployable entry point (it takes a params path, overrides and a profile, so a
scheduled run reads the current params.yaml when it starts).
"""


from sgdlab.paths import apply_prefect_env

apply_prefect_env()

import time  # noqa: E402

from prefect import flow  # noqa: E402

from flows.common import parent_run, pipeline_run  # noqa: E402
from flows.generalization import gan_flow, predict_flow  # noqa: E402
from flows.prepare import prepare_flow  # noqa: E402
from flows.probe import probe_flow  # noqa: E402
from flows.report import report_flow  # noqa: E402
from flows.runners import configured, make_task_runner  # noqa: E402
from flows.sweep import sweep_flow  # noqa: E402
from sgdlab import tracking  # noqa: E402
from sgdlab.config import Config, load_config  # noqa: E402

PHASES = ("prepare", "sweep", "probe", "gan", "predict", "report")


@flow(name="pipeline")
def pipeline_flow(cfg: Config, phases: list[str] | None = None) -> dict:
    """Run the phases in order (default: all) under one MLflow parent run."""
    phases = list(phases or PHASES)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phase(s) {unknown}; phases are: {', '.join(PHASES)}")
    out: dict = {"phases": {}, "timings_s": {}}
    params = {"profile": cfg.profile or "", "phases": ",".join(phases)}
    with parent_run(cfg, "pipeline", "pipeline", params=params) as (_exp, run, _tags):
        with pipeline_run(run):
            for phase in phases:
                t0 = time.perf_counter()
                if phase == "prepare":
                    out["phases"][phase] = configured(prepare_flow, cfg)(cfg)
                elif phase == "sweep":
                    out["phases"][phase] = configured(sweep_flow, cfg)(cfg)
                elif phase == "probe":
                    out["phases"][phase] = configured(probe_flow, cfg)(cfg)
                elif phase == "gan":
                    out["phases"][phase] = configured(gan_flow, cfg)(cfg)
                elif phase == "predict":
                    out["phases"][phase] = configured(predict_flow, cfg)(cfg)
                elif phase == "report":
                    out["phases"][phase] = configured(report_flow, cfg)(cfg)
                out["timings_s"][phase] = time.perf_counter() - t0
        tracking.log_metrics(run, {f"pipeline/{k}_s": v for k, v in out["timings_s"].items()})
        out["mlflow_run_id"] = run
    return out


def run_pipeline(cfg: Config, phases: list[str] | None = None) -> dict:
    return pipeline_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg, phases)


@flow(name="study")
def study_flow(params_path: str | None = None, overrides: list[str] | None = None, profile: str | None = None,
               phases: list[str] | None = None) -> dict:
    """Deployable entry point: load the config when the run starts, then run the pipeline."""
    cfg = load_config(params_path, overrides or [], profile)
    return pipeline_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg, phases)
