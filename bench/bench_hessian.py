"""Benchmark sgdlab.hessian: HVP cost vs a gradient, and lambda_max / trace vs PyHessian.

    python bench/bench_hessian.py --out bench_hessian.json [--device cpu|cuda] [--repeats 5]

1. HVP time / gradient time (median over repeats of the ratio within a round; methods run
   round-robin so a shared machine's load hits all alike; same 1024-sample batch) for
   an MLP (784-256-256-10 tanh) and a small CNN with BatchNorm (eval mode), for each backend:
   double backward with the gradient graph reused across matvecs, double backward rebuilding the
   graph each matvec (what a multi-batch probe set costs), and forward-over-reverse.
2. lambda_max to 1e-3 relative error, ours (Lanczos) vs PyHessian 0.1 (power iteration) on the
   same model and batch; error measured against a float64 Lanczos reference (tol 1e-9). Wall
   time includes building the gradient graph for both. PyHessian's ``tol`` is a relative change
   between successive iterates, not an error bound; ours is a residual bound (tol=1e-3 gives
   errors near 1e-6). So each side runs each of its tols (--our-tols, --pyh-tols) over the same
   seeds, and the fastest setting whose *largest* error over the seeds is <= 1e-3 is compared;
   ours at tol=1e-3 is reported too.
3. Trace at an equal number of Rademacher probes (Hutchinson; Hutch++ at the same number of
   matvecs): wall time and estimates over seeds.

PyHessian quirks handled here (it is imported only inside this script; install with
``pip install pyhessian==0.1``): its constructor silently calls ``model.eval()`` and runs
``loss.backward(create_graph=True)``, leaving ``.grad`` tensors that hold the whole double-backward
graph on the model (we clear them after each run); it defaults to ``cuda=True``; it draws its
random vectors from the global RNG (we seed it per repeat); ``trace`` stops early at a relative
change ``tol`` measured against the *signed* running mean, so even with ``tol=0`` it stops as soon
as that mean is negative (we record the probes it used and compare time per probe); its
``density`` calls the removed ``torch.eig`` and is not benchmarked.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import platform
import statistics
import struct
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import hessian as hs

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------- workload ---


def load_batch(n: int, device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """First n Fashion-MNIST training images (N, 1, 28, 28) if installed, else seeded noise."""
    try:
        imgs = gzip.decompress((FMNIST / "train-images-idx3-ubyte.gz").read_bytes())
        labs = gzip.decompress((FMNIST / "train-labels-idx1-ubyte.gz").read_bytes())
        ndim = struct.unpack(">I", imgs[:4])[0] & 0xFF
        X = torch.frombuffer(bytearray(imgs[4 + 4 * ndim :]), dtype=torch.uint8)[: n * 784]
        y = torch.frombuffer(bytearray(labs[8:]), dtype=torch.uint8)[:n].long()
        X = X.reshape(n, 1, 28, 28).float() / 255
        X, source = (X - X.mean()) / X.std(), "fashion-mnist"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(0)
        X, y, source = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), "synthetic"
    return X.to(device), y.to(device), source


def make_model(kind: str, device) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)
        )
    else:
        model = nn.Sequential(  # (B, 1, 28, 28) -> (B, 8, 14, 14) -> (B, 16, 7, 7) -> (B, 10)
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 10),
        )
    model = model.to(device)
    model.eval()  # BatchNorm on running stats: the same function for ours (bn_mode="eval") and PyHessian
    return model


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def med(xs) -> float:
    return float(statistics.median(xs))


# -------------------------------------------------------------------------------- section 1 ---


def bench_hvp(model, X, y, device, repeats: int) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0))
    v = v.to(device)
    variants = {
        "double_backward (graph reused)": {"backend": "double_backward", "retain_graph": True},
        "double_backward (rebuilt per matvec)": {"backend": "double_backward", "retain_graph": False},
        "fwd_over_rev": {"backend": "fwd_over_rev"},
    }
    builds, ops = {}, {}
    for name, kw in variants.items():
        sync(device)
        t0 = time.perf_counter()
        ops[name] = hs.HessianOperator(model, F.cross_entropy, (X, y), **kw)
        sync(device)
        builds[name] = time.perf_counter() - t0

    methods = {"gradient": lambda seed: torch.autograd.grad(F.cross_entropy(model(X), y), params)}
    methods.update({name: (lambda seed, op=op: op.matvec(v)) for name, op in ops.items()})
    rows = interleaved(methods, device, repeats)
    out = {}
    for name, rs in rows.items():
        times = [t for t, _ in rs]
        out[name] = {
            "median_s": med(times),
            "ratio": paired_ratio(rows, name, "gradient"),
            "times_s": times,
            "build_s": builds.get(name),
        }
    return out


# -------------------------------------------------------------------------------- section 2 ---


def reference_lambda(model, X, y) -> float:
    res = hs.top_eigenvalues(model, F.cross_entropy, (X, y), tol=1e-9, max_iter=300, dtype=torch.float64)
    return res.lambda_max


def pyhessian_or_none():
    try:
        from pyhessian import hessian as pyh_hessian  # GPL-3; benchmark-only dependency
    except ImportError as e:  # pragma: no cover - depends on the environment
        print(f"PyHessian not importable ({e}); its columns are skipped. Install with: pip install pyhessian==0.1")
        return None
    return pyh_hessian


def interleaved(methods: dict, device, repeats: int) -> dict[str, list]:
    """Run every method once per repeat, round-robin, so load changes on a shared machine hit
    all methods alike. ``methods[name](seed) -> result``; seed 0 is a warm-up, not recorded.
    Returns name -> [(seconds, result), ...] for seeds 1..repeats."""
    rows = {name: [] for name in methods}
    for r in range(repeats + 1):
        for name, fn in methods.items():
            sync(device)
            t = time.perf_counter()
            result = fn(r)
            sync(device)
            if r:
                rows[name].append((time.perf_counter() - t, result))
    return rows


def paired_ratio(rows, a: str, b: str) -> float:
    """Median over repeats of time(a) / time(b) measured in the same round."""
    return med([ta / tb for (ta, _), (tb, _) in zip(rows[a], rows[b])])


def pyhessian_runner(pyh, model, X, y, device):
    """PyHessian eigenvalue/trace calls, seeded through the global RNG, HVPs counted."""
    on_cuda = torch.device(device).type == "cuda"
    pyh_mod = importlib.import_module("pyhessian.hessian")  # the module, not the class

    def run(seed, what, **kw):
        torch.manual_seed(seed)  # PyHessian draws its vectors from the global RNG
        n_hvp = [0]
        orig = pyh_mod.hessian_vector_product

        def counting(*a):
            n_hvp[0] += 1
            return orig(*a)

        pyh_mod.hessian_vector_product = counting  # count HVPs via the function it calls
        try:
            h = pyh(model, F.cross_entropy, data=(X, y), cuda=on_cuda)
            out = h.eigenvalues(**kw)[0][0] if what == "eig" else h.trace(**kw)
        finally:
            pyh_mod.hessian_vector_product = orig
            model.zero_grad(set_to_none=True)  # it leaves graph-holding .grad behind
        return out, n_hvp[0]

    return run


def bench_lambda(model, X, y, device, repeats, ref, pyh, our_tols, pyh_tols) -> dict:
    methods = {}
    for tol in our_tols:

        def ours(seed, tol=tol):
            res = hs.top_eigenvalues(model, F.cross_entropy, (X, y), tol=tol, seed=seed)
            return res.lambda_max, res.n_matvecs

        methods[f"ours lanczos tol={tol:g}"] = ours
    if pyh is not None:
        run = pyhessian_runner(pyh, model, X, y, device)
        for tol in pyh_tols:
            methods[f"pyhessian power tol={tol:g}"] = lambda seed, tol=tol: run(
                seed, "eig", maxIter=1000, tol=tol, top_n=1
            )
    rows = interleaved(methods, device, repeats)
    out = {"reference_lambda_max": ref}
    for name, rs in rows.items():
        errs = [abs(lam - ref) / abs(ref) for _, (lam, _) in rs]
        out[name] = {
            "median_s": med([t for t, _ in rs]),
            "median_rel_err": med(errs),
            "max_rel_err": max(errs),
            "median_matvecs": med([n for _, (_, n) in rs]),
            "times_s": [t for t, _ in rs],
        }

    def fastest_ok(prefix):
        ok = [k for k in rows if k.startswith(prefix) and out[k]["max_rel_err"] <= 1e-3]
        return min(ok, key=lambda k: out[k]["median_s"]) if ok else None

    ours_best, pyh_best = fastest_ok("ours"), fastest_ok("pyhessian")
    if ours_best and pyh_best:
        out["compared"] = {"ours": ours_best, "pyhessian": pyh_best}
        out["ratio_best_ours_over_best_pyhessian"] = paired_ratio(rows, ours_best, pyh_best)
        default = f"ours lanczos tol={our_tols[0]:g}"
        out["ratio_ours_default_over_best_pyhessian"] = paired_ratio(rows, default, pyh_best)
    return out


# -------------------------------------------------------------------------------- section 3 ---


def bench_trace(model, X, y, device, repeats, n_probes, pyh) -> dict:
    def ours(method):
        def fn(seed):
            res = hs.trace(model, F.cross_entropy, (X, y), n_probes=n_probes, method=method, seed=seed)
            return res.estimate, res.stderr

        return fn

    methods = {"ours hutchinson": ours("hutchinson"), "ours hutch++": ours("hutch++")}
    if pyh is not None:
        run = pyhessian_runner(pyh, model, X, y, device)

        def theirs(seed):
            # tol=0 is meant to use all probes, but PyHessian divides the change by the signed
            # running mean, so it stops as soon as that mean is negative: count what it used.
            samples, _ = run(seed, "trace", maxIter=n_probes, tol=0.0)
            sd = statistics.stdev(samples) / len(samples) ** 0.5 if len(samples) > 1 else None
            return sum(samples) / len(samples), sd, len(samples)

        methods["pyhessian hutchinson"] = theirs
    rows = interleaved(methods, device, repeats)
    out = {
        name: {"median_s": med([t for t, _ in rs]), "estimates": [e for _, e in rs], "times_s": [t for t, _ in rs]}
        for name, rs in rows.items()
    }
    if pyh is not None:
        # time per probe, paired by round (PyHessian may stop before n_probes, see above)
        used = [e[2] for _, e in rows["pyhessian hutchinson"]]
        out["pyhessian hutchinson"]["probes_used"] = used
        out["ratio_ours_over_pyhessian_per_probe"] = med(
            [
                (to / n_probes) / (tp / k)
                for (to, _), (tp, _), k in zip(rows["ours hutchinson"], rows["pyhessian hutchinson"], used)
            ]
        )
    return out


# ------------------------------------------------------------------------------------- main ---


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON results path")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--trace-probes", type=int, default=30)
    ap.add_argument(
        "--our-tols",
        type=float,
        nargs="+",
        default=[1e-3, 1e-2],
        help="Lanczos residual tolerances (the first is the reported default)",
    )
    ap.add_argument("--pyh-tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    ap.add_argument("--no-pyhessian", action="store_true")
    args = ap.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y, source = load_batch(args.batch, device)
    pyh = None if args.no_pyhessian else pyhessian_or_none()
    results = {
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "device": device,
            "data": source,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor(),
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
    }
    for kind in args.models:
        model = make_model(kind, device)
        n = sum(p.numel() for p in model.parameters())
        print(
            f"\n== {kind}: {n} parameters, batch {args.batch} ({source}), device {device}, "
            f"{torch.get_num_threads()} threads"
        )
        res = {"n_params": n, "hvp": bench_hvp(model, X, y, device, args.repeats)}
        print(f"{'HVP backend':40s} {'median ms':>10s} {'x gradient':>11s}")
        for name, row in res["hvp"].items():
            print(f"{name:40s} {1e3 * row['median_s']:10.2f} {row['ratio']:11.2f}")
        ref = reference_lambda(model, X, y)
        res["lambda_max"] = bench_lambda(model, X, y, device, args.repeats, ref, pyh, args.our_tols, args.pyh_tols)
        print(f"lambda_max reference (float64 Lanczos): {ref:.6g}")
        print(f"{'lambda_max method':40s} {'median s':>10s} {'max rel err':>12s} {'HVPs':>6s}")
        for name, row in res["lambda_max"].items():
            if isinstance(row, dict) and "median_s" in row:
                print(f"{name:40s} {row['median_s']:10.3f} {row['max_rel_err']:12.2e} {row['median_matvecs']:6.0f}")
        lm = res["lambda_max"]
        if "compared" in lm:
            print(
                f"paired wall-time ratio, fastest settings with max rel err <= 1e-3 over "
                f"{args.repeats} seeds: {lm['compared']['ours']} / "
                f"{lm['compared']['pyhessian']} = {lm['ratio_best_ours_over_best_pyhessian']:.3f}"
                f"; ours at tol={args.our_tols[0]:g} (residual bound): "
                f"{lm['ratio_ours_default_over_best_pyhessian']:.3f}"
            )
        res["trace"] = bench_trace(model, X, y, device, args.repeats, args.trace_probes, pyh)
        print(
            f"{'trace (' + str(args.trace_probes) + ' matvecs)':40s} {'median s':>10s} "
            f"{'mean est':>9s} {'sd(seeds)':>9s} {'med stderr':>10s}"
        )
        for name, row in res["trace"].items():
            if isinstance(row, dict) and "median_s" in row:
                est = [e[0] for e in row["estimates"]]
                ses = [e[1] for e in row["estimates"] if e[1] is not None]
                print(
                    f"{name:40s} {row['median_s']:10.3f} {statistics.mean(est):9.4g} "
                    f"{statistics.stdev(est) if len(est) > 1 else float('nan'):9.3g} "
                    f"{med(ses) if ses else float('nan'):10.3g}"
                )
        if "ratio_ours_over_pyhessian_per_probe" in res["trace"]:
            print(f"pyhessian probes used per run: {res['trace']['pyhessian hutchinson']['probes_used']}")
            print(
                "paired time-per-probe ratio ours / pyhessian (trace): "
                f"{res['trace']['ratio_ours_over_pyhessian_per_probe']:.3f}"
            )
        results[kind] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
