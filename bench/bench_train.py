"""Benchmark: sgdlab.train.train vs a plain PyTorch loop (samples/s, overhead ratio).

Both loops train the same model (same seed) with SGD at batch 128 on the same on-device data,
batches by indexing with an epoch-wise randperm. The plain loop is
``zero_grad(set_to_none=True); loss.backward(); step()`` with nothing else; the platform loop runs
with metrics on (train loss/acc and lr to a sink every ``--log-every`` steps, divergence checks).
Each repeat times N steps after warm-up, A/B order alternating; we report median samples/s, their
ratio, and the median of per-repeat paired ratios (wall time, and process CPU time on CPU, which
is robust to other processes sharing the machine).

    python bench/bench_train.py --models mlp,cnn --steps 200 --repeats 5 --out results.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sgdlab.models import build_model, param_count
from sgdlab.train import DataTensors, LoopConfig, train

FASHION = Path("/usr/share/datasets/fashion-mnist")
MODEL_KW = {"mlp": {"widths": (512, 512)}, "cnn": {}, "resnet": {"depth": 8}}


class MemorySink:
    """A buffering metric sink, like the MLflow batch logger: append now, flush in one go."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows.extend((step, k, v) for k, v in metrics.items())


def load_data(kind: str, device: torch.device, n_train: int) -> DataTensors:
    """Random Fashion-MNIST-shaped tensors, or the real IDX files."""
    if kind == "random":
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_train + 10000, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (n_train + 10000,), generator=g)
        xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    else:
        from sgdlab.data.idx import parse_idx

        def read(name):
            return torch.from_numpy(parse_idx(gzip.open(FASHION / name).read(), name))

        xtr = read("train-images-idx3-ubyte.gz").float().div(255).unsqueeze(1)[:n_train]
        ytr = read("train-labels-idx1-ubyte.gz").long()[:n_train]
        xte = read("t10k-images-idx3-ubyte.gz").float().div(255).unsqueeze(1)
        yte = read("t10k-labels-idx1-ubyte.gz").long()
    return DataTensors(*(t.to(device) for t in (xtr, ytr, xte, yte)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, data: DataTensors, steps: int, batch: int, lr: float, seed: int) -> None:
    """The reference: what one would write by hand."""
    x, y = data.x_train, data.y_train
    n, dev = x.shape[0], x.device
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    perm, pos = None, n
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g, device=dev), 0
        idx = perm[pos : pos + batch]
        pos += batch
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def platform_loop(model, data, steps, batch, lr, seed, sink, log_every, compile_, amp):
    cfg = LoopConfig(
        steps=steps,
        batch_size=batch,
        log_every=log_every,
        seed=seed,
        final_eval=False,
        device=str(data.x_train.device),
        compile=compile_,
        amp_bf16=amp,
    )
    res = train(model, "sgd", {"lr": lr}, data, cfg, metric_sink=sink)
    if hasattr(sink, "flush"):  # the MLflow sink writes its batch inside the timed section
        sink.flush()
    assert res.status == "finished", res.reason


def make_sink(kind: str):
    """``memory``: a list; ``mlflow``: sgdlab's real MLflow batch logger on a throw-away sqlite store
    (flushing every 500 points, as in a sweep), i.e. "tracking on"."""
    if kind == "memory":
        return MemorySink()
    if kind == "mlflow":
        import os
        import tempfile

        from sgdlab import tracking

        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='bench-mlflow-')}/mlflow.db"
        exp = tracking.ensure_experiment("bench-train")
        sink = tracking.MetricBuffer(tracking.start_run(exp, "bench", {}))
        return sink
    return None


def bench_model(name, data, args, device):
    shape = tuple(data.x_train.shape[1:])

    def fresh():
        return build_model(name, shape, 10, seed=0, device=device, **MODEL_KW[name])

    sink = make_sink(args.sink)
    runs = {
        "plain": lambda m, s: plain_loop(m, data, s, args.batch_size, args.lr, 0),
        "sgdlab": lambda m, s: platform_loop(
            m, data, s, args.batch_size, args.lr, 0, sink, args.log_every, args.compile, args.amp_bf16
        ),
    }
    for fn in runs.values():  # warm-up (allocator, kernels, compile)
        fn(fresh(), args.warmup)
    sync(device)
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}  # process CPU time: robust to other processes on a shared machine
    for r in range(args.repeats):
        order = ["plain", "sgdlab"] if r % 2 == 0 else ["sgdlab", "plain"]
        for k in order:
            m = fresh()
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            runs[k](m, args.steps)
            sync(device)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    n = args.steps * args.batch_size
    sps = {k: [n / t for t in v] for k, v in wall.items()}
    med = {k: statistics.median(v) for k, v in sps.items()}
    # paired ratios: the two runs of one repeat ran back to back under similar load
    pair = [p / s for p, s in zip(wall["plain"], wall["sgdlab"])]
    pair_cpu = [p / s for p, s in zip(cpu["plain"], cpu["sgdlab"])]
    return {
        "model": name,
        "params": param_count(fresh()),
        "steps": args.steps,
        "plain_samples_per_s": med["plain"],
        "sgdlab_samples_per_s": med["sgdlab"],
        "ratio": med["sgdlab"] / med["plain"],
        "paired_ratio": statistics.median(pair),
        "paired_ratio_cpu_time": statistics.median(pair_cpu) if device.type == "cpu" else None,
        "plain_all": sps["plain"],
        "sgdlab_all": sps["sgdlab"],
        "sink_rows": len(getattr(sink, "rows", [])),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp,cnn,resnet")
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--sink", choices=["none", "memory", "mlflow"], default="mlflow")
    p.add_argument("--data", choices=["random", "fashion_mnist"], default="random")
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--compile", action="store_true", help="torch.compile in the sgdlab loop (CUDA)")
    p.add_argument("--amp-bf16", action="store_true", help="bf16 autocast, sgdlab loop (CUDA)")
    p.add_argument("--out", type=Path, help="write results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    data = load_data(args.data, device, args.n_train)
    rows = [bench_model(m, data, args, device) for m in args.models.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device={device} ({where}), threads={torch.get_num_threads()}, batch={args.batch_size},"
        f" steps={args.steps} x {args.repeats} repeats, sink={args.sink}, data={args.data}"
    )
    print(
        f"{'model':8} {'params':>10} {'plain samples/s':>16} {'sgdlab samples/s':>17} "
        f"{'ratio':>7} {'paired':>7} {'cpu-time':>8}"
    )
    for r in rows:
        cpu = r["paired_ratio_cpu_time"]
        print(
            f"{r['model']:8} {r['params']:>10,} {r['plain_samples_per_s']:>16,.0f} "
            f"{r['sgdlab_samples_per_s']:>17,.0f} {r['ratio']:>7.3f} {r['paired_ratio']:>7.3f} "
            f"{'-' if cpu is None else format(cpu, '.3f'):>8}"
        )
    print(
        "ratio = sgdlab/plain median samples/s; paired = median over repeats of the ratio of two"
        " back-to-back runs (wall); cpu-time = same with process CPU time (CPU only)"
    )
    if args.out:
        meta = {
            "device": str(device),
            "device_name": where,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "source": Path(__file__).read_text(),
        }
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
