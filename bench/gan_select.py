"""Choose the GAN of the test-error predictor by measurement: FD and predictor scores against training time.

Zhang et al. (ICLR 2022) predict a classifier's test error by its error on a labelled synthetic set
from a class-conditional GAN trained on the classifier's own training set. This harness trains GAN
candidates on the training part of Fashion-MNIST (54000 images; the other 6000 are the validation
part), and every ``--eval-every`` steps samples the EMA generator and measures, with the training time
so far (units: seconds of GAN training on this machine, the monitor's own time excluded):

- ``fd_val``: class-conditional Frechet distance (feature CNN trained on the training part) of the
  synthetic set to the validation part, and the real-data floor FD(train, val) at the same sample size;
- ``std_ratio``: within-class pixel std of the synthetic set / the real training data's (1 = as diverse);
- ``mae_pp`` and ``tau``: the GAN predictor's mean absolute error (pp) and Kendall tau against the test
  error of a fixed population of classifiers (MLP, CNN, ResNet with and without BatchNorm, SGD and Adam,
  short and long training, label noise on a copy of the training labels), all trained on the training part;
- ``err_gap_pp``: mean error on synthetic minus mean error on validation (the quality gate's second number).

The population is trained once and cached (``--cache``). Candidates are named settings over the current
``cpu`` profile (``CANDIDATES``); each trains for ``--minutes`` of wall time. Progress lines go to stderr.

    .venv/bin/python bench/gan_select.py --candidates baseline,global --minutes 6 --out bench/results/gan_select.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgdlab.gan import GANConfig, sample_grid_png, sample_synthetic, train_gan
from sgdlab.gan.frechet import class_conditional_frechet, train_feature_net
from sgdlab.generalization import classification_error, kendall_tau, mae
from sgdlab.models import build_model

# Named candidates: GANConfig overrides over the cpu profile. "baseline" is the design the issue diagnosed
# (sum-pooled D: a bag of 12-pixel patches; colour augmentation; fill 0 = mid-grey).
CANDIDATES: dict[str, dict] = {
    "baseline": dict(d_head="sum", diffaugment="color,translation,cutout", diffaugment_fill=0.0),
    "global": dict(),  # the new defaults: flatten head, translation+cutout, border fill
    "global_wide": dict(g_widths=(128, 64, 32), d_widths=(32, 64, 128)),
    "global_wide_noms": dict(g_widths=(128, 64, 32), d_widths=(32, 64, 128), mode_seeking=0.0),
    "dcgan_plain": dict(
        g_widths=(128, 64, 32), d_widths=(32, 64, 128), mode_seeking=0.0, diffaugment="", d_mbstd_group=0
    ),
    "global_wide_lr": dict(g_widths=(128, 64, 32), d_widths=(32, 64, 128), lr_g=4e-4, lr_d=4e-4),
    "global_wider": dict(g_widths=(256, 128, 64), d_widths=(64, 128, 256)),
}

# The scoring population: (name, model, model kwargs, optimizer, lr, steps, label-noise fraction).
POPULATION = [
    ("mlp32_sgd_s", "mlp", {"widths": [32]}, "sgd", 0.02, 150, 0.0),
    ("mlp32_sgd_l", "mlp", {"widths": [32]}, "sgd", 0.1, 1500, 0.0),
    ("mlp256_sgd_s", "mlp", {"widths": [256]}, "sgd", 0.05, 200, 0.0),
    ("mlp256_adam_l", "mlp", {"widths": [256]}, "adam", 1e-3, 2000, 0.0),
    ("mlp256_adam_n20", "mlp", {"widths": [256]}, "adam", 1e-3, 2000, 0.2),
    ("mlp256_adam_n40", "mlp", {"widths": [256]}, "adam", 1e-3, 2000, 0.4),
    ("mlp512x2_sgd", "mlp", {"widths": [512, 512]}, "sgd", 0.1, 1000, 0.0),
    ("mlp512x2_n30", "mlp", {"widths": [512, 512]}, "sgd", 0.1, 1500, 0.3),
    ("cnn_sgd_s", "cnn", {"width": 0.5}, "sgd", 0.02, 150, 0.0),
    ("cnn_sgd_l", "cnn", {"width": 0.5}, "sgd", 0.05, 800, 0.0),
    ("cnn_adam", "cnn", {"width": 0.5}, "adam", 1e-3, 800, 0.0),
    ("cnn_adam_n30", "cnn", {"width": 0.5}, "adam", 1e-3, 800, 0.3),
    ("resnet8_bn", "resnet", {"depth": 8, "width": 0.5, "norm": "batch"}, "sgd", 0.05, 300, 0.0),
    ("resnet8_nobn", "resnet", {"depth": 8, "width": 0.5, "norm": "none"}, "adam", 1e-3, 300, 0.0),
    ("resnet8_bn_n20", "resnet", {"depth": 8, "width": 0.5, "norm": "batch"}, "adam", 1e-3, 300, 0.2),
    ("mlp64_adam_m", "mlp", {"widths": [64]}, "adam", 3e-3, 400, 0.1),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_data(root: Path, val: int, seed: int):
    """Fashion-MNIST in [0, 1], ``(N, 1, 28, 28)``: train part, validation part (seeded), test."""
    from sgdlab.data.idx import read_idx_file

    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx_file(root / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx_file(root / f"{prefix}-labels-idx1-ubyte.gz")
        out[split] = (torch.from_numpy(x).float().div_(255).unsqueeze(1), torch.from_numpy(y).long())
    x, y = out["train"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return (x[perm[val:]], y[perm[val:]]), (x[perm[:val]], y[perm[:val]]), out["test"]


def noisy_copy(y: torch.Tensor, frac: float, seed: int, k: int = 10) -> torch.Tensor:
    """A copy of ``y`` with a seeded ``frac`` of labels replaced by a different uniform class."""
    if frac == 0:
        return y
    g = torch.Generator().manual_seed(seed)
    y = y.clone()
    flip = torch.rand(len(y), generator=g) < frac
    y[flip] = (y[flip] + torch.randint(1, k, (int(flip.sum()),), generator=g)) % k
    return y


def train_population(train, test, cache: Path, seed: int) -> list[dict]:
    cache.mkdir(parents=True, exist_ok=True)
    x, y = train
    members = []
    for i, (name, model, kw, opt_name, lr, steps, noise) in enumerate(POPULATION):
        path = cache / f"{name}.pt"
        net = build_model(model, (1, 28, 28), 10, seed=seed + i, **kw)
        if path.is_file():
            net.load_state_dict(torch.load(path, weights_only=True))
        else:
            t0 = time.perf_counter()
            yl = noisy_copy(y, noise, seed + 100 + i)
            opt = (torch.optim.SGD if opt_name == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr)
            g = torch.Generator().manual_seed(seed + i)
            net.train()
            for _ in range(steps):
                idx = torch.randint(len(x), (128,), generator=g)
                loss = F.cross_entropy(net(x[idx]), yl[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            torch.save(net.state_dict(), path)
            log(f"population: {name} trained in {time.perf_counter() - t0:.0f} s")
        net.eval()
        members.append({"name": name, "net": net, "test_err": classification_error(net, *test)})
    return members


def within_class_std(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over classes of the mean per-pixel std within the class."""
    return float(np.mean([float(x[y == k].std(dim=0).mean()) for k in range(10)]))


def run_candidate(name, over, train, val, feat, members, args) -> dict:
    cfg = GANConfig.profile("cpu", **{**over, "steps": 10**6, "seed": args.seed, "log_every": 50})
    n = args.per_class
    iv = torch.cat([torch.nonzero(val[1] == k).squeeze(1)[:n] for k in range(10)])
    xv, yv = val[0][iv], val[1][iv]
    g = torch.Generator().manual_seed(args.seed + 7)
    it = torch.randperm(len(train[0]), generator=g)
    it = torch.cat([it[train[1][it] == k][:n] for k in range(10)])
    floor = class_conditional_frechet(feat, train[0][it], train[1][it], xv, yv, 10).mean
    real_std = within_class_std(train[0][it], train[1][it])
    val_err = float(np.mean([classification_error(m["net"], xv, yv) for m in members]))
    test = [m["test_err"] for m in members]
    curve: list[dict] = []
    budget = 60.0 * args.minutes

    class Budget(Exception):
        pass

    def monitor(step: int, seconds: float, gen) -> None:
        xs, ys = sample_synthetic(gen, 10, n, seed=args.seed + 1)
        pred = [classification_error(m["net"], xs, ys) for m in members]
        rec = {
            "step": step,
            "train_s": round(seconds, 1),
            "fd_val": class_conditional_frechet(feat, xs, ys, xv, yv, 10).mean,
            "fd_floor": floor,
            "std_ratio": within_class_std(xs, ys) / real_std,
            "mae_pp": 100 * mae(pred, test),
            "tau": kendall_tau(pred, test),
            "err_gap_pp": 100 * (float(np.mean(pred)) - val_err),
        }
        curve.append(rec)
        log(
            f"{name}: step {step} [{seconds:.0f} s] FD {rec['fd_val']:.1f} (floor {floor:.1f}) "
            f"std {rec['std_ratio']:.2f} MAE {rec['mae_pp']:.1f} pp tau {rec['tau']:+.2f} gap {rec['err_gap_pp']:+.1f} pp"
        )
        if seconds >= budget:
            sample_grid_png(gen, args.grid_dir / f"{name}.png", n_per_class=8)
            raise Budget

    try:
        train_gan(*train, 10, cfg, monitor=monitor, monitor_every=args.eval_every)
    except Budget:
        pass
    return {"name": name, "overrides": over, "config": cfg.to_dict(), "curve": curve}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SGDLAB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")),
    )
    p.add_argument("--candidates", default="baseline,global")
    p.add_argument("--minutes", type=float, default=6.0, help="GAN training wall time per candidate")
    p.add_argument("--eval-every", type=int, default=250, help="GAN steps between measurements")
    p.add_argument("--per-class", type=int, default=500, help="samples per class for FD and predictor scores")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("bench/.cache/gan_select"))
    p.add_argument("--grid-dir", type=Path, default=Path("bench/results/gan_select"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.grid_dir.mkdir(parents=True, exist_ok=True)
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; known: {sorted(CANDIDATES)}")
    train, val, test = load_data(args.data_dir, 6000, args.seed)
    members = train_population(train, test, args.cache / "population", args.seed)
    errs = sorted(m["test_err"] for m in members)
    log(f"population: {len(members)} classifiers, test error {100 * errs[0]:.1f}-{100 * errs[-1]:.1f}%")
    feat = train_feature_net(*train, 10, steps=800, seed=args.seed)
    results = {
        "population": [{"name": m["name"], "test_err": m["test_err"]} for m in members],
        "candidates": [run_candidate(c, CANDIDATES[c], train, val, feat, members, args) for c in names],
        "env": {"threads": args.threads, "loadavg": os.getloadavg(), "torch": torch.__version__},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    for c in results["candidates"]:
        last = c["curve"][-1] if c["curve"] else {}
        print(f"{c['name']:20s} " + " ".join(f"{k}={v:.3g}" for k, v in last.items()))
    return results


if __name__ == "__main__":
    main()
