"""Sweeps: grid expansion and validation (no compute), then real Prefect + MLflow end to end."""

import json
from pathlib import Path

import pytest

from sgdlab import results, tracking
from sgdlab.config import from_dict
from sgdlab.data import DataSpec
from sgdlab.sweep import SweepError, expand


def _data(h="h"):
    return DataSpec("xor", h * 64, 0.1, 0, 50)


BASE = {
    "study": {"name": "sweep-test"},
    "data": {"datasets": ["xor"], "xor": {"n_train": 200, "n_test": 200}, "probe_size": 50},
    "train": {"dataset": "xor", "steps": 40, "log_every": 10, "eval_every": 20, "checkpoint_every": 20},
    "sweep": {
        "optimizers": [
            {"name": "sgd", "lr": 0.1},
            {"name": "momentum", "lr": [0.05, 500.0]},
            {"name": "adam", "lr": 0.003},
        ],
        "seeds": [0, 1],
        "batch_sizes": [32],
        "models": [{"name": "mlp", "kwargs": {"widths": [16]}}],
    },
}


def _cfg(tmp_path=None, **sections):
    raw = json.loads(json.dumps(BASE))
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    if tmp_path is not None:
        raw["data"]["root"] = str(tmp_path / "data")
    return from_dict(raw)


def test_expand_grid_keys_and_variants():
    cfg = _cfg(sweep={"variants": [{"rule": "linear", "factor": 2}, {"rule": "sqrt", "factor": 4}]})
    specs = expand(cfg, _data(), n_train=180)
    base = [s for s in specs if s.variant == "base"]
    assert len(base) == 4 * 2  # (sgd, momentum x2 lrs, adam) x 2 seeds
    lin = [s for s in specs if s.variant == "linearx2"]
    assert len(lin) == 3 * 2 and all(s.batch_size == 64 and s.steps == 20 for s in lin)  # sgd + momentum x2
    sq = [s for s in specs if s.variant == "sqrtx4"]
    assert len(sq) == 2 and sq[0].batch_size == 128 and sq[0].hparams["lr"] == pytest.approx(0.006)
    assert sq[0].hparams["betas"] == pytest.approx((0.6, 0.996)) and sq[0].base_key in {s.key for s in base}
    keys = [s.key for s in specs]
    assert len(set(keys)) == len(keys)
    assert [s.key for s in expand(cfg, _data(), 180)] == keys  # stable
    assert expand(cfg, _data("g"), 180)[0].key != keys[0]  # the data hash is part of the key


@pytest.mark.parametrize(
    "sweep, match",
    [
        (
            {"optimizers": [{"name": "adamm", "lr": 0.1}]},
            r"sweep\.optimizers\[0\].*unknown optimizer 'adamm'.*Did you mean: adam",
        ),
        (
            {"optimizers": [{"name": "sgd", "lr": 0.1, "hparams": {"betas": [0.9, 0.99]}}]},
            r"sweep\.optimizers\[0\] \(sgd\).*betas",
        ),
        ({"models": [{"name": "transformer"}]}, r"sweep\.models\[0\]\.name = 'transformer': unknown model"),
        ({"models": [{"name": "mlp", "kwargs": {"depth": 3}}]}, r"sweep\.models\[0\]\.kwargs\.depth"),
        ({"batch_sizes": [500]}, r"sweep\.batch_sizes: 500 is larger than the 180 training examples"),
        (
            {"optimizers": [{"name": "adam", "lr": 0.001}], "variants": [{"rule": "sqrt", "factor": 20}]},
            r"sweep\.variants \(sqrt x20\).*kappa",
        ),
    ],
)
def test_bad_sweeps_fail_before_training(sweep, match):
    with pytest.raises(SweepError, match=match):
        expand(_cfg(sweep=sweep), _data(), n_train=180)


@pytest.mark.parametrize(
    "sweep, match",
    [
        ({"optimizers": [{"name": "sgd", "lr": -0.1}]}, r"sweep\.optimizers\.0\.lr.*finite number > 0"),
        ({"optimizers": [{"name": "sgd", "lr": 0.1, "hparams": {"lr": 0.2}}]}, r"put the learning rate in `lr`"),
        ({"seeds": []}, r"sweep\.seeds.*at least one"),
    ],
)
def test_bad_sweep_config(sweep, match):
    from sgdlab.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        _cfg(sweep=sweep)


def _children(exp="sweep-test"):
    return [r for r in tracking.find_runs(exp) if r.data.tags.get("phase") == "sweep" and "run_key" in r.data.tags]


def test_sweep_end_to_end_divergence_and_rerun(prefect_harness, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    from flows.phases import run_phase

    cfg = _cfg(tmp_path)
    out = run_phase(cfg, "sweep")
    rows = out["rows"]
    assert len(rows) == 8
    by = {(r["optimizer"], r["lr"]): r for r in rows if r["seed"] == 0}
    assert by[("momentum", 500.0)]["status"] == "diverged" and "step" in by[("momentum", 500.0)]["reason"]
    assert all(r["status"] == "finished" for r in rows if r["lr"] != 500.0)
    assert by[("adam", 0.003)]["test/acc"] > 0.5

    table = results.read_table(out["runs_table"])
    assert {r["run_key"] for r in table} == {r["run_key"] for r in rows}
    children = _children()
    assert len(children) == 8
    parent_ids = {c.data.tags["mlflow.parentRunId"] for c in children}
    assert len(parent_ids) == 1
    diverged = [c for c in children if c.data.tags["status"] == "diverged"]
    assert len(diverged) == 2 and all("diverged_reason" in c.data.tags for c in diverged)
    finished = [c for c in children if c.data.tags["status"] == "finished"][0]
    history = dict(tracking.iter_metric_history(finished.info.run_id, "test/acc"))
    assert set(history) >= {20, 40}  # eval cadence as the MLflow step
    for tag in tracking.LINEAGE_TAGS:
        assert finished.data.tags[tag] not in ("", "none"), tag

    again = run_phase(cfg, "sweep")  # every key is finished: nothing trains, no new MLflow child runs
    assert all(r["cached"] for r in again["rows"])
    assert len(_children()) == 8


def test_interrupted_run_resumes_to_the_same_result(tmp_path, mlflow_store, monkeypatch):
    """A run killed mid-way resumes from its checkpoint and ends where a straight run ends."""
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    from sgdlab.runner import execute_run
    from sgdlab.study import Study

    cfg = _cfg(tmp_path)
    study = Study(cfg)
    spec = [s for s in expand(cfg, study.data_spec(prepare=True), 180) if s.optimizer == "adam"][0]
    exp = tracking.ensure_experiment("sweep-test")
    parent = tracking.start_run(exp, "sweep", tracking.lineage_tags("sweep-test"))
    ctx = {"experiment_id": exp, "parent_run_id": parent, "tags": tracking.lineage_tags("sweep-test")}

    class Interrupt(Exception):
        pass

    def killer(splits, spec):
        def hook(step, model, opt, lr):
            if step == 30:
                raise Interrupt("simulated kill at step 30")

        return hook

    run_dir = study.run_dir(spec.key)
    with pytest.raises(Interrupt):
        execute_run(study, spec, ctx, on_step_factory=killer)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "result.json").exists()
    resumed = execute_run(study, spec, ctx)
    assert resumed["resumed_from"] == 20 and resumed["status"] == "finished"
    assert resumed["checkpoint"] == f"{spec.key}/checkpoint.pt"  # relative to the study's models dir
    straight = execute_run(Study(_cfg(tmp_path, study={"models_dir": "straight"})), spec, ctx)
    assert resumed["test/loss"] == straight["test/loss"] and resumed["train/loss"] == straight["train/loss"]
    assert resumed["mlflow_run_id"] == Path(run_dir / "mlflow_run_id").read_text()


@pytest.mark.slow  # the default suite runs Dask on separate worker processes (test_cluster.py)
def test_sweep_on_a_dask_local_cluster(prefect_harness, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    from flows.phases import run_phase

    cfg = _cfg(
        tmp_path,
        orchestration={"task_runner": "dask", "max_workers": 2},
        sweep={"optimizers": [{"name": "sgd", "lr": 0.1}], "seeds": [0, 1]},
    )
    out = run_phase(cfg, "sweep")
    assert [r["status"] for r in out["rows"]] == ["finished", "finished"]
    assert len(_children()) == 2


def test_variants_keep_the_schedule_in_epochs_or_sde_time():
    """A step decay at 50% of the base run happens at 50% of every variant: /kappa for linear and
    square-root (same epochs), x l for SVAG-SGD and x l^2 for SVAG-Adam (same SDE time)."""
    sched = {"kind": "step", "step_size": 20, "gamma": 0.5, "warmup_steps": 0}
    cfg = _cfg(
        train={"steps": 40, "schedule": sched},
        sweep={
            "optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "rmsprop_bc", "lr": 0.001}],
            "seeds": [0],
            "variants": [{"rule": "linear", "factor": 2}, {"rule": "svag", "factor": 2}, {"rule": "sqrt", "factor": 2}],
        },
    )
    specs = {(s.optimizer, s.variant): s for s in expand(cfg, _data(), 180)}
    for s in specs.values():
        assert s.loop["schedule"]["step_size"] / s.steps == pytest.approx(0.5), (s.optimizer, s.variant)
    assert specs[("sgd", "linearx2")].loop["schedule"]["step_size"] == 10
    assert specs[("svag", "svagx2")].loop["schedule"]["step_size"] == 40
    assert specs[("svag_adam", "svagx2")].loop["schedule"]["step_size"] == 80  # l^2 x as many steps
    assert specs[("rmsprop_bc", "sqrtx2")].loop["schedule"]["step_size"] == 10


def test_variants_keep_cadences_in_epochs_and_baseline_rules_cover_every_optimizer():
    cfg = _cfg(
        train={"steps": 40, "log_every": 8, "eval_every": 20, "checkpoint_every": 20},
        probe={"every": 10},
        sweep={
            "optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.003}],
            "seeds": [0],
            "variants": [
                {"rule": "svag", "factor": 4},
                {"rule": "batch_only", "factor": 2},
                {"rule": "linear_lr", "factor": 4},
            ],
        },
    )
    sv = next(s for s in expand(cfg, _data(), 180) if s.variant == "svagx4" and s.optimizer == "svag")
    assert sv.steps == 160 and sv.loop["log_every"] == 32 and sv.loop["eval_every"] == 80
    assert sv.loop["checkpoint_every"] == 80 and sv.probe["every"] == 40  # the same SDE times as the base
    by = [s for s in expand(cfg, _data(), 180) if s.variant == "batch_onlyx2"]
    assert {s.optimizer for s in by} == {"sgd", "adam"}  # a baseline covers every optimizer
    adam_b = next(s for s in by if s.optimizer == "adam")
    assert adam_b.batch_size == 64 and adam_b.steps == 20 and adam_b.hparams["lr"] == 0.003
    assert adam_b.loop["log_every"] == 4 and adam_b.loop["eval_every"] == 10
    lin = next(s for s in expand(cfg, _data(), 180) if s.variant == "linear_lrx4" and s.optimizer == "adam")
    assert lin.hparams["lr"] == pytest.approx(0.012) and lin.hparams["betas"] == (0.9, 0.999) and lin.steps == 10


def test_an_optimizer_entry_can_carry_its_own_schedule():
    cosine = {"kind": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1}
    cfg = _cfg(sweep={"optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.2, "schedule": cosine}]})
    specs = expand(cfg, _data(), 180)
    kinds = {s.hparams["lr"]: s.loop["schedule"]["kind"] for s in specs}
    assert kinds == {0.1: "constant", 0.2: "cosine"}
    with pytest.raises(Exception, match="kind"):
        _cfg(sweep={"optimizers": [{"name": "sgd", "lr": 0.1, "schedule": {"kind": "zigzag"}}]})


def test_population_sweep_matches_one_at_a_time(prefect_harness, mlflow_store, tmp_path, monkeypatch):
    """orchestration.population=auto groups keys that differ in seed and lr: same run keys, one MLflow child
    run and one checkpoint per key, results as alone (float32: batched kernels round differently)."""
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    from flows.phases import run_phase

    rows = {}
    for mode in ("off", "auto"):
        cfg = _cfg(
            tmp_path,
            study={"name": f"pop-{mode}"},
            orchestration={"population": mode},
            sweep={"optimizers": [{"name": "momentum", "lr": [0.05, 500.0]}, {"name": "sam", "lr": 0.05}]},
        )
        rows[mode] = {r["run_key"]: r for r in run_phase(cfg, "sweep")["rows"]}
    assert rows["off"].keys() == rows["auto"].keys() and len(rows["auto"]) == 6
    # momentum: 2 lrs x 2 seeds in one population (lr 500 diverges in it); sam re-evaluates gradients: alone
    assert sorted(r["population"] for r in rows["auto"].values()) == [1, 1, 4, 4, 4, 4]
    assert all(r["population"] == 1 for r in rows["off"].values())
    for key, a in rows["auto"].items():
        b = rows["off"][key]
        assert a["status"] == b["status"] and a["steps_done"] == b["steps_done"], key
        if a["status"] == "finished":
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4, abs=1e-6), (
                a["optimizer"],
                a["lr"],
                a["seed"],
                a["population"],
                a["resumed_from"],
                b["resumed_from"],
            )
            assert a["test/acc"] == pytest.approx(b["test/acc"], abs=0.011), key
            assert (tmp_path / "models" / "pop-auto" / key / "checkpoint.pt").is_file()
    for mode in ("off", "auto"):
        children = _children(f"pop-{mode}")
        assert sorted(c.data.tags["run_key"] for c in children) == sorted(rows[mode])  # one child run per key
    tags = {c.data.tags["trained_as"] for c in _children("pop-auto")}
    assert tags == {"alone", "population of 4"}, tags
    assert {c.data.tags["trained_as"] for c in _children("pop-off")} == {"alone"}


def test_population_groups_respect_size_limits_and_keep_workers_busy():
    """populations(): same-setting keys group (seeds x lrs; the torch.optim families together), capped by
    members; models above max_params and groups below min_members train alone; fewer groups than workers ->
    the largest group is halved."""
    from sgdlab.phases.sweep import populations

    opts = [{"name": "sgd", "lr": 0.1}, {"name": "momentum", "lr": [0.05, 0.01]}, {"name": "lion", "lr": 1e-4}]
    cfg = _cfg(sweep={"seeds": [0, 1, 2, 3], "optimizers": opts})  # 12 torch.optim keys (sgd, momentum x2), 4 lion
    specs = expand(cfg, _data(), n_train=180)
    sizes = lambda groups: sorted(len(g) for g in groups)  # noqa: E731
    assert sizes(populations(specs, 16)) == [4, 12]
    for g in populations(specs, 16):  # sgd mixes with momentum (one shared foreach update), never with lion
        fams = {s.optimizer for s in g}
        assert fams == {"lion"} or fams == {"sgd", "momentum"}, fams
        assert len({(s.batch_size, s.steps) for s in g}) == 1
    assert sizes(populations(specs, 5)) == [4, 4, 4, 4]  # 12 -> 4+4+4: near-equal parts
    assert sizes(populations(specs, 3)) == [2, 2, 3, 3, 3, 3]  # 4 -> 2+2
    # groups below min_members train alone, key by key
    assert sizes(populations(specs, 3, min_members=3)) == [1] * 4 + [3] * 4
    assert sizes(populations(specs, 16, min_members=5)) == [1] * 4 + [12]
    with pytest.raises(ValueError, match="min_members=5 <= max_members=4"):
        populations(specs, 4, min_members=5)
    assert sizes(populations(specs, 16, workers=3)) == [4, 6, 6]  # the 12 halved
    assert sizes(populations(specs, 16, workers=8)) == [2, 2, 3, 3, 3, 3]  # a half never below min_members (2)
    # halving never cuts below min_members: the 12 halves twice, the lion 4 stays
    assert sizes(populations(specs, 16, workers=8, min_members=3)) == [3, 3, 3, 3, 4]
    big = populations(specs, 16, max_params=100, n_params=lambda s: 101)
    assert sizes(big) == [1] * 16  # every model over the limit: all alone
    small = populations(specs, 16, max_params=100, n_params=lambda s: 100)
    assert sizes(small) == [4, 12]
    keys = [s.key for g in populations(specs, 3, workers=4) for s in g]
    assert sorted(keys) == sorted(s.key for s in specs)  # every key exactly once


def test_population_size_is_capped_by_memory():
    """populations(memory=(budget, member_bytes)): a group's members fit the budget together."""
    from sgdlab.phases.sweep import populations

    opts = [{"name": "sgd", "lr": 0.1}, {"name": "momentum", "lr": [0.05, 0.01]}, {"name": "lion", "lr": 1e-4}]
    specs = expand(_cfg(sweep={"seeds": [0, 1, 2, 3], "optimizers": opts}), _data(), n_train=180)
    nbytes = lambda s: 2000 if s.optimizer == "momentum" else 1000  # noqa: E731
    sizes = lambda groups: sorted(len(g) for g in groups)  # noqa: E731
    # the torch.optim group's widest member (momentum, 2000 B) sets its cap: 7000 // 2000 = 3; lion: 7
    assert sizes(populations(specs, 16, memory=(7000, nbytes))) == [3, 3, 3, 3, 4]
    assert sizes(populations(specs, 16, memory=(1e9, nbytes))) == [4, 12]
    # not even two momentum members fit: the torch.optim keys train alone; lion pairs up (2500 // 1000 = 2)
    assert sizes(populations(specs, 16, memory=(2500, nbytes))) == [1] * 12 + [2, 2]


def test_keys_differing_in_steps_and_schedule_share_a_population():
    """Step counts, schedules and cadences are per member (SVAG's l-scaled runs group); the batch size and the
    shared-step settings (amp, physical batch) still split groups."""
    from dataclasses import replace

    from sgdlab.phases.sweep import populations

    specs = expand(_cfg(sweep={"seeds": [0, 1, 2, 3], "optimizers": [{"name": "sgd", "lr": 0.1}]}), _data(), 180)
    steps = [s.steps * (1 + i % 2) for i, s in enumerate(specs)]
    mixed = [
        replace(s, steps=t, loop={**s.loop, "log_every": t // 4, "schedule": {"kind": "cosine", "warmup_steps": 0}})
        for s, t in zip(specs, steps)
    ]
    assert [len(g) for g in populations(mixed, 16)] == [4]
    other_b = [replace(s, batch_size=s.batch_size * 2) if i < 2 else s for i, s in enumerate(specs)]
    assert sorted(len(g) for g in populations(other_b, 16)) == [2, 2]
    amp = [replace(s, loop={**s.loop, "amp_bf16": True}) if i < 2 else s for i, s in enumerate(specs)]
    assert sorted(len(g) for g in populations(amp, 16)) == [2, 2]


def test_convolutional_models_train_alone_on_the_cpu():
    """auto on the CPU: keys of a model with convolutions train alone (vmapped they were slower), MLP keys group;
    populations(alone=...) is the rule."""
    from sgdlab.phases.sweep import _conv_on_cpu, populations
    from sgdlab.study import Study

    models = [{"name": "cnn", "kwargs": {"width": 0.25}}, {"name": "mlp", "kwargs": {"widths": [16]}}]
    cfg = _cfg(sweep={"seeds": [0, 1, 2], "optimizers": [{"name": "sgd", "lr": 0.1}], "models": models},
               data={"datasets": ["fashion_mnist"]}, train={"dataset": "fashion_mnist"}, study={"device": "cpu"})  # fmt: skip
    specs = expand(cfg, _data(), n_train=180)
    study = Study(cfg)
    fake = type("Splits", (), {"input_shape": (1, 28, 28), "num_outputs": 10})()
    study.load = lambda data=None: fake  # shapes only: no dataset needed to decide
    conv = _conv_on_cpu(study, None)
    assert [conv(s) for s in specs] == [s.model == "cnn" for s in specs]
    groups = populations(specs, 16, alone=conv)
    assert sorted((len(g), g[0].model) for g in groups) == [(1, "cnn")] * 3 + [(3, "mlp")]
