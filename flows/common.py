"""Helpers shared by flows: config loading, code hashes for cache keys, MLflow parent runs."""


import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sgdlab import tracking
from sgdlab.config import Config

SRC = Path(__file__).resolve().parents[1] / "src" / "sgdlab"


def code_hash(*subpaths: str) -> str:
    """sha256 of the library source files under ``src/sgdlab/<subpath>`` (a cache-key component, so a
    change to the science re-runs the work even when the task's own source is unchanged)."""
    h = hashlib.sha256()
    for sub in subpaths:
        p = SRC / sub
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(SRC)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def current_flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def combined_hash(hashes: list[str]) -> str:
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


# The MLflow run of the enclosing pipeline flow run, if any: phase runs nest under it. A plain dict, not a
# ContextVar: Prefect's runner cloudpickles served flows by value, and ContextVars cannot be pickled.
_PIPELINE: dict[str, str | None] = {"run_id": None}


@contextmanager
def pipeline_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the parent of the phase runs started inside."""
    previous, _PIPELINE["run_id"] = _PIPELINE["run_id"], run_id
    try:
        yield
    finally:
        _PIPELINE["run_id"] = previous


@contextmanager
def parent_run(cfg: Config, name: str, phase: str, data_hash: str = "", params: dict | None = None) -> Iterator[tuple[str, str, dict]]:
    """An MLflow run for one flow run: yields (experiment_id, run_id, lineage tags); marks it FAILED if the
    flow raises, and links the Prefect flow run to it with a link artifact. Inside a pipeline run it is a
    child of the pipeline's run; run alone, it is a top-level run of the study's experiment."""
    exp_id = tracking.ensure_experiment(cfg.experiment_name)
    tags = tracking.lineage_tags(cfg.study.name, data_hash, current_flow_run_id(), phase=phase)
    run_id = tracking.start_run(exp_id, name, tags, params=params, parent_run_id=_PIPELINE["run_id"])
    _link_artifact(exp_id, run_id, phase)
    try:
        yield exp_id, run_id, tags
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id, "FINISHED")


def _link_artifact(exp_id: str, run_id: str, phase: str) -> None:
    from prefect.artifacts import create_link_artifact

    create_link_artifact(
        key=f"mlflow-{phase}",
        link=f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run_id}",
        link_text=f"MLflow run {run_id} (start `sgdlab ui` first)",
        description=f"The MLflow parent run of this {phase} flow run.",
    )
