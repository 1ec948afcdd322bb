"""The benchmark protocol: file validation, workload configs, external-tuning scores on constructed tables
(hand-computed answers), seed intervals and curvature annotations."""

import json
import math
from pathlib import Path

import pytest

from sgdlab.optbench import protocol as P
from sgdlab.optbench import report

FILE = """
title: t
protocol: {search: quasirandom, studies: 2, trials: 2, seeds: 2}
optimizers:
  sgd: {space: {lr: {low: 0.01, high: 1.0, log: true}}}
  adam: {space: {lr: {low: 0.0001, high: 0.01, log: true}, 1-beta1: {low: 0.02, high: 0.3, log: true}}}
workloads:
  w1:
    title: one
    target: {metric: val/acc, value: 0.8}
    sections:
      data: {datasets: [xor]}
      train: {dataset: xor, steps: 100, eval_every: 10}
      sweep: {models: [{name: mlp, kwargs: {widths: [8]}}]}
  w2:
    title: two
    target: {metric: val/loss, value: 0.5}
    sections:
      data: {datasets: [xor]}
      train: {dataset: xor, steps: 100, eval_every: 10}
      sweep: {models: [{name: mlp, kwargs: {widths: [8]}}]}
scales: {quick: {}, full: {protocol: {trials: 3}}}
"""


@pytest.fixture
def bench(tmp_path) -> P.Bench:
    path = tmp_path / "b.yaml"
    path.write_text(FILE)
    return P.load_bench("quick", path)


def _row(opt, study, trial, lr=0.1, steps_done=100, wall=10.0, final=0.9, metric="val/acc"):
    key = f"{opt}-{study}-{trial}"
    return {
        "run_key": key,
        "optimizer": opt,
        "search_study": study,
        "search_trial": trial,
        "lr": lr,
        "hparams": json.dumps({"lr": lr, "momentum": 0.0}),
        "steps_done": steps_done,
        "wall_time_s": wall,
        metric: final,
        "seed": 0,
    }


def test_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text(FILE.replace("studies: 2", "studies: 0"))
    with pytest.raises(P.BenchError, match=r"b.yaml: protocol.studies"):
        P.load_bench("quick", bad)
    bad.write_text(FILE.replace("adam:", "adamm:"))
    with pytest.raises(P.BenchError, match=r"optimizers.adamm: unknown optimizer 'adamm'"):
        P.load_bench("quick", bad)
    bad.write_text(FILE.replace("{lr: {low: 0.01, high: 1.0, log: true}}", "{momentum: {low: 0.1, high: 0.9}}"))
    with pytest.raises(P.BenchError, match="must contain lr"):
        P.load_bench("quick", bad)
    bad.write_text(FILE.replace("value: 0.8", "value: 0.8, colour: red"))
    with pytest.raises(P.BenchError, match=r"workloads.w1.target.colour: unknown key"):
        P.load_bench("quick", bad)
    with pytest.raises(P.BenchError, match="scale 'huge'"):
        P.load_bench("huge", bad)
    with pytest.raises(P.BenchError, match="no such benchmark file"):
        P.load_bench("quick", tmp_path / "missing.yaml")


def test_scale_overrides_the_protocol(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(FILE)
    assert P.load_bench("full", path).protocol.trials == 3
    assert P.load_bench("quick", path).protocol.trials == 2


def test_workload_configs_tune_then_seeds(bench):
    cfg = P.workload_config(bench, "w1", "tune")
    assert cfg.study.name == "optbench-w1" and cfg.experiment_name == "optbench"
    assert cfg.train.eval_val and cfg.probe.every == 0 and cfg.sweep.seeds == (0,)
    adam = cfg.sweep.optimizers[1]
    assert adam.search.kind == "quasirandom" and adam.search.studies == 2 and adam.search.trials == 2
    assert adam.lr == pytest.approx(1e-3)  # geometric centre of [1e-4, 1e-2]
    chosen = {"sgd": {"lr": 0.3, "hparams": {"momentum": 0.0}}, "adam": {"lr": 0.002, "hparams": {}}}
    seeds = P.workload_config(bench, "w1", "seeds", chosen=chosen)
    assert seeds.study.name == "optbench-w1-seeds" and seeds.sweep.seeds == (1, 2)
    assert seeds.data.root == cfg.data.root  # the data is prepared once
    assert [(o.name, o.lr, o.search) for o in seeds.sweep.optimizers] == [("sgd", 0.3, None), ("adam", 0.002, None)]
    with pytest.raises(P.BenchError, match="needs a chosen setting"):
        P.workload_config(bench, "w1", "seeds", chosen={"sgd": chosen["sgd"]})


def test_trial_time_is_the_first_eval_reaching_the_target():
    t = P.Target(metric="val/acc", value=0.8)
    row = {"steps_done": 100, "wall_time_s": 20.0}
    assert P.trial_time(row, [(30, 0.81), (10, 0.5), (20, 0.79)], t) == (30, 6.0)  # 30 steps x 0.2 s/step
    assert P.trial_time(row, [(10, 0.5)], t) == (math.inf, math.inf)
    loss = P.Target(metric="val/loss", value=0.5)
    assert P.trial_time(row, [(10, 0.7), (20, 0.5), (30, 0.4)], loss)[0] == 20


def test_external_tuning_scores_on_a_constructed_table(bench):
    # w1 (val/acc >= 0.8). sgd: study 0 trials reach at 40 and 20 -> 20; study 1 at 60 and never -> 60;
    # median of (20, 60) = 40. adam: study 0 (10, 30) -> 10; study 1 (never, 80) -> 80; median 45.
    reach = {("sgd", 0, 0): 40, ("sgd", 0, 1): 20, ("sgd", 1, 0): 60, ("sgd", 1, 1): None}
    reach.update({("adam", 0, 0): 10, ("adam", 0, 1): 30, ("adam", 1, 0): None, ("adam", 1, 1): 80})
    rows, curves = [], {}
    for (o, s, t), at in reach.items():
        r = _row(o, s, t, lr=0.1 * (t + 1))
        rows.append(r)
        curves[r["run_key"]] = [(10 * k, 0.9 if at is not None and 10 * k >= at else 0.5) for k in range(1, 11)]
    res = P.score_tuning(bench, "w1", rows, curves)
    assert res.study_times["sgd"]["steps"] == [20, 60] and res.times["sgd"]["steps"] == 40
    assert res.study_times["adam"]["steps"] == [10, 80] and res.times["adam"]["steps"] == 45
    assert res.times["sgd"]["wall"] == pytest.approx(4.0)  # 40 steps x 0.1 s/step
    assert res.reached == {"sgd": 3, "adam": 3} and res.trials == {"sgd": 4, "adam": 4}
    assert res.chosen["adam"]["run_key"] == "adam-0-0" and res.chosen["adam"]["steps_to_target"] == 10
    assert res.chosen["sgd"]["lr"] == pytest.approx(0.2) and res.chosen["sgd"]["hparams"] == {"momentum": 0.0}
    # a second workload where adam never reaches and sgd does at 50 in both studies
    res2 = P.WorkloadResult("w2", bench.target("w2"))
    res2.times = {"sgd": {"steps": 50.0, "wall": 5.0}, "adam": {"steps": math.inf, "wall": math.inf}}
    sc = P.scores(bench, {"w1": res, "w2": res2}, "steps")
    assert sc["ratios"]["adam"] == {"w1": pytest.approx(45 / 40), "w2": math.inf}
    assert sc["ratios"]["sgd"] == {"w1": 1.0, "w2": 1.0}
    assert sc["score"]["sgd"] == pytest.approx(1.0)
    # adam: w1 adds (4 - 1.125) / (3 * 2), w2 adds 0
    assert sc["score"]["adam"] == pytest.approx((4 - 45 / 40) / 6)


def test_a_missing_trial_is_an_error_naming_it(bench):
    rows = [_row("sgd", s, t) for s in range(2) for t in range(2)] + [_row("adam", 0, 0)]
    with pytest.raises(P.BenchError, match="optimizer adam study 0 has 1 trials"):
        P.score_tuning(bench, "w1", rows, {})


def test_no_trial_reaching_chooses_the_best_final_metric(bench):
    rows = [
        _row(o, s, t, lr=0.01 * (1 + s * 2 + t), final=0.1 * (1 + s * 2 + t))
        for o in ("sgd", "adam")
        for s in range(2)
        for t in range(2)
    ]
    res = P.score_tuning(bench, "w1", rows, {})
    assert res.times["sgd"]["steps"] == math.inf and res.chosen["sgd"]["run_key"] == "sgd-1-1"


def test_seed_summary_intervals_and_curvature():
    t = P.Target(metric="val/acc", value=0.8)
    rows = [dict(_row("sgd", -1, -1, final=f), seed=s, run_key=f"k{s}") for s, f in ((1, 0.82), (2, 0.86), (3, 0.84))]
    curves = {"k1": [(10, 0.9)], "k2": [(10, 0.5), (20, 0.9)], "k3": [(30, 0.81)]}
    out = P.seed_summary(t, rows, curves)["sgd"]
    assert out["steps"] == [10, 20, 30] and out["reached"] == 3
    # mean 20, s = 10, t_{0.975, 2} = 4.3027: half width 4.3027 * 10 / sqrt(3) = 24.84
    assert out["steps_ci"]["mean"] == pytest.approx(20) and out["steps_ci"]["hi"] == pytest.approx(44.84, abs=0.01)
    assert out["final_ci"]["mean"] == pytest.approx(0.84)
    curv = {
        "k1": {"hessian/lambda_max": [(50, 5.0), (100, 19.0)], "hessian/threshold": [(50, 20.0), (100, 20.0)]},
        "k2": {"hessian/lambda_max": [(50, 10.0), (100, 9.0)], "hessian/threshold": [(50, 20.0), (100, 20.0)]},
    }
    c = P.curvature(rows[:2], curv)["sgd"]
    assert c["kind"] == "lambda_max"
    assert c["max_ratio"] == pytest.approx((0.95 + 0.5) / 2) and c["last_ratio"] == pytest.approx((0.95 + 0.45) / 2)
    pre = {"k1": {**curv["k1"], "hessian/precond_lambda_max": [(50, 40.0)]}}
    assert P.curvature(rows[:1], pre)["sgd"] == {"kind": "preconditioned", "max_ratio": 2.0, "last_ratio": 2.0}


def test_report_and_figure_from_a_summary(bench, tmp_path):
    res = P.WorkloadResult("w1", bench.target("w1"))
    res.times = {"sgd": {"steps": 40.0, "wall": 4.0}, "adam": {"steps": math.inf, "wall": math.inf}}
    res.study_times = {o: {"steps": [v["steps"]] * 2, "wall": [v["wall"]] * 2} for o, v in res.times.items()}
    res.trials, res.reached = {"sgd": 4, "adam": 4}, {"sgd": 2, "adam": 0}
    res.chosen = {o: {"lr": 0.1, "hparams": {"momentum": 0.9}} for o in ("sgd", "adam")}
    summary = {
        "title": "t",
        "scale": "quick",
        "protocol": bench.protocol.model_dump(),
        "optimizers": ["sgd", "adam"],
        "steps": P.scores(bench, {"w1": res}, "steps"),
        "wall": P.scores(bench, {"w1": res}, "wall"),
        "workloads": {
            "w1": {
                "title": "one",
                "target": res.target.model_dump(),
                "study_times": res.study_times,
                "times": res.times,
                "trials": res.trials,
                "reached": res.reached,
                "chosen": res.chosen,
                "seeds": {},
                "curvature": {},
            }
        },
    }
    md = report.markdown(summary)
    assert "| sgd | 1.000 | 1.000 |" in md and "| adam | not reached |" in md
    rows = report.table_rows(summary)
    assert [(r["optimizer"], r["ratio_steps"]) for r in rows] == [("sgd", 1.0), ("adam", math.inf)]
    png = report.figure(summary, Path(tmp_path) / "p.png")
    assert png.stat().st_size > 10_000


def test_the_shipped_benchmark_file_loads_at_every_scale_and_its_configs_validate():
    from sgdlab.validate import validate_config

    for scale in P.SCALES:
        b = P.load_bench(scale)  # benchmarks/optimizers.yaml
        assert len(b.optimizers) >= 6 and len(b.workloads) >= 3
        for w in b.workloads:
            validate_config(P.workload_config(b, w, "tune"))
            assert b.target(w).note  # every target says where its value comes from


def test_propose_target_is_the_median_optimizers_best_within_three_quarters_of_the_budget():
    curves = {
        # budget 100 steps: only steps <= 75 count
        "a1": [(25, 0.70), (50, 0.82), (75, 0.86), (100, 0.95)],  # a: best trial 0.86 (0.95 comes too late)
        "a2": [(25, 0.60), (75, 0.80)],
        "b1": [(25, 0.50), (75, 0.78), (100, 0.79)],  # b: 0.78
        "c1": [(25, float("nan")), (50, 0.40)],  # c: 0.40 (non-finite values skipped)
        "d1": [(100, 0.99)],  # d: nothing within 75 steps -> -inf
    }
    rows = [{"run_key": k, "optimizer": k[0]} for k in curves]
    out = P.propose_target("val/acc", 100, rows, curves)
    assert out["per_optimizer"] == {"a": 0.86, "b": 0.78, "c": 0.40, "d": -math.inf}
    # ranked best first 0.86, 0.78, 0.40, -inf: an even count takes the worse middle one (0.40), floored to 0.005
    assert out["value"] == pytest.approx(0.40)
    out3 = P.propose_target("val/acc", 100, rows[:4], curves)  # a, a, b, c: the median of three is b's 0.78
    assert out3["value"] == pytest.approx(0.78)
    loss = {"x": [(10, 0.333), (80, 0.1)], "y": [(10, 0.5)], "z": [(70, 0.2012)]}
    out_l = P.propose_target("val/loss", 100, [{"run_key": k, "optimizer": k} for k in loss], loss)
    # x's 0.1 comes at step 80 (> 75): x 0.333, y 0.5, z 0.2012 -> median 0.333, rounded up (easier) to 0.335
    assert out_l["per_optimizer"] == {"x": 0.333, "y": 0.5, "z": 0.2012}
    assert out_l["value"] == pytest.approx(0.335)
    with pytest.raises(P.BenchError, match="median optimizer never has a finite val/acc"):
        P.propose_target("val/acc", 100, [{"run_key": "d1", "optimizer": "d"}], curves)
