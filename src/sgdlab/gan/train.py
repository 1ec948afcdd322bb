"""Train a class-conditional GAN on the training split only.

Zhang, Gupta, Saunshi, Arora, "On Predicting Generalization using GANs", ICLR 2022: a
class-conditional GAN trained on the *same training set* as the classifiers yields a labelled
synthetic set whose error tracks test error. The recipe here follows their best setting in
miniature: projection discriminator with spectral norm (Miyato & Koyama 2018), hinge loss
(Lim & Ye 2017; Miyato et al. 2018), DiffAugment on real and fake (Zhao et al. 2020), and an EMA
of generator weights for sampling (Karras et al. 2018; Brock et al. 2019).

Hinge loss: ``L_D = E[relu(1 - D(T(x), y))] + E[relu(1 + D(T(G(z, y')), y'))]``,
``L_G = -E[D(T(G(z, y')), y')] + lambda_ms / (r + 1e-5)`` with ``T`` the DiffAugment family,
``y'`` uniform labels and ``r = mean|G(z1, y) - G(z2, y)| / mean|z1 - z2|`` over latent pairs
sharing a label: the mode-seeking term of Mao et al., "Mode Seeking Generative Adversarial
Networks", CVPR 2019 (without it, the small CPU-profile GAN gave one image per class).

No-leakage contract: ``train_gan`` takes only training tensors; there is no argument through
which validation or test data could enter.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sgdlab.device import generator as seeded_generator
from sgdlab.gan.checkpoint import save_gan
from sgdlab.gan.config import GANConfig, resolve_device
from sgdlab.gan.diffaugment import diff_augment
from sgdlab.gan.nets import Generator
from sgdlab.gan.result import GANResult, build_nets

__all__ = ["GANDivergedError", "GANResult", "border_fill", "build_nets", "prepare_train_data", "train_gan"]


class GANDivergedError(RuntimeError):
    """A GAN loss became NaN/inf."""


def prepare_train_data(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    data_range: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the training split and map ``x`` from ``data_range`` to [-1, 1] (float32).

    ``x_train``: ``(N, C, H, W)`` or ``(N, C, L)`` with ``C <= 4`` (so a channel-less
    ``(N, H, W)`` image batch is refused rather than read as 1-D), float in ``data_range`` (uint8 is converted
    to float first, so pass ``data_range=(0, 255)`` for raw bytes); ``y_train``: ``(N,)`` ints in
    ``[0, num_classes)`` with every class present.
    """
    if not isinstance(x_train, torch.Tensor) or not isinstance(y_train, torch.Tensor):
        raise TypeError(f"x_train/y_train must be torch.Tensor, got {type(x_train).__name__}/{type(y_train).__name__}")
    if x_train.dim() not in (3, 4):
        raise ValueError(
            f"x_train shape {tuple(x_train.shape)}: expected (N, C, H, W) or (N, C, L); "
            "add the channel axis with x.unsqueeze(1)"
        )
    if x_train.shape[1] > 4:
        raise ValueError(
            f"x_train shape {tuple(x_train.shape)} would mean {x_train.shape[1]} channels (at most "
            "4 supported): images need (N, C, H, W), so add the channel axis with x.unsqueeze(1)"
        )
    if y_train.dim() != 1 or y_train.shape[0] != x_train.shape[0]:
        raise ValueError(f"y_train shape {tuple(y_train.shape)}: expected ({x_train.shape[0]},) to match x_train")
    if y_train.dtype.is_floating_point or y_train.dtype == torch.bool:
        raise TypeError(f"y_train dtype {y_train.dtype}: expected an integer class index")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: must be a positive int")
    if y_train.numel() and (int(y_train.min()) < 0 or int(y_train.max()) >= num_classes):
        raise ValueError(
            f"y_train values in [{int(y_train.min())}, {int(y_train.max())}]: "
            f"must lie in [0, num_classes={num_classes})"
        )
    missing = sorted(set(range(num_classes)) - set(torch.unique(y_train).tolist()))
    if missing:
        raise ValueError(f"y_train has no samples of class(es) {missing} (num_classes={num_classes})")
    lo, hi = float(data_range[0]), float(data_range[1])
    if not hi > lo:
        raise ValueError(f"data_range={data_range!r}: need lo < hi")
    x = x_train.float()
    if not torch.isfinite(x).all():
        raise ValueError("x_train contains NaN or inf")
    tol = 1e-6 * (hi - lo)
    if float(x.min()) < lo - tol or float(x.max()) > hi + tol:
        raise ValueError(
            f"x_train values in [{float(x.min()):.4g}, {float(x.max()):.4g}] fall outside "
            f"data_range={data_range!r}; pass the range the data lives in"
        )
    return (x - lo) / (hi - lo) * 2.0 - 1.0, y_train.long()


@torch.no_grad()
def border_fill(x: torch.Tensor) -> float:
    """Mean of the outermost pixels (images: the one-pixel frame; signals: both ends) over a batch
    ``(N, C, ...)``: the background DiffAugment should fill vacated positions with, so translation
    and cutout look like the data (-1 for black-background images in [-1, 1] units)."""
    if x.dim() == 3:
        edge = torch.cat([x[..., 0], x[..., -1]], dim=-1)  # (N, 2C)
    else:
        edge = torch.cat(
            [
                x[..., 0, :].flatten(1),
                x[..., -1, :].flatten(1),
                x[..., 1:-1, 0].flatten(1),
                x[..., 1:-1, -1].flatten(1),
            ],
            dim=1,
        )  # (N, C * (2W + 2H - 4))
    return float(edge.float().mean())


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)  # pe = decay * pe + (1 - decay) * pm
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def recompute_bn_stats(g: Generator, n_batches: int, batch_size: int, seed: int, device: torch.device) -> None:
    """Replace G's BatchNorm running statistics by their average over ``n_batches`` batches of
    class-balanced samples ("standing statistics", Brock et al. 2019). Leaves G in eval mode."""
    if n_batches == 0:
        g.eval()
        return
    gen = seeded_generator(seed)
    bns = [m for m in g.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    g.train()
    for _ in range(n_batches):
        z = torch.randn(batch_size, g.z_dim, generator=gen).to(device)
        y = (torch.arange(batch_size) % g.num_classes).to(device)
        g(z, y)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    g.eval()


def train_gan(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    cfg: GANConfig,
    *,
    data_range: tuple[float, float] = (0.0, 1.0),
    progress: Callable[[int, int], None] | None = None,
    metric_sink: Callable[[dict[str, float], int], None] | None = None,
    checkpoint_path: str | Path | None = None,
    monitor: Callable[[int, float, Generator], None] | None = None,
    monitor_every: int = 0,
) -> GANResult:
    """Train a class-conditional GAN (projection D, hinge loss, DiffAugment, EMA generator).

    Args:
        x_train: training inputs ``(N, C, H, W)`` or ``(N, C, L)`` in ``data_range``; only the
            training split may be passed (this function has no other data argument).
        y_train: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes (the generator's conditioning size).
        cfg: hyper-parameters (``GANConfig.profile("cpu")`` for 2 CPU cores).
        data_range: ``(lo, hi)`` units of ``x_train``; it is mapped to [-1, 1] for training and
            the generator maps samples back (``Generator.to_data``, used by ``sample_synthetic``).
        progress: called as ``progress(step, cfg.steps)`` every ``cfg.log_every`` steps.
        metric_sink: called as ``metric_sink({"gan/loss_d": ..., ...}, step)`` (the loop's signature).
        checkpoint_path: if given, the result is saved there at the end (``save_gan``).
        monitor: called as ``monitor(step, train_seconds, g)`` every ``monitor_every`` steps and at
            the end, with ``g`` a copy of the EMA generator whose BatchNorm statistics are
            recomputed (what sampling would use then) and ``train_seconds`` the training wall time
            so far, not counting the monitor's own time: FD-vs-time and tau-vs-time curves. It
            uses its own RNG streams, so training is the same with or without it.

    Raises:
        GANDivergedError: a loss became non-finite (names the step).
    """
    if not isinstance(cfg, GANConfig):
        raise TypeError(f"cfg must be a GANConfig, got {type(cfg).__name__}")
    x, y = prepare_train_data(x_train, y_train, num_classes, data_range)
    device = resolve_device(cfg.device)
    x, y = x.to(device), y.to(device)  # whole split on the device; batches by indexing
    sample_shape = tuple(x.shape[1:])
    data_range = (float(data_range[0]), float(data_range[1]))
    g, d = build_nets(cfg, sample_shape, num_classes, data_range, device)
    g_ema = copy.deepcopy(g).requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    gen = seeded_generator(cfg.seed, device)
    n, b = x.shape[0], cfg.batch_size
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    history: dict[str, list[float]] = {
        k: [] for k in ("step", "gan/loss_d", "gan/loss_g", "gan/ms_ratio", "gan/d_real", "gan/d_fake")
    }

    def latents() -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(b, cfg.z_dim, generator=gen, device=device)  # (B, z_dim)
        return z, torch.randint(num_classes, (b,), generator=gen, device=device)  # (B,)

    fill = border_fill(x) if cfg.diffaugment_fill == "border" else float(cfg.diffaugment_fill)

    def augment(v: torch.Tensor) -> torch.Tensor:
        return diff_augment(v, cfg.diffaugment, generator=gen, fill=fill)

    if monitor_every < 0:
        raise ValueError(f"monitor_every={monitor_every!r}: must be >= 0")
    t0 = time.perf_counter()
    paused = 0.0  # seconds spent in the monitor

    def observe(step: int) -> None:
        nonlocal paused
        t_pause = time.perf_counter()
        snap = copy.deepcopy(g_ema)
        recompute_bn_stats(snap, cfg.bn_stat_batches, b, cfg.seed + 1, device)
        monitor(step, t_pause - t0 - paused, snap)
        paused += time.perf_counter() - t_pause

    g.train()
    d.train()
    for step in range(1, cfg.steps + 1):
        d.requires_grad_(True)
        for _ in range(cfg.n_dis):
            idx = torch.randint(n, (b,), generator=gen, device=device)
            z, y_fake = latents()
            with torch.no_grad(), torch.autocast(**amp):
                x_fake = g(z, y_fake)
            with torch.autocast(**amp):
                # real and fake in one pass (D has no batch statistics): (2B,)
                scores = d(augment(torch.cat([x[idx], x_fake.float()])), torch.cat([y[idx], y_fake]))
            d_real, d_fake = scores.float().split(b)
            loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        d.requires_grad_(False)  # G step: no gradients for D's weights
        z, y_fake = latents()
        half = b // 2
        y_fake = torch.cat([y_fake[:half], y_fake[:half], y_fake[2 * half :]])  # pairs share y
        with torch.autocast(**amp):
            x_g = g(z, y_fake).float()  # (B, *sample_shape)
            loss_adv = -d(augment(x_g), y_fake).float().mean()
        # Mao et al. 2019 (MSGAN): r = |G(z1, y) - G(z2, y)| / |z1 - z2|, maximised via 1 / r
        ratio = (x_g[:half] - x_g[half : 2 * half]).abs().mean() / ((z[:half] - z[half : 2 * half]).abs().mean())
        loss_g = loss_adv + cfg.mode_seeking / (ratio + 1e-5) if cfg.mode_seeking > 0 else loss_adv
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        _ema_update(g_ema, g, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))

        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {
                "gan/loss_d": loss_d.item(),
                "gan/loss_g": loss_adv.item(),
                "gan/ms_ratio": ratio.item(),
                "gan/d_real": d_real.mean().item(),
                "gan/d_fake": d_fake.mean().item(),
            }
            if not all(v == v and abs(v) != float("inf") for v in rec.values()):
                raise GANDivergedError(f"GAN training diverged at step {step}: {rec}")
            history["step"].append(float(step))
            for k, v in rec.items():
                history[k].append(v)
            if metric_sink is not None:
                metric_sink(rec, step)
            if progress is not None:
                progress(step, cfg.steps)
        if monitor is not None and ((monitor_every and step % monitor_every == 0) or step == cfg.steps):
            observe(step)

    d.requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    opt_d.zero_grad(set_to_none=True)
    recompute_bn_stats(g_ema, cfg.bn_stat_batches, b, cfg.seed + 1, device)
    g.eval()
    d.eval()
    result = GANResult(
        generator=g_ema,
        generator_raw=g,
        discriminator=d,
        config=cfg,
        num_classes=num_classes,
        sample_shape=sample_shape,
        data_range=data_range,
        steps=cfg.steps,
        wall_time_s=time.perf_counter() - t0 - paused,
        history=history,
        checkpoint_path=Path(checkpoint_path) if checkpoint_path is not None else None,
    )
    if checkpoint_path is not None:
        save_gan(result, checkpoint_path)
    return result
