"""Labelled synthetic sets and sample grids from a class-conditional generator.

The label of a synthetic sample is the class the generator was conditioned on (Zhang et al.,
ICLR 2022, "On Predicting Generalization using GANs").
"""

from __future__ import annotations

from pathlib import Path

import torch

from sgdlab.device import generator as seeded_generator
from sgdlab.gan.nets import Generator

__all__ = ["sample_grid_png", "sample_synthetic"]


def _check(generator: Generator, num_classes: int) -> None:
    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a sgdlab.gan Generator, got {type(generator).__name__}")
    if num_classes != generator.num_classes:
        raise ValueError(
            f"num_classes={num_classes} does not match the generator's num_classes={generator.num_classes}"
        )


@torch.no_grad()
def sample_synthetic(
    generator: Generator,
    num_classes: int,
    n_per_class: int,
    seed: int,
    device: str | torch.device | None = None,
    batch: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_per_class`` samples of every class, in data units.

    Latents come from a CPU ``torch.Generator`` seeded with ``seed`` (so the same seed gives the
    same latents on any device); the generator runs in eval mode on its own device and its
    train/eval mode is restored afterwards.

    Returns:
        ``x``: ``(num_classes * n_per_class, *sample_shape)`` float32 in the data units the GAN
        was trained on; ``y``: ``(num_classes * n_per_class,)`` int64 conditioning labels,
        class-major order (all of class 0, then class 1, ...). Both on ``device`` (default: the
        generator's device).
    """
    _check(generator, num_classes)
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class!r}: must be a positive int")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r}: must be a positive int")
    g_device = next(generator.parameters()).device
    out_device = torch.device(device) if device is not None else g_device
    gen = seeded_generator(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)  # (K * n,)
    z = torch.randn(y.shape[0], generator.z_dim, generator=gen)  # (K * n, z_dim)
    was_training = generator.training
    generator.eval()
    try:
        xs = [
            generator.to_data(generator(z[i : i + batch].to(g_device), y[i : i + batch].to(g_device)))
            .float()
            .to(out_device)
            for i in range(0, y.shape[0], batch)
        ]
    finally:
        generator.train(was_training)
    return torch.cat(xs), y.to(out_device)


def sample_grid_png(
    generator: Generator,
    path: str | Path,
    n_per_class: int = 8,
    *,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> Path:
    """Write a PNG grid with one row per class and ``n_per_class`` columns; returns the path.

    Images are drawn in grey scale (first channel) over the generator's data range; 1-D signals
    are drawn as line plots. Uses matplotlib's object API (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = generator.num_classes
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} entries, generator has {k} classes")
    x, _ = sample_synthetic(generator, k, n_per_class, seed, device="cpu")
    x = x.view(k, n_per_class, *generator.sample_shape).numpy()
    lo, hi = float(generator.data_lo), float(generator.data_hi)
    fig = Figure(figsize=(0.9 * n_per_class + 1.2, 0.9 * k))
    FigureCanvasAgg(fig)
    axes = fig.subplots(k, n_per_class, squeeze=False)
    for r in range(k):
        for c in range(n_per_class):
            ax = axes[r][c]
            if len(generator.sample_shape) == 3:
                ax.imshow(x[r, c, 0], cmap="gray", vmin=lo, vmax=hi)
            else:
                ax.plot(x[r, c, 0], lw=0.8)
                ax.set_ylim(lo, hi)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(class_names[r] if class_names else str(r), rotation=0, ha="right")
    fig.subplots_adjust(left=0.12, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
