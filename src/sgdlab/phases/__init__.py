"""The study's phases as plain library functions, and the one registry of them (:data:`PHASES`).

Every phase has the same three-part shape, which the one generic Prefect flow (``flows/phases.py``), the
CLI and the DVC stages all drive:

- ``plan(study, **options) -> Plan``: validate and list the units of work (datasets, run specs,
  checkpoints, ...) plus the phase's MLflow params; no heavy compute;
- ``unit(study, payload, ctx) -> dict``: one unit (a Prefect task maps it over the plan; it must be
  idempotent: finished work is read back, not redone);
- ``finish(study, plan, outcomes, ctx) -> dict``: write the phase's outputs (paths from the Study's
  :data:`~sgdlab.study.OUTPUTS` table), log to the phase's MLflow run, raise if a unit failed (after
  writing what succeeded).

A phase reads only the params sections it declares in :data:`PHASES` (the ``Study`` it gets raises on any
other section, so ``dvc.yaml``'s ``params:``, generated from the same declaration, cannot miss one).
``tracking`` and ``orchestration`` are execution-only (where runs are logged, how many workers) and are
readable everywhere; they never change an output.

Adding a phase: a module here with plan/unit/finish, its entry in :data:`PHASES`, its outputs in
``sgdlab.study.OUTPUTS``, a CLI command, ``dvc.yaml`` regenerated (``sgdlab dvc-yaml --write``), a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sgdlab.config import Config
from sgdlab.study import OUTPUTS, Study

EXECUTION_SECTIONS = ("tracking", "orchestration")


class UndeclaredSectionError(AttributeError):
    """A phase read a params section it does not declare (so DVC would not re-run it when that changes)."""


@dataclass(frozen=True)
class Unit:
    """One unit of a phase's work: a label for logs and task names, and a small picklable payload."""

    label: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    units: list[Unit]
    params: dict[str, Any] = field(default_factory=dict)  # the phase's MLflow run params
    data_hash: str = ""  # lineage tag of the phase's MLflow run
    extra: dict[str, Any] = field(default_factory=dict)  # what finish needs besides the outcomes


@dataclass(frozen=True)
class Outcome:
    unit: Unit
    value: dict[str, Any] | None = None
    error: BaseException | None = None


class PhaseFailed(RuntimeError):
    """Some units of a phase failed after the healthy ones' outputs were written; ``lines`` has one line per
    failed unit (its label and error), which the CLI prints without a traceback before exiting 1."""

    def __init__(self, summary: str, lines: list[str]) -> None:
        self.summary, self.lines = summary, list(lines)
        super().__init__(summary + "".join(f"\n  {line}" for line in lines))


def raise_failures(phase: str, outcomes: list[Outcome]) -> None:
    """Raise one error naming every failed unit (call after the healthy units' outputs are written)."""
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        lines = [f"{o.unit.label}: {type(o.error).__name__}: {str(o.error).splitlines()[0][:500]}" for o in failed]
        raise PhaseFailed(f"{phase}: {len(failed)} of {len(outcomes)} units failed", lines)


class SectionView:
    """A :class:`Config` that lets a phase read only its declared sections (see module docstring)."""

    def __init__(self, cfg: Config, phase: str, sections: tuple[str, ...]) -> None:
        self._cfg, self._phase, self._allowed = cfg, phase, set(sections) | set(EXECUTION_SECTIONS)

    def __getattr__(self, name: str) -> Any:
        if name in Config.model_fields and name not in self._allowed and name not in ("profile", "profiles"):
            raise UndeclaredSectionError(
                f"phase {self._phase!r} reads params section {name!r} but does not declare it in "
                f"sgdlab.phases.PHASES (declared: {', '.join(sorted(self._allowed))}); declare it and regenerate "
                "dvc.yaml (`sgdlab dvc-yaml --write`)"
            )
        return getattr(self._cfg, name)

    @property
    def experiment_name(self) -> str:
        return self._cfg.experiment_name

    def unwrap(self) -> Config:
        return self._cfg


@dataclass(frozen=True)
class Phase:
    """A phase: its name, the params sections it reads, the outputs of earlier phases it reads
    (``"sweep.runs"``), its library module (plan/unit/finish) and its DVC stage command."""

    name: str
    summary: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    module: str
    cmd: str

    @property
    def lib(self):
        return importlib.import_module(self.module)

    @property
    def outputs(self):
        return OUTPUTS[self.name]

    def study(self, cfg: Config, root=None) -> Study:
        """The Study this phase works on: paths from ``cfg``, reads limited to the declared sections."""
        study = Study(cfg, root)
        study.cfg = SectionView(cfg, self.name, self.sections)  # type: ignore[assignment]
        return study

    def plan(self, study: Study, **options) -> Plan:
        return self.lib.plan(study, **options)

    def unit(self, study: Study, payload: dict, ctx: dict) -> dict:
        return self.lib.unit(study, payload, ctx)

    def finish(self, study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
        return self.lib.finish(study, plan, outcomes, ctx)


PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase(
            "prepare",
            "datasets from local sources/generators -> Parquet",
            ("study", "data"),
            (),
            "sgdlab.phases.prepare",
            "sgdlab prepare",
        ),
        Phase(
            "sweep",
            "train the grid of optimizers x lrs x batch sizes x seeds x models (+ variants)",
            ("study", "data", "train", "sweep", "probe"),
            ("prepare.processed",),
            "sgdlab.phases.sweep",
            "sgdlab sweep",
        ),
        Phase(
            "probe",
            "Hessian of every finished run at its final checkpoint",
            ("study", "data", "train", "probe"),
            ("prepare.processed", "sweep.models", "sweep.runs"),
            "sgdlab.phases.probe",
            "sgdlab probe",
        ),
        Phase(
            "gan",
            "class-conditional GAN on the training part -> labelled synthetic set",
            ("study", "data", "train", "gan"),
            ("prepare.processed",),
            "sgdlab.phases.gan",
            "sgdlab gan train",
        ),
        Phase(
            "predict",
            "every predictor of test error and generalization measure, scored",
            ("study", "data", "train", "probe", "predict"),
            (
                "prepare.processed",
                "sweep.models",
                "sweep.runs",
                "probe.probe",
                "gan.synthetic",
                "gan.meta",
                "gan.snapshots",
            ),
            "sgdlab.phases.predict",
            "sgdlab predict",
        ),
        Phase(
            "report",
            "figures and one HTML page from the phase tables and MLflow curves",
            ("study",),
            (
                "sweep.runs",
                "probe.probe",
                "probe.densities",
                "predict.predictions",
                "predict.scores",
                "predict.gan_curve",
                "gan.samples",
            ),
            "sgdlab.phases.report",
            "sgdlab report",
        ),
    )
}


def get_phase(name: str) -> Phase:
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; phases are: {', '.join(PHASES)}")
    return PHASES[name]


def run_local(cfg: Config, name: str, mapper: Callable | None = None, **options) -> dict:
    """Run one phase in this process without Prefect (tests, notebooks): plan, every unit in turn, finish.
    MLflow runs are real; ``ctx`` is a parent run of the study's experiment."""
    from sgdlab import tracking

    phase = get_phase(name)
    study = phase.study(cfg)
    plan = phase.plan(study, **options)
    exp = study.experiment_id()
    tracking.close_orphaned_runs(exp)
    tags = tracking.lineage_tags(study.name, plan.data_hash, phase=name)
    run = tracking.start_run(exp, name, tags, params=plan.params)
    ctx = {"experiment_id": exp, "parent_run_id": run, "tags": tags}
    outcomes = []
    for u in plan.units:
        try:
            outcomes.append(Outcome(u, phase.unit(study, u.payload, ctx)))
        except Exception as exc:  # noqa: BLE001 - recorded; finish decides
            outcomes.append(Outcome(u, error=exc))
    try:
        out = phase.finish(study, plan, outcomes, ctx)
    except BaseException:
        tracking.end_run(run, "FAILED")
        raise
    tracking.end_run(run)
    return out
