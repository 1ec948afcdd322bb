"""Measure the GAN test-error predictor on real Fashion-MNIST (Zhang et al., ICLR 2022).

1. Train the class-conditional GAN on the *train* split (profile ``--profile``), timing it.
2. Sample a labelled synthetic set; write a sample grid PNG (one row per class).
3. Class-conditional Fréchet distances with a small CNN feature net trained on the train split:
   synthetic vs test (reporting only), synthetic vs train, and train vs test (a real-vs-real
   reference), each with ``--fd-per-class`` samples per class.
4. Train a few small classifiers with plain SGD (a minimal loop here) and compare
   GAN-predicted test error (error on the synthetic set) with the true test error.

    .venv/bin/python bench/bench_gan.py --out bench_gan.json --grid gan_grid.png

Prints a summary and writes every figure to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab.gan import GANConfig, generator_hash, sample_grid_png, sample_synthetic, train_gan
from sgdlab.gan.frechet import class_conditional_frechet, train_feature_net
from sgdlab.generalization import (
    GANPredictor,
    TrainErrorPredictor,
    classification_error,
    kendall_tau,
    mae,
)

CLASSES = [
    "T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot",
]  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    from sgdlab.data.idx import read_idx_file

    return read_idx_file(path)


def load_fashion_mnist(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "test": (x, y)}`` with x ``(N, 1, 28, 28)`` float in [0, 1]."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        y = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        out[split] = (torch.from_numpy(x).float().div_(255).unsqueeze(1), torch.from_numpy(y).long())
    return out


def per_class_subset(y: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = [torch.nonzero(y == k).squeeze(1) for k in range(num_classes)]
    return torch.cat([i[torch.randperm(len(i), generator=g)[:n]] for i in idx])


def make_classifier(kind: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "linear":
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        if kind == "mlp":
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        if kind == "cnn":
            return nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
            )  # fmt: skip
    raise ValueError(f"classifier kind {kind!r}: allowed linear, mlp, cnn")


def train_classifier(model, x, y, steps: int, lr: float, batch: int, seed: int) -> nn.Module:
    """Plain SGD on cross-entropy, batches by indexing (sgdlab.train is not used here)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--steps", type=int, default=None, help="override the profile's GAN steps")
    p.add_argument("--diffaugment", default=None, help="override the DiffAugment policy")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP spin-wait on shared cores)")
    p.add_argument("--n-per-class", type=int, default=1000, help="synthetic samples per class")
    p.add_argument("--fd-per-class", type=int, default=1000, help="samples per class for FD")
    p.add_argument("--feature-steps", type=int, default=800)
    p.add_argument("--classifier-steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=Path, default=Path("gan_grid.png"))
    p.add_argument("--ckpt", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()

    data = load_fashion_mnist(args.data_dir)
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    over = {"seed": args.seed} | ({"steps": args.steps} if args.steps else {})
    if args.diffaugment is not None:
        over["diffaugment"] = args.diffaugment
    cfg = GANConfig.profile(args.profile, **over)
    t0 = time.perf_counter()

    def progress(step: int, total: int) -> None:
        if step % (10 * cfg.log_every) == 0 or step == total:
            rate = (time.perf_counter() - t0) / step
            print(f"gan step {step}/{total}  {rate * 1000:.0f} ms/step", file=sys.stderr, flush=True)

    gan = train_gan(
        x_tr, y_tr, 10, cfg, data_range=(0.0, 1.0), progress=progress, checkpoint_path=args.ckpt
    )  # the train split only
    gan_wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    sample_grid_png(gan.generator, args.grid, n_per_class=8, class_names=CLASSES)
    x_syn, y_syn = sample_synthetic(gan.generator, 10, args.n_per_class, seed=args.seed + 1)

    t1 = time.perf_counter()
    feat = train_feature_net(x_tr, y_tr, 10, data_range=(0.0, 1.0), steps=args.feature_steps, seed=args.seed)
    feat_test_acc = 1.0 - classification_error(feat, x_te, y_te)
    n_fd = args.fd_per_class
    i_tr = per_class_subset(y_tr, n_fd, 10, args.seed + 2)
    i_te = per_class_subset(y_te, n_fd, 10, args.seed + 3)
    i_sy = per_class_subset(y_syn, n_fd, 10, args.seed + 4)
    fd = {
        "synthetic_vs_test": class_conditional_frechet(
            feat, x_syn[i_sy], y_syn[i_sy], x_te[i_te], y_te[i_te], 10),
        "synthetic_vs_train": class_conditional_frechet(
            feat, x_syn[i_sy], y_syn[i_sy], x_tr[i_tr], y_tr[i_tr], 10),
        "train_vs_test": class_conditional_frechet(
            feat, x_tr[i_tr], y_tr[i_tr], x_te[i_te], y_te[i_te], 10),
    }  # fmt: skip
    fd_wall = time.perf_counter() - t1

    specs = [  # (name, kind, lr, steps multiplier): a spread of test errors
        ("linear_lr0.05", "linear", 0.05, 1),
        ("mlp_lr0.02", "mlp", 0.02, 1),
        ("mlp_lr0.1", "mlp", 0.1, 2),
        ("cnn_lr0.05", "cnn", 0.05, 2),
    ]
    gan_pred = GANPredictor(x_syn, y_syn)
    train_pred = TrainErrorPredictor(x_tr[i_tr], y_tr[i_tr])
    rows = []
    for i, (name, kind, lr, mult) in enumerate(specs):
        model = train_classifier(
            make_classifier(kind, args.seed + i), x_tr, y_tr, args.classifier_steps * mult, lr, 128, args.seed + i
        )
        rows.append({
            "model": name,
            "test_err": classification_error(model, x_te, y_te),
            "gan_pred_err": gan_pred.predict(model),
            "train_err": train_pred.predict(model),
        })  # fmt: skip
    test = [r["test_err"] for r in rows]
    summary = {
        "gan/wall_s": gan_wall,
        "gan/ms_per_step": 1000 * gan_wall / cfg.steps,
        "gan/generator_sha256": generator_hash(gan.generator),
        "gan/fd_synthetic_vs_test": fd["synthetic_vs_test"].mean,
        "gan/fd_synthetic_vs_train": fd["synthetic_vs_train"].mean,
        "gan/fd_train_vs_test": fd["train_vs_test"].mean,
        "gan/mae_pred_vs_test": mae([r["gan_pred_err"] for r in rows], test),
        "gan/kendall_tau": kendall_tau([r["gan_pred_err"] for r in rows], test),
        "train_err/mae_vs_test": mae([r["train_err"] for r in rows], test),
        "feature_net/test_acc": feat_test_acc,
        "fd_wall_s": fd_wall,
    }
    result = {
        "config": cfg.to_dict(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "fd_per_class": {k: list(v.per_class) for k, v in fd.items()},
        "classifiers": rows,
        "gan_history": gan.history,
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": load0,
            "loadavg_after_gan": load1,
            "python": platform.python_version(),
        },  # fmt: skip
    }
    print(
        f"GAN: {cfg.steps} steps in {gan_wall:.0f} s ({summary['gan/ms_per_step']:.0f} ms/step,"
        f" {args.threads} thread(s), load avg {load0[0]:.1f} -> {load1[0]:.1f})"
    )
    print("class-conditional FD (mean over classes): " + ", ".join(f"{k} {v.mean:.2f}" for k, v in fd.items()))
    print(f"{'model':16s} {'test_err':>8s} {'gan_pred':>8s} {'train_err':>9s}")
    for r in rows:
        print(f"{r['model']:16s} {r['test_err']:8.4f} {r['gan_pred_err']:8.4f} {r['train_err']:9.4f}")
    print(
        f"MAE gan vs test {summary['gan/mae_pred_vs_test']:.4f}; MAE train vs test "
        f"{summary['train_err/mae_vs_test']:.4f}; Kendall tau(gan, test) "
        f"{summary['gan/kendall_tau']:.2f}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
