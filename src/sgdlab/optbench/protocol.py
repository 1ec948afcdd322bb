"""The optimizer benchmark: fixed workloads, equal-budget tuning, time-to-target scores (AlgoPerf's external
tuning protocol at the scale of one machine).

The benchmark is a file, ``benchmarks/optimizers.yaml`` (:class:`BenchFile`, validated strictly):

* ``protocol``: the search kind, ``S`` studies of ``T`` trials per optimizer and workload, the number of fresh
  seeds the chosen setting is re-run with, ``r_max``;
* ``optimizers``: per family the search space (the same on every workload) and fixed hyper-parameters;
* ``workloads``: per workload the study sections (dataset, model, steps budget, eval cadence) and the
  validation **target**, fixed in the file (never re-derived from the runs being scored);
* ``scales``: ``quick`` (2 CPU cores, about 20 minutes) and ``full`` (a GPU) overrides.

Each workload runs as two ordinary studies through the normal phases (so every trial is a run key with its
MLflow child run, checkpoint, resume and cache):

1. ``optbench-<workload>``: the tuning sweep, every optimizer with ``search: {kind, studies: S, trials: T}``;
2. ``optbench-<workload>-seeds``: the setting each optimizer's tuning chose, re-run with ``seeds`` fresh seeds
   (1..n: the chosen trial itself is not reused, so the winner's curse of the selection does not bias the
   interval), with Hessian probes along training for the curvature annotation.

Scores (:mod:`sgdlab.optbench.scoring`): a trial's time to target is the first evaluation step whose
validation metric reaches the target (``val/*`` curves: ``train.eval_val``); a study's time is its fastest
trial's; an optimizer's time on a workload is the median over its ``S`` studies; performance ratios against
the fastest optimizer on each workload, ratios above ``r_max`` count as not reached, and the benchmark
score is the normalised integral of the performance profile over ``[1, r_max]``. Steps are the primary unit;
wall time to target is the step count times the run's mean seconds per step (``wall_time_s / steps_done``),
stated as such because the eval points carry no clock.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sgdlab.config import SearchParam
from sgdlab.optbench import scoring

SCALES = ("quick", "full")
UNITS = {"steps": "optimizer steps", "wall": "seconds (steps x mean s/step)"}


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """The validation target of a workload: ``val/acc`` to reach (>=) or ``val/loss`` to reach (<=)."""

    metric: Literal["val/acc", "val/loss"]
    value: float
    note: str = ""  # where the value comes from (e.g. "adam's best final val/acc at this budget, 2026-12-02")

    @property
    def minimize(self) -> bool:
        return self.metric.endswith("loss")

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"target value must be finite, got {v}")
        return v


class Workload(_Strict):
    title: str
    target: Target
    sections: dict[str, Any]  # params.yaml sections of this workload's studies


class Family(_Strict):
    """One optimizer of the benchmark: its search space (identical on every workload) and fixed hparams."""

    space: dict[str, SearchParam]
    hparams: dict[str, Any] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _has_lr(cls, v: dict) -> dict:
        if "lr" not in v:
            raise ValueError("the search space must contain lr")
        return v

    @property
    def fallback_lr(self) -> float:
        """The geometric (log space) or arithmetic centre of the lr range: the sweep entry's ``lr``."""
        p = self.space["lr"]
        return math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2


class Protocol(_Strict):
    search: Literal["random", "quasirandom"] = "quasirandom"
    studies: int = Field(2, ge=1, le=100)
    trials: int = Field(4, ge=1, le=1000)
    seeds: int = Field(3, ge=2, le=100)  # >= 2: an interval needs two
    r_max: float = Field(scoring.R_MAX, gt=1.0)
    seed: int = Field(0, ge=0)
    curvature: bool = True  # Hessian probes along training on the seed runs


class Scale(_Strict):
    protocol: dict[str, Any] = Field(default_factory=dict)
    sections: dict[str, Any] = Field(default_factory=dict)  # over every workload's sections
    workloads: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per workload, over the above
    only_workloads: tuple[str, ...] | None = None
    only_optimizers: tuple[str, ...] | None = None


class BenchFile(_Strict):
    title: str
    protocol: Protocol
    optimizers: dict[str, Family]
    workloads: dict[str, Workload]
    scales: dict[Literal["quick", "full"], Scale]

    @model_validator(mode="after")
    def _names(self):
        for name, sc in self.scales.items():
            for w in list(sc.workloads) + list(sc.only_workloads or ()):
                if w not in self.workloads:
                    raise ValueError(f"scales.{name}: unknown workload {w!r}; known: {sorted(self.workloads)}")
            for o in sc.only_optimizers or ():
                if o not in self.optimizers:
                    raise ValueError(f"scales.{name}.only_optimizers: unknown {o!r}; known: {sorted(self.optimizers)}")
        return self


@dataclass(frozen=True)
class Bench:
    """A benchmark at one scale: what the flow runs."""

    file: BenchFile
    scale: str
    protocol: Protocol
    workloads: tuple[str, ...]
    optimizers: tuple[str, ...]
    path: Path

    @property
    def name(self) -> str:
        return "optbench" if self.scale == "quick" else f"optbench-{self.scale}"

    def study_name(self, workload: str, phase: Literal["tune", "seeds"]) -> str:
        base = f"{self.name}-{workload}"
        return base if phase == "tune" else f"{base}-seeds"

    def target(self, workload: str) -> Target:
        return self.file.workloads[workload].target


def default_path() -> Path:
    from sgdlab.paths import project_root

    here = project_root() / "benchmarks" / "optimizers.yaml"
    return here if here.is_file() else Path(__file__).resolve().parents[3] / "benchmarks" / "optimizers.yaml"


def load_bench(scale: str = "quick", path: Path | None = None) -> Bench:
    """Read and validate the benchmark file at ``scale``; every error names the file and the key."""
    import yaml

    from sgdlab.config import strict_yaml

    if scale not in SCALES:
        raise BenchError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise BenchError(f"{path}: no such benchmark file")
    try:
        raw = strict_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise BenchError(f"{path}: not valid YAML: {exc}") from None
    try:
        bf = BenchFile.model_validate(raw)
    except ValidationError as err:
        raise BenchError(_errors(err, path)) from None
    if scale not in bf.scales:
        raise BenchError(f"{path}: no scales.{scale}")
    sc = bf.scales[scale]
    try:
        protocol = Protocol.model_validate({**bf.protocol.model_dump(), **sc.protocol})
    except ValidationError as err:
        raise BenchError(_errors(err, path, f"scales.{scale}.protocol.")) from None
    from sgdlab.optim import get_spec

    for name in bf.optimizers:
        try:
            get_spec(name)
        except ValueError as exc:
            raise BenchError(f"{path}: optimizers.{name}: {exc}") from None
    workloads = tuple(sc.only_workloads or bf.workloads)
    optimizers = tuple(sc.only_optimizers or bf.optimizers)
    if len(optimizers) < 2:
        raise BenchError(f"{path}: scales.{scale}: a benchmark compares >= 2 optimizers, got {list(optimizers)}")
    return Bench(bf, scale, protocol, workloads, optimizers, path)


def _errors(err: ValidationError, path: Path, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "<root>")
        lines.append(f"{path}: {key}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ configs
def _sections(bench: Bench, workload: str) -> dict[str, Any]:
    from sgdlab.config import _deep_merge

    sc = bench.file.scales[bench.scale]
    raw = copy.deepcopy(bench.file.workloads[workload].sections)
    raw = _deep_merge(raw, sc.sections)
    return _deep_merge(raw, sc.workloads.get(workload, {}))


def workload_config(
    bench: Bench,
    workload: str,
    phase: Literal["tune", "seeds"],
    chosen: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Sequence[str] = (),
    params: Path | None = None,
):
    """The config of one workload's study: params.yaml's sections (its profile not applied), the workload's
    sections and the scale's overrides, then the protocol's sweep:

    * ``tune``: every optimizer with its search (``S`` studies x ``T`` trials), seed 0, no Hessian probes;
    * ``seeds``: ``chosen[optimizer] = {"lr", "hparams"}`` re-run with seeds 1..n, probes along training
      when ``protocol.curvature``.

    Both studies share one data root (the data is prepared once) and log to one MLflow experiment (the
    benchmark's name), so every trial of every workload is comparable in the MLflow UI."""
    from sgdlab.config import _deep_merge, apply_overrides, from_dict, load_raw
    from sgdlab.paths import default_params_path

    p = bench.protocol
    path = Path(params) if params else default_params_path()
    raw = copy.deepcopy(load_raw(path))
    raw["profile"] = None
    raw = _deep_merge(raw, _sections(bench, workload))
    study = bench.study_name(workload, phase)
    if phase == "tune":
        entries = []
        for name in bench.optimizers:
            fam = bench.file.optimizers[name]
            space = {k: v.model_dump() for k, v in fam.space.items()}
            search = {"kind": p.search, "trials": p.trials, "studies": p.studies, "seed": p.seed, "space": space}
            entries.append({"name": name, "lr": fam.fallback_lr, "hparams": dict(fam.hparams), "search": search})
        sweep = {"optimizers": entries, "seeds": [0], "variants": []}
        probe = {"every": 0, "trace_probes": 0, "density_probes": 0}
    else:
        if chosen is None or set(chosen) != set(bench.optimizers):
            raise BenchError(
                f"workload {workload}: the seeds study needs a chosen setting for {list(bench.optimizers)}"
            )
        entries = [
            {"name": n, "lr": float(chosen[n]["lr"]), "hparams": dict(chosen[n]["hparams"])} for n in bench.optimizers
        ]
        sweep = {"optimizers": entries, "seeds": list(range(1, p.seeds + 1)), "variants": []}
        probe = {"trace_probes": 0, "density_probes": 0}
        if not p.curvature:
            probe["every"] = 0
    raw = _deep_merge(
        raw,
        {
            "study": {"name": study},
            "data": {"root": f"data/optbench/{bench.name}-{workload}"},
            "train": {"eval_val": True},
            "tracking": {"experiment": bench.name},
            "sweep": sweep,
            "probe": probe,
        },
    )
    raw = apply_overrides(raw, list(overrides))
    cfg = from_dict(raw, source=f"{path.name} + {bench.path.name} (workload {workload}, {phase}, scale {bench.scale})")
    if not cfg.train.eval_every:
        raise BenchError(f"{bench.path}: workload {workload}: train.eval_every must be > 0 (time to target)")
    return cfg


# ------------------------------------------------------------------------------------------ scoring
Curve = Sequence[tuple[int, float]]


def trial_time(row: Mapping[str, Any], curve: Curve, target: Target) -> tuple[float, float]:
    """``(steps, seconds)`` to target of one run (``inf`` if it never reaches it, diverged runs included:
    their curve stops where they stopped)."""
    pts = sorted((int(s), float(v)) for s, v in curve)
    steps = scoring.time_to_target([s for s, _ in pts], [v for _, v in pts], target.value, target.minimize)
    if not math.isfinite(steps):
        return math.inf, math.inf
    done = float(row.get("steps_done") or 0)
    wall = float(row.get("wall_time_s") or math.nan)
    return steps, steps * wall / done if done > 0 else math.nan


@dataclass
class WorkloadResult:
    """One workload's tuning outcome: per optimizer the study times, its time, the chosen setting."""

    workload: str
    target: Target
    study_times: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # opt -> unit -> per study
    times: dict[str, dict[str, float]] = field(default_factory=dict)  # opt -> unit -> median over studies
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)  # opt -> {lr, hparams, run_key, ...}
    trials: dict[str, int] = field(default_factory=dict)  # opt -> finished trials (must be S x T)
    reached: dict[str, int] = field(default_factory=dict)  # opt -> trials reaching the target


def score_tuning(
    bench: Bench, workload: str, rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve]
) -> WorkloadResult:
    """External-tuning times and the chosen setting of each optimizer on one workload (pure).

    ``rows``: the tuning study's runs table; ``curves``: ``{run_key: [(step, target metric)]}``. A study with
    a trial missing is an error naming it (the protocol needs exactly ``S x T`` trials)."""
    target = bench.target(workload)
    p = bench.protocol
    res = WorkloadResult(workload, target)
    for opt in bench.optimizers:
        mine = [r for r in rows if r["optimizer"] == opt and int(r.get("search_study", -1)) >= 0]
        per_study: dict[int, list[tuple[float, float, Mapping[str, Any]]]] = {s: [] for s in range(p.studies)}
        for r in mine:
            s = int(r["search_study"])
            if s in per_study:
                steps, wall = trial_time(r, curves.get(r["run_key"], ()), target)
                per_study[s].append((steps, wall, r))
        for s, ts in per_study.items():
            if len(ts) != p.trials:
                raise BenchError(
                    f"workload {workload}: optimizer {opt} study {s} has {len(ts)} trials in the runs table, "
                    f"the protocol needs {p.trials}: re-run the benchmark (finished trials are cached)"
                )
        res.trials[opt] = sum(len(ts) for ts in per_study.values())
        res.reached[opt] = sum(1 for ts in per_study.values() for t in ts if math.isfinite(t[0]))
        res.study_times[opt] = {
            "steps": [scoring.study_time(t[0] for t in ts) for ts in per_study.values()],
            "wall": [scoring.study_time(t[1] for t in ts) for ts in per_study.values()],
        }
        res.times[opt] = {u: scoring.external_tuning_time([[v] for v in vs]) for u, vs in res.study_times[opt].items()}
        res.chosen[opt] = _choose([t for ts in per_study.values() for t in ts], target)
    return res


def _final(row: Mapping[str, Any], target: Target) -> float:
    v = row.get(target.metric)
    v = float(v) if v is not None else math.nan
    if not math.isfinite(v):
        return math.inf if target.minimize else -math.inf
    return v


def _choose(trials: list[tuple[float, float, Mapping[str, Any]]], target: Target) -> dict[str, Any]:
    """The fastest trial to target over all studies; ties and no-trial-reached broken by the final metric."""

    def key(t):
        final = _final(t[2], target)
        return (t[0], final if target.minimize else -final, t[2]["run_key"])

    steps, wall, row = min(trials, key=key)
    hp = row.get("hparams")
    hp = json.loads(hp) if isinstance(hp, str) else dict(hp or {})  # the runs table stores it as JSON
    hp.pop("lr", None)
    return {
        "lr": float(row["lr"]),
        "hparams": hp,
        "run_key": row["run_key"],
        "steps_to_target": steps,
        "study": int(row["search_study"]),
        "trial": int(row["search_trial"]),
        "final": _final(row, target),
    }


def scores(bench: Bench, results: Mapping[str, WorkloadResult], unit: str = "steps") -> dict[str, Any]:
    """Performance ratios, profiles and benchmark scores over the workloads, in ``unit`` (steps | wall)."""
    times = {o: {w: results[w].times[o][unit] for w in results} for o in bench.optimizers}
    ratios = scoring.performance_ratios(times, bench.protocol.r_max)
    return {
        "unit": UNITS[unit],
        "times": times,
        "ratios": ratios,
        "score": {o: scoring.benchmark_score(ratios[o], bench.protocol.r_max) for o in bench.optimizers},
    }


def seed_summary(
    target: Target, rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve]
) -> dict[str, dict[str, Any]]:
    """Per optimizer over the seed runs: steps to target (mean with a 95% t interval when every seed reaches
    it), how many seeds reach it, the final target metric (mean and interval)."""
    out: dict[str, dict[str, Any]] = {}
    for opt in sorted({r["optimizer"] for r in rows}):
        mine = sorted((r for r in rows if r["optimizer"] == opt), key=lambda r: r["seed"])
        steps = [trial_time(r, curves.get(r["run_key"], ()), target)[0] for r in mine]
        finals = [_final(r, target) for r in mine]
        reached = [s for s in steps if math.isfinite(s)]
        entry: dict[str, Any] = {"seeds": [int(r["seed"]) for r in mine], "steps": steps, "reached": len(reached)}
        if len(reached) == len(steps) and len(steps) >= 2:
            entry["steps_ci"] = scoring.mean_ci(steps).__dict__
        if all(math.isfinite(f) for f in finals) and len(finals) >= 2:
            entry["final_ci"] = scoring.mean_ci(finals).__dict__
        out[opt] = entry
    return out


# (sharpness, threshold) pairs the along-training probe logs (sgdlab.hessian.SharpnessProbe); for Adam-kind
# optimizers ``hessian/threshold`` is the preconditioned threshold and ``precond_lambda_max`` the quantity to
# compare with it, so that pair is tried first
CURVATURE_KEYS = (
    ("hessian/precond_lambda_max", "hessian/threshold"),
    ("hessian/lambda_max", "hessian/threshold"),
)


def curvature(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Mapping[str, Curve]]) -> dict[str, dict]:
    """Per optimizer: sharpness over its stability threshold along training (preconditioned sharpness for
    adaptive methods where the probe gives it, ``lambda_max`` against ``2/eta``-type thresholds otherwise),
    its maximum and its last value, mean over the seed runs; ``None`` where the probe has no threshold for
    the family."""
    out: dict[str, dict] = {}
    for opt in sorted({r["optimizer"] for r in rows}):
        maxima, lasts, kind = [], [], None
        for r in (r for r in rows if r["optimizer"] == opt):
            c = curves.get(r["run_key"], {})
            for sharp, thr in CURVATURE_KEYS:
                if c.get(sharp) and c.get(thr):
                    t = dict(c[thr])
                    ratio = [(s, v / t[s]) for s, v in sorted(c[sharp]) if t.get(s)]
                    if ratio:
                        kind = "preconditioned" if "precond" in sharp else "lambda_max"
                        maxima.append(max(v for _, v in ratio))
                        lasts.append(ratio[-1][1])
                    break
        out[opt] = (
            {"kind": kind, "max_ratio": sum(maxima) / len(maxima), "last_ratio": sum(lasts) / len(lasts)}
            if maxima
            else {"kind": None, "max_ratio": None, "last_ratio": None}
        )
    return out


# ------------------------------------------------------------------------------------------ calibration
CALIBRATION_SEED_OFFSET = 1000  # calibration studies use protocol.seed + 1000 + s: never a scored trial's seed
CALIBRATION_FRACTION = 0.75  # the target is reached within this fraction of the step budget


def best_within(curve: Curve, max_step: float, minimize: bool) -> float:
    """The best value of ``curve`` at steps ``<= max_step`` (``inf``/``-inf`` if none, or all non-finite)."""
    vals = [float(v) for s, v in curve if s <= max_step and math.isfinite(float(v))]
    if not vals:
        return math.inf if minimize else -math.inf
    return min(vals) if minimize else max(vals)


def propose_target(
    metric: str,
    budget: int,
    rows: Sequence[Mapping[str, Any]],
    curves: Mapping[str, Curve],
    fraction: float = CALIBRATION_FRACTION,
    grain: float = 0.005,
) -> dict[str, Any]:
    """A workload's target from a calibration search (disjoint seeds from the scored one): per optimizer the
    best ``metric`` any of its trials reaches within ``fraction`` of the ``budget`` steps; the target is the
    median over optimizers (for an even count the worse of the two middle ones), rounded
    to ``grain`` towards easier. So a well-tuned median optimizer reaches it with a quarter of the budget to
    spare, the best ones faster, the worst ones not at all: a target that separates optimizers.

    Returns ``{"value", "per_optimizer": {opt: best}, "rule"}``."""
    minimize = metric.endswith("loss")
    best: dict[str, float] = {}
    for r in rows:
        v = best_within(curves.get(r["run_key"], ()), fraction * budget, minimize)
        o = r["optimizer"]
        best[o] = v if o not in best else (min(best[o], v) if minimize else max(best[o], v))
    if not best:
        raise BenchError("calibration: no runs to derive a target from")
    ranked = sorted(best.values(), reverse=not minimize)  # best first
    med = ranked[(len(ranked) - 1) // 2 if len(ranked) % 2 else len(ranked) // 2]
    if not math.isfinite(med):
        raise BenchError(f"calibration: the median optimizer never has a finite {metric} within the budget")
    value = (math.ceil(med / grain) if minimize else math.floor(med / grain)) * grain
    rule = (
        f"median over {len(best)} optimizers of the best {metric} within {fraction:.0%} of {budget} steps "
        f"(calibration seeds), rounded to {grain:g}"
    )
    return {"value": round(value, 6), "per_optimizer": best, "rule": rule}
