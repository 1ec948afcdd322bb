"""The recipe flow: a recipe's phases (the normal phase flows, as subflows), then its check, under one MLflow
parent run that carries the verdict (tags ``recipe.verdict``, metrics ``check/*``) and the figure."""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

import time  # noqa: E402

from prefect import flow  # noqa: E402

from flows.phases import parent_run, pipeline_run, run_phase  # noqa: E402
from flows.runners import make_task_runner  # noqa: E402
from sgdlab import tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402
from sgdlab.recipes import load_recipe_file  # noqa: E402
from sgdlab.validate import validate_config  # noqa: E402


@flow(name="recipe")
def recipe_flow(cfg: Config, name: str, scale: str = "quick", check_only: bool = False) -> dict:
    """Run recipe ``name``'s phases (unless ``check_only``), check the claim, build the report."""
    from sgdlab.recipes import run as recipe_run

    rf = load_recipe_file(name)
    validate_config(cfg)
    phases = [p for p in rf.phases if p != "report"]
    out: dict = {"phases": {}, "timings_s": {}}
    params = {"recipe": name, "scale": scale, "check_only": check_only, "phases": ",".join(rf.phases)}
    with parent_run(cfg, f"recipe:{name}", params=params) as ctx:
        with pipeline_run(ctx["parent_run_id"]):
            if not check_only:
                for phase in phases:
                    t0 = time.perf_counter()
                    out["phases"][phase] = run_phase(cfg, phase)
                    out["timings_s"][phase] = time.perf_counter() - t0
            t0 = time.perf_counter()
            verdict = recipe_run.check(cfg, name, scale, ctx["parent_run_id"])
            out["timings_s"]["check"] = time.perf_counter() - t0
            if not check_only and "report" in rf.phases:
                t0 = time.perf_counter()
                out["phases"]["report"] = run_phase(cfg, "report")
                out["timings_s"]["report"] = time.perf_counter() - t0
        tracking.log_metrics(ctx["parent_run_id"], {f"recipe/{k}_s": v for k, v in out["timings_s"].items()})
        out.update(verdict=verdict.to_dict(), mlflow_run_id=ctx["parent_run_id"], experiment_id=ctx["experiment_id"])
    return out


def run_recipe(cfg: Config, name: str, scale: str = "quick", check_only: bool = False) -> dict:
    return recipe_flow.with_options(task_runner=make_task_runner(cfg.orchestration))(cfg, name, scale, check_only)
