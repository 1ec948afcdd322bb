"""Data-path benchmark: Fashion-MNIST IDX -> Parquet, Parquet -> device tensors, cold `sgdlab --help`,
and the first-flow overhead of Prefect's ephemeral API. Each figure is also given as a ratio to a
baseline measured in the same run (these machines are noisy):

- IDX -> Parquet vs. just reading + gunzipping the IDX files (the unavoidable part);
- Parquet -> tensors vs. the least a loader must do: ``np.load`` of the same images from an uncompressed
  .npy file plus the float conversion and scaling (ours also splits train/val, standardises, and reads
  both splits);
- cold ``sgdlab --help`` vs. a bare ``python -c pass``;
- first prepare flow (fresh PREFECT_HOME) vs. the same flow's second run in the same process.

Usage: python bench/bench_data.py [--repeats 3] [--out bench/results/data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from sgdlab.config import DataConfig
    from sgdlab.data import load_splits, prepare_dataset, sources
    from sgdlab.data.idx import read_idx_file

    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = sources.fashion_mnist_dir()
        res["idx_read_s"] = timed(lambda: [read_idx_file(d / f) for f in sources.FASHION_MNIST_SHA256], args.repeats)
        res["idx_to_parquet_s"] = timed(
            lambda: prepare_dataset("fashion_mnist", DataConfig(), tmp, force=True), args.repeats
        )
        res["idx_to_parquet_over_idx_read"] = res["idx_to_parquet_s"] / res["idx_read_s"]

        x = read_idx_file(d / "train-images-idx3-ubyte.gz")
        np.save(Path(tmp) / "x.npy", x)
        import torch

        res["npy_load_s"] = timed(
            lambda: torch.from_numpy(np.load(Path(tmp) / "x.npy")).float().div_(255.0), args.repeats
        )
        res["parquet_to_tensors_s"] = timed(lambda: load_splits("fashion_mnist", tmp, "cpu"), args.repeats)
        res["parquet_to_tensors_over_npy_load"] = res["parquet_to_tensors_s"] / res["npy_load_s"]

    def run(cmd):
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)

    res["python_startup_s"] = timed(lambda: run([sys.executable, "-c", "pass"]), args.repeats)
    res["cli_help_s"] = timed(lambda: run([sys.executable, "-m", "sgdlab.cli", "--help"]), args.repeats)
    res["cli_help_over_python_startup"] = res["cli_help_s"] / res["python_startup_s"]

    flow_script = (
        "import time, os\n"
        "from sgdlab.config import from_dict\n"
        "t0=time.perf_counter()\n"
        "from flows.phases import run_phase\n"
        "cfg=from_dict({'study':{'name':'bench'},'data':{'root':os.environ['BENCH_DATA'],'datasets':['xor']}})\n"
        "t1=time.perf_counter(); run_phase(cfg, 'prepare'); t2=time.perf_counter(); run_phase(cfg, 'prepare'); t3=time.perf_counter()\n"
        "print(t1-t0, t2-t1, t3-t2)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PREFECT_HOME": f"{tmp}/prefect",
            "SGDLAB_HOME": tmp,
            "BENCH_DATA": f"{tmp}/data",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        }
        out = subprocess.run(
            [sys.executable, "-c", flow_script], env=env, capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.split()
    imp, first, second = map(float, out[-3:])
    res["flow_import_s"], res["first_flow_s"], res["second_flow_s"] = imp, first, second
    res["first_flow_over_second"] = first / second

    for k, v in res.items():
        print(f"{k:36s} {v:8.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
