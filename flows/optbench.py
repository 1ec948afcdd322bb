"""The optimizer-benchmark flow (``sgdlab bench-optimizers``): per workload a tuning study and a seeds study
through the normal phase flows (subflows), then the scores, under one MLflow parent run that carries them
(metrics ``score/<optimizer>``, ``steps_to_target/<workload>/<optimizer>``) and the table and figure."""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow  # noqa: E402

from flows.phases import parent_run, pipeline_run, run_phase  # noqa: E402
from flows.runners import make_task_runner  # noqa: E402
from sgdlab import tracking  # noqa: E402
from sgdlab.optbench import protocol as P  # noqa: E402
from sgdlab.validate import validate_config  # noqa: E402


def _gather(cfg, metrics: tuple[str, ...]) -> tuple[list[dict], dict[str, dict[str, list]]]:
    """The study's runs table and ``{run_key: {metric: [(step, value)]}}`` from MLflow."""
    from sgdlab import results
    from sgdlab.study import Study

    rows = results.load_runs(Study(cfg).results_dir)
    curves = {}
    for r in rows:
        if r.get("mlflow_run_id"):
            curves[r["run_key"]] = {m: sorted(tracking.iter_metric_history(r["mlflow_run_id"], m)) for m in metrics}
    return rows, curves


def _clean(obj):
    """JSON with inf as the string "inf" (JSON has no infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


@flow(name="optbench")
def optbench_flow(scale: str = "quick", overrides: tuple[str, ...] = (), bench_path: str | None = None) -> dict:
    """Tune every optimizer on every workload (S studies x T trials), re-run the chosen settings over fresh
    seeds with Hessian probes, score (time to target, performance profiles), write the report."""
    bench = P.load_bench(scale, Path(bench_path) if bench_path else None)
    tune_cfgs = {w: P.workload_config(bench, w, "tune", overrides=overrides) for w in bench.workloads}
    for cfg in tune_cfgs.values():  # every workload's config is checked before any compute
        validate_config(cfg)
    first = tune_cfgs[bench.workloads[0]]
    from sgdlab.study import Study

    out_dir = Study(first).results_dir.parent / bench.name
    out_dir.mkdir(parents=True, exist_ok=True)
    p = bench.protocol
    params = {
        "scale": scale,
        "workloads": ",".join(bench.workloads),
        "optimizers": ",".join(bench.optimizers),
        **{f"protocol.{k}": v for k, v in p.model_dump().items()},
    }
    timings: dict[str, float] = {}
    with parent_run(first, f"optbench:{scale}", params=params) as ctx:
        with pipeline_run(ctx["parent_run_id"]):
            tuning, seeds, curv, titles = {}, {}, {}, {}
            for w in bench.workloads:
                t0 = time.perf_counter()
                cfg = tune_cfgs[w]
                target = bench.target(w)
                run_phase(cfg, "prepare")
                run_phase(cfg, "sweep")
                rows, curves = _gather(cfg, (target.metric,))
                tuning[w] = P.score_tuning(bench, w, rows, {k: c[target.metric] for k, c in curves.items()})
                timings[f"{w}/tune"] = time.perf_counter() - t0
                print(f"optbench: {w}: tuned {len(rows)} trials in {timings[f'{w}/tune']:.0f} s", flush=True)
            for w in bench.workloads:  # after every tuning: a failed seed phase loses no tuning
                t0 = time.perf_counter()
                target = bench.target(w)
                cfg = P.workload_config(bench, w, "seeds", chosen=tuning[w].chosen, overrides=overrides)
                validate_config(cfg)
                run_phase(cfg, "prepare")
                run_phase(cfg, "sweep")
                keys = tuple(dict.fromkeys((target.metric, *(k for pair in P.CURVATURE_KEYS for k in pair))))
                rows, curves = _gather(cfg, keys)
                seeds[w] = P.seed_summary(target, rows, {k: c[target.metric] for k, c in curves.items()})
                curv[w] = P.curvature(rows, curves)
                titles[w] = (bench.file.workloads[w].title, tune_cfgs[w].train.steps)
                timings[f"{w}/seeds"] = time.perf_counter() - t0
                print(f"optbench: {w}: {len(rows)} seed runs in {timings[f'{w}/seeds']:.0f} s", flush=True)
            summary = _summary(bench, tuning, seeds, curv, titles)
            paths = _write(summary, out_dir)
        run_id = ctx["parent_run_id"]
        metrics = {f"score/{o}": v for o, v in summary["steps"]["score"].items()}
        metrics.update({f"score_wall/{o}": v for o, v in summary["wall"]["score"].items()})
        for w, ws in summary["workloads"].items():
            for o in bench.optimizers:
                t = ws["times"][o]["steps"]
                if math.isfinite(t):
                    metrics[f"steps_to_target/{w}/{o}"] = t
        metrics.update({f"optbench/{k}_s": v for k, v in timings.items()})
        tracking.log_metrics(run_id, metrics)
        tracking.set_tags(run_id, {"optbench.scale": scale, "optbench.file": str(bench.path)})
        for path in paths.values():
            tracking.log_artifact(run_id, path, "optbench")
    return {"summary": summary, "paths": {k: str(v) for k, v in paths.items()}, "mlflow_run_id": run_id}


def _summary(bench, tuning, seeds, curv, titles) -> dict:
    p = bench.protocol
    return {
        "title": bench.file.title,
        "scale": bench.scale,
        "protocol": p.model_dump(),
        "optimizers": list(bench.optimizers),
        "steps": P.scores(bench, tuning, "steps"),
        "wall": P.scores(bench, tuning, "wall"),
        "workloads": {
            w: {
                "title": titles[w][0],
                "budget_steps": titles[w][1],
                "target": r.target.model_dump(),
                "study_times": r.study_times,
                "times": r.times,
                "trials": r.trials,
                "reached": r.reached,
                "chosen": r.chosen,
                "seeds": seeds[w],
                "curvature": curv[w],
            }
            for w, r in tuning.items()
        },
    }


def _write(summary: dict, out_dir: Path) -> dict[str, Path]:
    from sgdlab import results
    from sgdlab.optbench import report

    paths = {
        "scores": out_dir / "scores.json",
        "table": out_dir / "scores.parquet",
        "report": out_dir / "report.md",
        "figure": out_dir / "profile.png",
    }
    tmp = paths["scores"].with_name(f".scores.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_clean(summary), indent=1))
    os.replace(tmp, paths["scores"])
    results.write_table(report.table_rows(summary), paths["table"])
    md = paths["report"].with_name(f".report.md.tmp-{os.getpid()}")
    md.write_text(report.markdown(summary))
    os.replace(md, paths["report"])
    report.figure(summary, paths["figure"])
    return paths


@flow(name="optbench-calibrate")
def calibrate_flow(scale: str = "quick", overrides: tuple[str, ...] = (), bench_path: str | None = None) -> dict:
    """Propose each workload's target from a calibration search: the benchmark's tuning studies with seeds
    ``protocol.seed + 1000 + s`` (never those of the scored trials), in studies ``<bench>-<workload>-calibration``
    of the MLflow experiment ``<bench>-calibration``; the rule is :func:`sgdlab.optbench.protocol.propose_target`.
    Writes ``results/<bench>/calibration.json``; the targets are then fixed in the benchmark file by hand."""
    from dataclasses import replace

    from sgdlab.study import Study

    bench = P.load_bench(scale, Path(bench_path) if bench_path else None)
    p = bench.protocol
    cal = replace(bench, protocol=p.model_copy(update={"seed": p.seed + P.CALIBRATION_SEED_OFFSET}))
    cfgs = {}
    for w in cal.workloads:
        extra = (f"study.name={cal.study_name(w, 'tune')}-calibration", f"tracking.experiment={cal.name}-calibration")
        cfgs[w] = P.workload_config(cal, w, "tune", overrides=(*overrides, *extra))
        validate_config(cfgs[w])
    out: dict = {"scale": scale, "file": str(bench.path), "seed": cal.protocol.seed, "workloads": {}}
    for w, cfg in cfgs.items():
        t0 = time.perf_counter()
        target = bench.target(w)
        run_phase(cfg, "prepare")
        run_phase(cfg, "sweep")
        rows, curves = _gather(cfg, (target.metric,))
        prop = P.propose_target(target.metric, cfg.train.steps, rows, {k: c[target.metric] for k, c in curves.items()})
        out["workloads"][w] = {"metric": target.metric, "current": target.value, **prop}
        print(
            f"optbench calibrate: {w}: proposed {target.metric} target {prop['value']:g} (file has {target.value:g}); "
            f"{len(rows)} trials in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    path = Study(cfgs[cal.workloads[0]]).results_dir.parent / bench.name / "calibration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(out), indent=1))
    out["path"] = str(path)
    return out


def run_calibration(scale: str = "quick", overrides: tuple[str, ...] = (), bench_path: str | None = None) -> dict:
    from sgdlab.config import OrchestrationConfig

    return calibrate_flow.with_options(task_runner=make_task_runner(OrchestrationConfig()))(
        scale, tuple(overrides), bench_path
    )


def run_optbench(scale: str = "quick", overrides: tuple[str, ...] = (), bench_path: str | None = None) -> dict:
    from sgdlab.config import OrchestrationConfig

    return optbench_flow.with_options(task_runner=make_task_runner(OrchestrationConfig()))(
        scale, tuple(overrides), bench_path
    )
