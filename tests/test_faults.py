"""Fault injection: kills at random points, two sweeps on one study, a fresh store opened by many processes,
damaged checkpoints and run-id files, runs left RUNNING by a killed process. Real processes, a real sqlite
MLflow store, real checkpoints; each case small enough for the default suite."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import spawn

from sgdlab import tracking
from sgdlab.config import from_dict
from sgdlab.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fault_worker.py"

BASE = {
    "study": {"name": "faults"},
    "data": {"datasets": ["xor"], "xor": {"n_train": 200, "n_test": 200}, "probe_size": 50},
    # every step logged (4 metrics): the metric buffer flushes every 125 steps (500 points), the checkpoints
    # come every 200, so a kill after a flush replays points the store already holds (steps 125-200, 325-400,
    # ...: 37% of training), and one after a checkpoint would lose the points logged since the last flush unless the
    # checkpoint flushed them
    "train": {"dataset": "xor", "steps": 1200, "log_every": 1, "eval_every": 100, "checkpoint_every": 200},
    "sweep": {
        "optimizers": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.003}],
        "seeds": [0],
        "batch_sizes": [16],
        "models": [{"name": "mlp", "kwargs": {"widths": [16]}}],
    },
}


def _raw(tmp_path: Path, models_dir: str = "models") -> dict:
    raw = json.loads(json.dumps(BASE))
    raw["data"]["root"] = str(tmp_path / "data")
    raw["study"]["models_dir"] = models_dir  # relative to the project root, SGDLAB_HOME = tmp_path
    return raw


def _env(tmp_path: Path, uri: str) -> dict:
    return {
        **os.environ,
        "SGDLAB_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }


def _start(tmp_path: Path, raw: dict, uri: str, tag: str, die_at=None) -> subprocess.Popen:
    conf = tmp_path / f"worker-{tag}.json"
    conf.write_text(json.dumps({"cfg": raw, "die_at": die_at}))
    return spawn(
        [sys.executable, str(WORKER), str(conf)],
        env=_env(tmp_path, uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return [r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{")) if "run_key" in r]


def _histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    c = tracking.client()
    keys = c.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def _child_runs(experiment: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in tracking.find_runs(experiment, "tags.phase = 'sweep'"):
        if "run_key" in r.data.tags:
            out.setdefault(r.data.tags["run_key"], []).append(r)
    return out


def _keys(raw: dict) -> list[str]:
    from sgdlab.study import Study
    from sgdlab.sweep import expand

    cfg = from_dict(raw)
    study = Study(cfg)
    data = study.data_spec(prepare=True)
    return [s.key for s in expand(cfg, data, study.n_train(data))]


@pytest.mark.parametrize(
    "n_kills, n_inside, min_hits",
    [
        pytest.param(11, 8, 6, marks=pytest.mark.slow, id="11-kills"),
        pytest.param(3, 2, 2, marks=pytest.mark.slow, id="3-kills"),
        pytest.param(1, 1, 1, id="1-kill"),
    ],
)
def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    n_kills, n_inside, min_hits, tmp_path, mlflow_store, monkeypatch
):
    """SIGKILLs of a 2-run sweep, each followed by a re-run: ``n_inside`` at random training steps (the worker
    kills itself right after that update: seeded, so the flush/checkpoint windows are hit every time) and the
    rest from outside at random moments (start-up, run creation, result writing). Every key ends with one
    result, one MLflow child run, and a metric history equal (steps and values) to an uninterrupted run's.
    11 kills (8 inside) and 3 (2 inside) in the slow suite, 1 (inside) in the default one."""
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    raw = _raw(tmp_path)
    keys = _keys(raw)
    rng = random.Random(0)
    kills, hit = 0, 0
    while True:
        if kills >= n_kills:
            rows = _finish(_start(tmp_path, raw, mlflow_store, "last"))
            break
        if kills < n_inside:
            run_dirs = {k: tmp_path / "models" / "faults" / k for k in keys}
            left = [k for k in keys if not (run_dirs[k] / "result.json").exists()]
            assert left, "the sweep finished before all kills were spent"
            key = rng.choice(left)
            ckpt = run_dirs[key] / "checkpoint.pt"
            at = load_checkpoint(ckpt)["step"] if ckpt.exists() else 0  # a step it will still train
            proc = _start(tmp_path, raw, mlflow_store, f"k{kills}", die_at=[key, rng.randint(at + 1, 1200)])
            proc.wait(timeout=120)
            hit += proc.returncode == -signal.SIGKILL
        else:
            proc = _start(tmp_path, raw, mlflow_store, f"k{kills}")
            time.sleep(rng.uniform(0.5, 7.0))  # start-up ~5 s, training ~2 s
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                hit += 1
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(proc.stderr.read()[-3000:])
        kills += 1
    assert hit >= min_hits, f"only {hit} of {kills} kills landed mid-sweep"
    assert sorted(r["run_key"] for r in rows) == sorted(keys) and all(r["status"] == "finished" for r in rows)
    for k in keys:
        assert (tmp_path / "models" / "faults" / k / "result.json").is_file()
    killed = _child_runs("faults")
    assert {k: len(v) for k, v in killed.items()} == {k: 1 for k in keys}, "one child run per key"

    # the same sweep, uninterrupted, in another experiment of the same store
    straight = _raw(tmp_path, "models-straight")
    straight["study"]["name"] = "faults-straight"
    _finish(_start(tmp_path, straight, mlflow_store, "straight"))
    ref = _child_runs("faults-straight")
    for k in keys:
        got, want = _histories(killed[k][0].info.run_id), _histories(ref[k][0].info.run_id)
        assert sorted(got) == sorted(want), k
        for metric in want:
            assert got[metric] == want[metric], f"{k} {metric}: history differs after {hit} kills"
        assert killed[k][0].info.status == "FINISHED"


def test_two_sweeps_on_one_study_train_each_key_once(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    raw = _raw(tmp_path)
    _keys(raw)  # prepare the data once, before the two processes
    a, b = _start(tmp_path, raw, mlflow_store, "a"), _start(tmp_path, raw, mlflow_store, "b")
    rows = _finish(a) + _finish(b)
    keys = _keys(raw)
    trained = [r["run_key"] for r in rows if not r["cached"]]
    assert sorted(trained) == sorted(keys), f"each key trained exactly once, got {trained}"
    runs = _child_runs("faults")
    assert {k: len(v) for k, v in runs.items()} == {k: 1 for k in keys}
    for k in keys:
        steps = [s for s, _ in _histories(runs[k][0].info.run_id)["train/loss"]]
        assert steps == list(range(1, 1201))  # every step once
    assert not list((tmp_path / "models" / "faults").glob("*.lock"))  # released


_OPEN_STORE = """
import sys
from sgdlab import tracking
exp = tracking.ensure_experiment("race")
tracking.end_run(tracking.start_run(exp, "r" + sys.argv[1], {}))
"""


def test_a_fresh_store_opened_by_many_processes_at_once(tmp_path):
    """First use of a new sqlite store from 6 processes: each creates its run, none sees alembic errors."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**_env(tmp_path, uri)}
    procs = [
        spawn([sys.executable, "-c", _OPEN_STORE, str(i)], env=env, stderr=subprocess.PIPE, text=True) for i in range(6)
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(e[-1500:] for e in errors if e)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("race")
    assert len(c.search_runs([exp.experiment_id])) == 6


def test_a_corrupt_store_names_the_file(tmp_path, monkeypatch):
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))  # truncated / garbage
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setattr(tracking, "_clients", {})
    with pytest.raises(tracking.StoreError, match=rf"MLflow store {db} cannot be opened.*mv {db} {db}\.bad"):
        tracking.client()


def _one_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_HOME", str(tmp_path))
    from sgdlab.study import Study
    from sgdlab.sweep import expand

    raw = _raw(tmp_path)
    raw["train"].update(steps=40, log_every=5, checkpoint_every=20)
    cfg = from_dict(raw)
    study = Study(cfg)
    data = study.data_spec(prepare=True)
    spec = expand(cfg, data, study.n_train(data))[0]
    exp = tracking.ensure_experiment(cfg.experiment_name)
    tags = tracking.lineage_tags(study.name, data.data_hash, phase="sweep")
    ctx = {"experiment_id": exp, "parent_run_id": tracking.start_run(exp, "sweep", tags), "tags": tags}
    return study, spec, ctx


def test_empty_or_dangling_run_id_files_are_repaired(tmp_path, mlflow_store, monkeypatch):
    from sgdlab.runner import execute_run

    study, spec, ctx = _one_run(tmp_path, monkeypatch)
    run_dir = study.run_dir(spec.key)

    class Interrupt(Exception):
        pass

    def killer(splits, spec):
        def hook(step, model, opt, lr):
            if step == 30:
                raise Interrupt

        return hook

    with pytest.raises(Interrupt):
        execute_run(study, spec, ctx, on_step_factory=killer)
    first = (run_dir / "mlflow_run_id").read_text()
    (run_dir / "mlflow_run_id").write_text("")  # a full disk: empty file
    with pytest.raises(Interrupt):
        execute_run(study, spec, ctx, on_step_factory=killer)
    assert (run_dir / "mlflow_run_id").read_text() == first  # found again by its run_key tag, not a second run
    (run_dir / "mlflow_run_id").write_text("0" * 32)  # dangling: no such run
    with pytest.warns(UserWarning, match="is not in the store"):
        row = execute_run(study, spec, ctx)
    assert row["mlflow_run_id"] == first and row["status"] == "finished"
    runs = _child_runs("faults")
    assert len(runs[spec.key]) == 1
    steps = [s for s, _ in _histories(first)["train/loss"]]
    assert steps == list(range(5, 41, 5)), "no point lost or duplicated over two interruptions"


def test_corrupt_final_checkpoint_in_probe_is_quarantined_and_retrained(tmp_path, mlflow_store, monkeypatch):
    from sgdlab.integrity import CorruptFileError
    from sgdlab.phases import probe
    from sgdlab.runner import execute_run

    study, spec, ctx = _one_run(tmp_path, monkeypatch)
    row = execute_run(study, spec, ctx)
    ckpt = study.resolve(row["checkpoint"])
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 256] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 : len(raw) // 2 + 256])
    ckpt.write_bytes(bytes(raw))
    payload = {"spec": spec.to_dict(), "checkpoint": row["checkpoint"], "mlflow_run_id": row["mlflow_run_id"]}
    with pytest.raises(CorruptFileError, match=rf"{ckpt}: .*moved to checkpoint\.pt\.corrupt-.*trained again"):
        probe.unit(study, payload, ctx)
    assert not ckpt.exists() and not (ckpt.parent / "result.json").exists()
    again = execute_run(study, spec, ctx)  # the next sweep retrains that key from scratch
    assert not again["cached"] and again["test/loss"] == row["test/loss"] and ckpt.is_file()
    assert "hessian/lambda_max" in probe.unit(study, {**payload, "checkpoint": again["checkpoint"]}, ctx)


_ORPHAN = """
import sys, time
from sgdlab import tracking
exp = tracking.ensure_experiment("orphans")
print(tracking.start_run(exp, "sweep", {"phase": "sweep"}), flush=True)
time.sleep(60)
"""


def test_runs_left_running_by_a_killed_process_are_closed(tmp_path, mlflow_store):
    proc = spawn([sys.executable, "-c", _ORPHAN], env=_env(tmp_path, mlflow_store), stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    exp = tracking.ensure_experiment("orphans")
    mine = tracking.start_run(exp, "alive", {})  # owned by this (living) process
    assert tracking.close_orphaned_runs(exp) == []  # its owner is still alive
    proc.kill()
    proc.wait()
    assert tracking.close_orphaned_runs(exp) == [run_id]
    c = tracking.client()
    assert c.get_run(run_id).info.status == "KILLED" and c.get_run(mine).info.status == "RUNNING"


# ------------------------------------------------------------------------------------------ smaller defects
@pytest.mark.parametrize(
    "text, match",
    [
        ("train:\n  steps: 5\n  steps: 6\n", r"duplicate key 'steps' \(first given on line 2\)"),
        ("  \n", r"the file is empty"),
        ("train:\n  steps: true\n", r"train\.steps = True: expected a number, got the boolean"),
        ("sweep:\n  optimizers:\n    - {name: sgd, lr: yes}\n", r"sweep\.optimizers\.0\.lr = True: expected a number"),
        ("study:\n  name: " + "a" * 300 + "\n", r"study\.name = 'a+.*at most 100 characters"),
    ],
)
def test_params_files_that_would_silently_mean_something_else_are_refused(tmp_path, text, match):
    from sgdlab.config import ConfigError, load_config

    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_non_utf8_params_and_recipe_files_name_themselves(tmp_path):
    from sgdlab.config import ConfigError, load_config

    path = tmp_path / "params.yaml"
    path.write_bytes("study:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"params\.yaml: not UTF-8 text \(byte 18"):
        load_config(path)


def _flips(path: Path, n: int, read, expected) -> tuple[int, int]:
    """Flip one bit at n seeded places of a file, one at a time: (reads of wrong data, errors naming it)."""
    raw0, wrong, named = path.read_bytes(), 0, 0
    for i in range(n):
        raw = bytearray(raw0)
        raw[random.Random(i).randrange(4, len(raw) - 8)] ^= 0x10
        path.write_bytes(bytes(raw))
        try:
            wrong += read(path) != expected
        except ValueError as exc:
            named += str(path) in str(exc)
    path.write_bytes(raw0)
    return wrong, named


def test_parquet_bit_flips_are_errors_not_different_data(tmp_path):
    """Page CRCs are written and verified: of 40 single-bit flips each in a results table and in a data split,
    none reads back as different data (measured before: 44 of 60), and the errors name the file."""
    import numpy as np

    from sgdlab import results
    from sgdlab.data.parquet import read_split, write_split

    rows = [{"a": float(i), "b": "x" * 20} for i in range(2000)]
    table = results.write_table(rows, tmp_path / "t.parquet")
    wrong, named = _flips(table, 40, results.read_table, rows)
    assert wrong == 0 and named >= 35
    x = np.random.RandomState(0).randint(0, 255, (300, 1, 28, 28)).astype(np.uint8)
    y = np.arange(300) % 10
    split = tmp_path / "s.parquet"
    write_split(split, x, y, {"k": 1})

    def read(p):
        xx, yy, _ = read_split(p)
        return (xx.tobytes(), yy.tobytes())

    wrong, named = _flips(split, 40, read, (x.tobytes(), y.tobytes()))
    assert wrong == 0 and named >= 35


def test_failed_units_print_one_line_each_and_exit_1(capsys):
    import typer

    from sgdlab.cli import _fail
    from sgdlab.phases import PhaseFailed

    err = PhaseFailed("sweep: 2 of 5 runs failed (table written to t.parquet)", ["a (run key 1): boom", "b: bang"])
    with pytest.raises(typer.Exit) as exit_:
        _fail(err)
    assert exit_.value.exit_code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: sweep: 2 of 5 runs failed (table written to t.parquet)",
        "  failed: a (run key 1): boom",
        "  failed: b: bang",
    ]


def test_git_commit_is_the_codes_checkout_not_the_projects(tmp_path):
    import re

    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", tracking.git_commit())  # this checkout's
    stray = tmp_path / "elsewhere.py"
    stray.write_text("")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert tracking.git_commit(stray) == "unknown"  # untracked in an unrelated repo: not that repo's commit


def test_a_lost_store_is_said_plainly_and_cached_keys_get_their_runs_back(tmp_path, mlflow_store, monkeypatch):
    """The MLflow store deleted after a sweep: the next sweep re-creates one child run per cached key (final
    metrics, tagged history=lost) instead of leaving rows that point nowhere; the report says which curves are
    gone instead of silently dropping them."""
    from sgdlab.phases.report import fetch_curves
    from sgdlab.runner import execute_run

    study, spec, ctx = _one_run(tmp_path, monkeypatch)
    row = execute_run(study, spec, ctx)
    missing: list[str] = []
    assert fetch_curves([row], missing)[spec.key]["train/loss"] and missing == []
    # a new, empty store in place of the old one
    fresh = tmp_path / "fresh" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{fresh}")
    fetch_curves([row], missing)
    assert missing == [spec.key]
    exp = tracking.ensure_experiment("faults")
    tags = tracking.lineage_tags("faults", phase="sweep")
    ctx = {"experiment_id": exp, "parent_run_id": tracking.start_run(exp, "sweep", tags), "tags": tags}
    with pytest.warns(UserWarning, match=f"run key {spec.key}: MLflow run {row['mlflow_run_id']} is not in the store"):
        again = execute_run(study, spec, ctx)
    assert again["cached"] and again["mlflow_run_id"] != row["mlflow_run_id"]
    run = tracking.client().get_run(again["mlflow_run_id"])
    assert run.data.tags["history"].startswith("lost") and run.data.tags["run_key"] == spec.key
    assert run.data.metrics["final/test/loss"] == pytest.approx(row["test/loss"])
    assert (study.run_dir(spec.key) / "mlflow_run_id").read_text() == again["mlflow_run_id"]
    assert execute_run(study, spec, ctx)["mlflow_run_id"] == again["mlflow_run_id"]  # repaired once, then cached


def test_flow_runs_leave_no_pickled_results_behind(tmp_path, mlflow_store, prefect_api):
    """Tasks and flows use no Prefect cache, so persisting their results only grew ``.prefect/storage`` by a
    pickle of every phase's return value per run (4 files, 19 KB for one recipe run); now nothing is kept."""
    for f in ("params.yaml", "dvc.yaml"):
        (tmp_path / f).write_text((ROOT / f).read_text())
    env = {**_env(tmp_path, mlflow_store)}
    env.pop("PREFECT_HOME", None)  # the project's own .prefect, as for a user
    env.pop("PREFECT_RESULTS_PERSIST_BY_DEFAULT", None)
    run = subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", "prepare", "--set", "data.datasets=[xor]", "--set", "train.dataset=xor"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / ".prefect").is_dir()  # the flow did run under the project's Prefect home
    assert not list((tmp_path / ".prefect" / "storage").glob("*"))
