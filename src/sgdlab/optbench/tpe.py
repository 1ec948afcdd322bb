"""Adaptive hyper-parameter search (``sweep.optimizers[i].search.kind: tpe``) with Optuna's TPE sampler.

A static search (:mod:`sgdlab.optbench.search`) fixes its trials before anything runs. TPE (Bergstra et al.,
NeurIPS 2011, "Algorithms for Hyper-Parameter Optimization") chooses each trial from the results of the
earlier ones, so a study is a sequential loop: *ask* Optuna for a point, train it (one run key per sweep seed,
through :func:`sgdlab.runner.execute_run`: MLflow child run, checkpoints, caching, as for any sweep run),
*tell* Optuna the objective. Each study of ``S`` is one unit of the sweep phase (independent studies run in
parallel where the orchestration has workers).

Resume with no trial lost or repeated
    The Optuna storage is a SQLite file in the study's models directory
    (``models/<study>/searches/<search id>.sqlite3``; the id hashes everything the search's runs share). On
    re-run the loop reads it back: finished trials are counted (their run keys are cache hits when the
    runs table is rebuilt), a trial left ``RUNNING`` by a kill is continued with its stored parameters (its
    runs resume from their checkpoints), and new trials are asked only until ``trials`` are finished.
    Trial ``n``'s run keys carry ``extra.search = {kind, seed, study, trial: n, id}``.

Reproducible asks
    Each ask uses a fresh ``TPESampler`` seeded from ``(seed, study, trial number)``, so a point depends only
    on the study's history, never on a sampler's random state held in memory: an interrupted search asks
    the same points as an uninterrupted one (the runs themselves are bit-exact on resume).

Objective
    ``search.objective.metric`` (validation or training metrics only, never test) of the trial's final model,
    averaged over the sweep's seeds. A run that diverged (or a non-finite metric) scores the worst value
    (``+inf`` when minimising): the estimator learns that the region is bad instead of ignoring it, which
    is what Optuna does with failed trials. A trial whose run raised is told ``FAIL`` and still counts as
    one of the ``trials`` (a failure is a result; the phase reports it after the table is written).

Why Optuna: a maintained implementation of TPE with durable storage; only the resume/seeding policy above
is sgdlab's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sgdlab.config import SearchConfig
from sgdlab.runspec import RunSpec


@dataclass(frozen=True)
class SearchUnit:
    """One TPE study: the sweep entry's search, its study index, and one template spec per sweep seed
    (base hyper-parameters; a trial replaces them with its point)."""

    entry: int  # index in sweep.optimizers
    study_index: int
    search: SearchConfig
    templates: tuple[RunSpec, ...]

    @property
    def search_id(self) -> str:
        blob = json.dumps(
            {
                "entry": self.entry,
                "study": self.study_index,
                "search": self.search.model_dump(mode="json"),
                "templates": [t.to_dict() for t in self.templates],
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        t = self.templates[0]
        seeds = ",".join(str(x.seed) for x in self.templates)
        return (
            f"tpe search {t.optimizer} study {self.study_index} ({self.search.trials} trials, "
            f"{t.model} bs={t.batch_size} steps={t.steps} seeds {seeds}; id {self.search_id})"
        )

    def to_payload(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "study": self.study_index,
            "search": self.search.model_dump(mode="json"),
            "templates": [t.to_dict() for t in self.templates],
        }

    @classmethod
    def from_payload(cls, d: dict[str, Any]) -> SearchUnit:
        return cls(
            d["entry"],
            d["study"],
            SearchConfig.model_validate(d["search"]),
            tuple(RunSpec.from_dict(t) for t in d["templates"]),
        )

    def trial_specs(self, number: int, values: dict[str, float]) -> list[RunSpec]:
        """The run specs of trial ``number`` at point ``values`` (one per seed)."""
        from sgdlab.optbench import search
        from sgdlab.optim import resolve_hparams

        sc = self.search
        meta = {"kind": "tpe", "seed": sc.seed, "study": self.study_index, "trial": number, "id": self.search_id}
        out = []
        for t in self.templates:
            hp = resolve_hparams(t.optimizer, search.apply(values, t.hparams))
            out.append(replace(t, hparams=hp, extra={**t.extra, "search": meta}))
        return out


def storage_path(models_dir: Path, search_id: str) -> Path:
    return Path(models_dir) / "searches" / f"{search_id}.sqlite3"


def distributions(search: SearchConfig) -> dict[str, Any]:
    from optuna.distributions import FloatDistribution

    return {k: FloatDistribution(p.low, p.high, log=p.log) for k, p in sorted(search.space.items())}


def ask_seed(seed: int, study_index: int, number: int) -> int:
    """The sampler seed of trial ``number``: a hash, so neighbouring trials' seeds are unrelated."""
    h = hashlib.sha256(f"tpe:{seed}:{study_index}:{number}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def objective_value(rows: list[dict[str, Any]], metric: str, direction: str) -> tuple[float, bool]:
    """Mean of ``metric`` over the trial's runs, and whether any run diverged or gave a non-finite value
    (then the worst value, see module docstring)."""
    worst = math.inf if direction == "minimize" else -math.inf
    vals = []
    for r in rows:
        v = r.get(metric)
        if r.get("status") != "finished" or v is None or not math.isfinite(float(v)):
            return worst, True
        vals.append(float(v))
    return sum(vals) / len(vals), False


def open_study(unit: SearchUnit, models_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sgdlab prints its own line per trial
    path = storage_path(models_dir, unit.search_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.create_study(
            storage=f"sqlite:///{path}",
            study_name=unit.search_id,
            direction=unit.search.objective.direction,
            load_if_exists=True,
        )
    except Exception as exc:  # a corrupt or foreign file: name it, keep it (nothing is deleted)
        raise RuntimeError(
            f"{path}: cannot open the Optuna storage of {unit.label}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}; "
            "move the file away to restart this search from its first trial (finished runs are reused)"
        ) from exc


def run_search(
    unit: SearchUnit,
    models_dir: Path,
    train_run: Callable[[RunSpec], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or resume) one TPE study until ``search.trials`` trials are finished; return every trial's rows
    (each with ``search_value``; a run that raised gives ``{"run_key", "error", "spec"}``), in trial order.

    ``train_run(spec)`` trains one key or returns its stored row (the sweep phase passes
    :func:`sgdlab.runner.execute_run`); it may raise ``Interrupted`` (then the trial stays ``RUNNING`` and a
    re-run continues it)."""
    import optuna
    from optuna.trial import TrialState

    from sgdlab.interrupt import Interrupted

    sc = unit.search
    study = open_study(unit, models_dir)
    dists = distributions(sc)
    rows_by_trial: dict[int, list[dict[str, Any]]] = {}
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if len(finished) >= sc.trials and not running:
            break
        if running:  # left by a kill: continue it with its stored point (never re-ask)
            number, values, how = running[0].number, dict(running[0].params), "continued"
        else:
            study.sampler = optuna.samplers.TPESampler(
                seed=ask_seed(sc.seed, unit.study_index, len(trials)),
                n_startup_trials=sc.startup_trials,
            )
            trial = study.ask(dists)
            number, values, how = trial.number, dict(trial.params), "asked"
            trial.set_user_attr("run_keys", [s.key for s in unit.trial_specs(number, values)])
        specs = unit.trial_specs(number, values)
        point = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        log(f"{unit.label}: trial {number + 1}/{sc.trials} ({how}) {point}")
        rows, failed = [], None
        for spec in specs:
            try:
                rows.append(train_run(spec))
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as exc:  # the run is a failed result; the search goes on
                failed = f"{type(exc).__name__}: {exc}"
                rows.append({"run_key": spec.key, "error": failed, "spec": spec.to_dict()})
        if failed is not None:
            study.tell(number, state=TrialState.FAIL)
            value, diverged = math.nan, False
        else:
            value, diverged = objective_value(rows, sc.objective.metric, sc.objective.direction)
            study.tell(number, value)
        note = "failed" if failed else ("diverged" if diverged else f"{sc.objective.metric}={value:.4g}")
        log(f"{unit.label}: trial {number + 1}/{sc.trials} done: {note}")
        for r in rows:
            r["search_value"] = value
        rows_by_trial[number] = rows
    # trials finished by an earlier process: their rows (cache hits), so the table lists every trial
    for t in study.get_trials(deepcopy=False):
        if t.number not in rows_by_trial and t.state.is_finished():
            rows = []
            for spec in unit.trial_specs(t.number, dict(t.params)):
                try:
                    rows.append(train_run(spec))
                except (Interrupted, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    rows.append({"run_key": spec.key, "error": f"{type(exc).__name__}: {exc}", "spec": spec.to_dict()})
            for r in rows:
                r["search_value"] = t.value if t.value is not None else math.nan
            rows_by_trial[t.number] = rows
    return [r for n in sorted(rows_by_trial) for r in rows_by_trial[n]]
