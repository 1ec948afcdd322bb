"""Benchmark: population training vs one-at-a-time, through the same training entry points.

Workloads (issue 15): 16 MLPs 784-256-10 (``--widths``) on Fashion-MNIST-shaped data at batch 128 (SGD, per-member
learning rates), and 16 diagonal linear nets on a sparse regression (d = 100, n = 200, batch 20). The
baseline trains the 16 runs one after another with ``sgdlab.train.train``; the population trains them with
``sgdlab.train.population.train_population``; both with metrics on (a buffering sink), no checkpoints.
Each repeat times both (A/B order alternating); we report median runs x steps / s of each, the median of the
per-repeat paired ratios (wall time and process CPU time), and memory per member: parameter bytes and the
bytes autograd saves for backward per step (alone and in the population).

    python bench/bench_population.py --members 16 --steps 200 --repeats 3 --out bench/results/population.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from sgdlab.models import build_model, param_count
from sgdlab.train import DataTensors, LoopConfig, train
from sgdlab.train.population import Member, train_population


class MemorySink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows.extend((step, k, v) for k, v in metrics.items())


def workload(name: str, members: int, steps: int, device: str, widths: tuple[int, ...] = (256,)):
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        x = torch.randn(12000, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (12000,), generator=g)
        data = DataTensors(x[:10000], y[:10000], x[10000:], y[10000:])
        task, batch, shape, out, kw, opt = "classification", 128, (1, 28, 28), 10, {"widths": widths}, "sgd"
        model_name = "mlp"
        lrs = [0.01 * (1 + i % 8) for i in range(members)]
    elif name == "diag_linear":
        d, n = 100, 200
        w = torch.zeros(d)
        w[:5] = 1.0
        x = torch.randn(n + 100, d, generator=g)
        y = x @ w + 0.01 * torch.randn(n + 100, generator=g)
        data = DataTensors(x[:n], y[:n], x[n:], y[n:])
        task, batch, shape, out, kw, opt = "regression", 20, (d,), 1, {"alpha": 0.1}, "sgd"
        model_name = "diag_linear"
        lrs = [0.005 * (1 + i % 4) for i in range(members)]
    else:
        raise SystemExit(f"unknown workload {name!r}")

    def cfg(seed: int) -> LoopConfig:
        return LoopConfig(steps=steps, batch_size=batch, log_every=50, seed=seed, device=device, task=task,
                          final_eval=False)  # fmt: skip

    def model(seed: int):
        return build_model(model_name, shape, out, seed=seed, device=device, **kw)

    return data, cfg, model, opt, lrs


def run_alone(data, cfg, model, opt, lrs) -> None:
    for i, lr in enumerate(lrs):
        train(model(i), opt, {"lr": lr}, data, cfg(i), metric_sink=MemorySink())


def run_population(data, cfg, model, opt, lrs) -> None:
    members = [Member(model(i), opt, {"lr": lr}, data, cfg(i), metric_sink=MemorySink()) for i, lr in enumerate(lrs)]
    results = train_population(members)
    bad = [r for r in results if isinstance(r, BaseException)]
    if bad:
        raise bad[0]


def saved_bytes(fn, *args) -> int:
    """Bytes of the tensors autograd saves for backward over ``fn(*args)`` (activations, inputs and weights
    the backward reads): the per-step memory a run holds beyond its weights, gradients and optimizer state."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total


def timed(fn, *args) -> tuple[float, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="mlp,diag_linear")
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--widths", default="256", help="hidden widths of the mlp workload (comma-separated)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    report = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "threads": torch.get_num_threads(), "device": a.device,
                    "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None},
        "members": a.members, "steps": a.steps, "mlp_widths": a.widths, "repeats": a.repeats, "workloads": {},
    }  # fmt: skip
    for name in a.workloads.split(","):
        widths = tuple(int(w) for w in a.widths.split(","))
        args = workload(name, a.members, a.steps, a.device, widths)
        run_population(*workload(name, 2, 5, a.device, widths))  # warm-up (vmap tracing, allocator)
        run_alone(*workload(name, 1, 5, a.device, widths))
        alone, pop = [], []
        for rep in range(a.repeats):
            order = [("alone", run_alone), ("pop", run_population)]
            for tag, fn in order if rep % 2 == 0 else order[::-1]:
                (alone if tag == "alone" else pop).append(timed(fn, *args))
            print(f"{name}: repeat {rep + 1}/{a.repeats}: alone {alone[-1][0]:.2f} s, population {pop[-1][0]:.2f} s",
                  flush=True)  # fmt: skip
        work = a.members * a.steps
        n_params = param_count(args[2](0))
        bytes_per = sum(p.numel() * p.element_size() for p in args[2](0).parameters())
        small = (name, 4, 3, a.device, widths)  # 4 runs x 3 steps: saved-for-backward bytes per run and step
        saved_alone = saved_bytes(run_alone, *workload(*small)) / 12
        saved_pop = saved_bytes(run_population, *workload(*small)) / 12
        res = {
            "alone_run_steps_per_s": work / statistics.median(w for w, _ in alone),
            "population_run_steps_per_s": work / statistics.median(w for w, _ in pop),
            "ratio_wall": statistics.median(aw / pw for (aw, _), (pw, _) in zip(alone, pop)),
            "ratio_cpu": statistics.median(ac / pc for (_, ac), (_, pc) in zip(alone, pop)),
            "params_per_member": n_params,
            "param_bytes_per_member": bytes_per,
            # autograd's saved tensors per run and step (activations, inputs; weights where the backward reads
            # them), alone and as a population member: a population holds all members' at once
            "saved_for_backward_bytes_per_run_step_alone": saved_alone,
            "saved_for_backward_bytes_per_member_step_population": saved_pop,
            # besides: each member's weights, gradients and optimizer state as alone (packed members' weights
            # and gradients are rows of the stacked tensors, no extra copy)
        }
        report["workloads"][name] = res
        print(f"{name}: population / one-at-a-time = {res['ratio_wall']:.2f}x wall, {res['ratio_cpu']:.2f}x CPU "
              f"({res['alone_run_steps_per_s']:.0f} vs {res['population_run_steps_per_s']:.0f} run-steps/s); "
              f"per member: {bytes_per / 1e3:.1f} kB weights, saved for backward {saved_pop / 1e3:.1f} kB/step "
              f"({saved_alone / 1e3:.1f} kB alone)", flush=True)  # fmt: skip
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
