"""Benchmark: many processes logging metrics at once, into the sqlite store and into an MLflow server on
PostgreSQL (``sgdlab tracking-server``), and the cost of a small ``sgdlab run`` on each.

Load: W writer processes start together, each with its own run (created beforehand, as a sweep's child runs
are), and log N points through the platform's own path (:class:`sgdlab.tracking.MetricBuffer`, batches of
B). A batch whose write raises is counted (and "database is locked" errors separately) and its points are
then missing. Afterwards every run's history is read back: points lost = written - stored (goal 0),
duplicates = stored - distinct steps. Throughput = total points / wall time of the slowest writer.
Defaults (issue 18): 8 writers x 10k points into sqlite, 16 x 10k into the server.

Overhead: ``sgdlab run --phase prepare --phase sweep`` of a tiny study (4 runs of 300 steps on xor) with
``MLFLOW_TRACKING_URI`` on sqlite and on the server, alternating, ``--repeats`` times; the median ratio.

    python bench/bench_tracking.py --out bench/results/tracking.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

_WRITER = r"""
import json, sys, time
from sgdlab import tracking
run_id, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors, locked = 0, 0
start = float(sys.argv[4])
while time.time() < start:  # every writer begins at the same moment
    time.sleep(0.005)
t0 = time.perf_counter()
buf = tracking.MetricBuffer(run_id, flush_every=batch)
for step in range(1, n + 1):
    try:
        buf({"loss": 1.0 / step}, step)
    except Exception as exc:  # counted, and this batch is dropped (a lost batch shows as lost points)
        errors += 1
        locked += "database is locked" in str(exc)
        buf._items.clear()
try:
    buf.flush()
except Exception as exc:
    errors += 1
    locked += "database is locked" in str(exc)
print(json.dumps({"seconds": time.perf_counter() - t0, "errors": errors, "locked": locked}))
"""


def load(uri: str, writers: int, points: int, batch: int) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT / "src")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from sgdlab import tracking

    exp = tracking.ensure_experiment(f"load-{writers}x{points}-{int(time.time())}")
    runs = [tracking.start_run(exp, f"writer-{i}", {}) for i in range(writers)]
    start = time.time() + 15  # time for every writer process to import MLflow
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, rid, str(points), str(batch), str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rid in runs
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"writer failed ({p.returncode}): {err[-2000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    stored = distinct = 0
    for rid in runs:
        steps = [s for s, _ in tracking.iter_metric_history(rid, "loss")]
        stored += len(steps)
        distinct += len(set(steps))
        tracking.end_run(rid)
    wall = max(o["seconds"] for o in outs)
    return {
        "store": uri.split(":")[0],
        "writers": writers,
        "points_per_writer": points,
        "batch": batch,
        "points_lost": writers * points - distinct,
        "duplicates": stored - distinct,
        "write_errors": sum(o["errors"] for o in outs),
        "database_locked_errors": sum(o["locked"] for o in outs),
        "points_per_s": round(writers * points / wall),
        "wall_s": round(wall, 2),
    }


def _tiny_project(d: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["name"] = "overhead"
    params["data"].update({"datasets": ["xor"], "xor": {"n_train": 256, "n_test": 64}, "probe_size": 32})
    params["train"].update({"dataset": "xor", "steps": 300, "log_every": 10, "eval_every": 100})
    params["sweep"].update(
        {
            "optimizers": [{"name": "sgd", "lr": [0.05, 0.1]}],
            "seeds": [0, 1],
            "models": [{"name": "mlp", "kwargs": {"widths": [32]}}],
            "batch_sizes": [32],
            "variants": [],
        }
    )
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    (d / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())


def run_seconds(uri: str, home: Path) -> float:
    """Wall time of ``sgdlab run --phase prepare --phase sweep`` in a fresh copy of the tiny project."""
    if home.exists():
        import shutil

        shutil.rmtree(home)
    home.mkdir(parents=True)
    _tiny_project(home)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SGDLAB_HOME": str(home), "PREFECT_HOME": str(home / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", "run", "--phase", "prepare", "--phase", "sweep"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if r.returncode != 0:
        raise SystemExit(f"sgdlab run failed on {uri}: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sqlite-writers", type=int, default=8)
    ap.add_argument("--server-writers", type=int, default=16)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500, help="points per log_batch (MetricBuffer flush_every)")
    ap.add_argument("--repeats", type=int, default=3, help="sgdlab run pairs for the overhead ratio (0: skip)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from sgdlab.trackserver import TrackingServer

    work = Path(tempfile.mkdtemp(prefix="sgdlab-bench-tracking-"))
    work.chmod(0o755)  # PostgreSQL (as the postgres user when we are root) must reach its data directory
    sqlite_uri = f"sqlite:///{work / 'mlflow.db'}"
    out: dict = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    with TrackingServer(work / "server", port=0, workers=2) as ts:
        print(f"tracking server {ts.url} (PostgreSQL on port {ts.postgres.port})", flush=True)
        out["load"] = []
        for uri, writers in ((sqlite_uri, args.sqlite_writers), (ts.url, args.server_writers)):
            print(f"load: {writers} writers x {args.points} points into {uri.split(':')[0]} ...", flush=True)
            row = load(uri, writers, args.points, args.batch)
            print(f"  {row}", flush=True)
            out["load"].append(row)
        if args.repeats:
            pairs = []
            for i in range(args.repeats):
                order = [("sqlite", sqlite_uri), ("server", ts.url)]
                if i % 2:
                    order.reverse()
                t = {}
                for name, uri in order:
                    t[name] = run_seconds(uri, work / f"run-{name}")
                    print(f"  sgdlab run on {name}: {t[name]:.1f} s", flush=True)
                pairs.append(t)
            ratios = [p["server"] / p["sqlite"] for p in pairs]
            out["sgdlab_run"] = {
                "what": "sgdlab run --phase prepare --phase sweep, 4 runs x 300 steps on xor (ephemeral Prefect API)",
                "sqlite_s": [round(p["sqlite"], 1) for p in pairs],
                "server_s": [round(p["server"], 1) for p in pairs],
                "server_over_sqlite_median": round(statistics.median(ratios), 3),
            }
            print(f"sgdlab run, server / sqlite: {out['sgdlab_run']['server_over_sqlite_median']:.2f}x", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
