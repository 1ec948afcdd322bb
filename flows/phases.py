"""One Prefect flow per phase, all from one body: plan -> map the phase's unit task -> finish.

Each phase flow run gets an MLflow run (a child of the pipeline's run inside ``sgdlab run``, top-level
when the phase runs alone) linked to the Prefect flow run by a link artifact; the phase's own Prefect
artifacts (tables, markdown) are published from what ``finish`` returns. Every phase uses the configured
task runner (``run_phase``), also when called from the CLI or as a subflow.
"""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from flows.runners import check_resources, make_task_runner, submitting  # noqa: E402
from sgdlab import interrupt, tracking  # noqa: E402
from sgdlab.config import Config  # noqa: E402
from sgdlab.phases import PHASES, Outcome, get_phase  # noqa: E402
from tasks.phase import unit_task  # noqa: E402

# The MLflow run of the enclosing pipeline flow run, if any: phase runs nest under it. A plain dict, not a
# ContextVar: Prefect's runner cloudpickles served flows by value, and ContextVars cannot be pickled.
_PIPELINE: dict[str, str | None] = {"run_id": None}


def current_flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


@contextmanager
def pipeline_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the parent of the phase runs started inside."""
    previous, _PIPELINE["run_id"] = _PIPELINE["run_id"], run_id
    try:
        yield
    finally:
        _PIPELINE["run_id"] = previous


@contextmanager
def parent_run(cfg: Config, name: str, data_hash: str = "", params: dict | None = None) -> Iterator[dict]:
    """An MLflow run for one flow run; yields the tracking context of its units (experiment id, run id,
    lineage tags); marks it FAILED if the flow raises."""
    from prefect.artifacts import create_link_artifact

    exp_id = tracking.ensure_experiment(cfg.experiment_name)
    tracking.close_orphaned_runs(exp_id)  # runs left RUNNING by a killed process
    tags = tracking.lineage_tags(cfg.study.name, data_hash, current_flow_run_id(), phase=name)
    run_id = tracking.start_run(exp_id, name, tags, params=params, parent_run_id=_PIPELINE["run_id"])
    create_link_artifact(
        key="mlflow-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()),  # Prefect keys: lowercase, digits, dashes
        link=tracking.run_url(exp_id, run_id),
        link_text=f"MLflow run {run_id} (start `sgdlab ui` first)",
        description=f"The MLflow run of this {name} flow run.",
    )
    try:
        yield {"experiment_id": exp_id, "parent_run_id": run_id, "tags": tags}
    except BaseException as exc:
        tracking.end_run(run_id, "KILLED" if isinstance(exc, (interrupt.Interrupted, KeyboardInterrupt)) else "FAILED")
        raise
    tracking.end_run(run_id, "FINISHED")


class _Progress:
    """A rich bar on a terminal; otherwise a plain line at most every 5 s (quiet under ``CI=true``)."""

    def __init__(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.t0, self.last = phase, total, 0, time.monotonic(), 0.0
        self.quiet = os.environ.get("CI", "").lower() in ("true", "1") or total <= 1
        self.bar = None
        if not self.quiet and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn(phase),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            )
            self.task = self.bar.add_task("", total=total)
            self.bar.start()

    def step(self, label: str, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=f"{label}: {status}")
        elif not self.quiet and (time.monotonic() - self.last >= 5 or self.done == self.total):
            self.last = time.monotonic()
            print(
                f"{self.phase}: {self.done}/{self.total} done ({label}: {status}) [{self.last - self.t0:.0f} s]",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _publish(artifacts: list[dict]) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    for a in artifacts:
        if a["kind"] == "table":
            create_table_artifact(key=a["key"], table=a["table"], description=a["description"])
        else:
            create_markdown_artifact(key=a["key"], markdown=a["markdown"], description=a["description"])


def phase_body(cfg: Config, name: str, options: dict | None = None) -> dict:
    """Plan, map the units over the task runner, finish; inside the phase's MLflow run."""
    interrupt.reclaim()  # SIGTERM/SIGINT stop the training threads, not only the flow engine
    phase = get_phase(name)
    study = phase.study(cfg)
    plan = phase.plan(study, **(options or {}))  # validates before any compute or MLflow run
    check_resources(cfg)  # a GPU study on a cluster without GPU workers: refused before its MLflow run
    with parent_run(cfg, name, plan.data_hash, plan.params) as ctx:
        with submitting(cfg):  # e.g. GPU=1 per unit on a cluster of GPU workers
            futures = {unit_task.submit(name, u.label, cfg, u.payload, ctx): u for u in plan.units}
        outcomes: dict[int, Outcome] = {}
        progress = _Progress(name, len(futures))
        order = {id(u): i for i, u in enumerate(plan.units)}
        try:
            for fut in as_completed(list(futures)):  # every unit ends: a stop request ends them within a step
                u = futures[fut]
                try:
                    o = Outcome(u, fut.result())
                except Exception as exc:  # recorded; finish decides (sweep: a failed row; others: raise)
                    o = Outcome(u, error=exc)
                outcomes[order[id(u)]] = o
                status = "stopped" if isinstance(o.error, interrupt.Interrupted) else "failed"
                progress.step(u.label, (o.value or {}).get("status", "ok") if o.error is None else status)
        finally:
            progress.close()
        stopped = sum(isinstance(o.error, interrupt.Interrupted) for o in outcomes.values())
        interrupt.check(f"{name}: {stopped} of {len(plan.units)} units stopped, their checkpoints written")
        out = phase.finish(study, plan, [outcomes[i] for i in sorted(outcomes)], ctx)
        _publish(out.pop("artifacts", []))
    return out


def _make_flow(name: str):
    def run(cfg: Config, options: dict | None = None) -> dict:
        return phase_body(cfg, name, options)

    run.__name__ = run.__qualname__ = f"{name}_flow"
    run.__doc__ = f"Phase {name}: {PHASES[name].summary}."
    return flow(name=name)(run)


PHASE_FLOWS = {name: _make_flow(name) for name in PHASES}


def run_phase(cfg: Config, name: str, **options) -> dict:
    """Run phase ``name`` as a Prefect flow (a subflow inside a pipeline run) with the configured task runner."""
    return PHASE_FLOWS[get_phase(name).name].with_options(task_runner=make_task_runner(cfg.orchestration))(cfg, options)
