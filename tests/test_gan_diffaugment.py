"""DiffAugment (Zhao et al. 2020): shapes, differentiability, seeding, what each op does."""

from __future__ import annotations

import pytest
import torch

from sgdlab.gan import diff_augment
from sgdlab.gan.diffaugment import parse_policy

ALL = "color,translation,cutout"


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (6, 3, 8, 12), (6, 1, 40)])
def test_shapes_and_gradients_flow(shape):
    x = torch.rand(shape, requires_grad=True)
    out = diff_augment(x, ALL, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_seeded_and_global_rng_untouched():
    x = torch.rand(4, 1, 16, 16)
    state = torch.get_rng_state()
    a = diff_augment(x, ALL, generator=torch.Generator().manual_seed(3))
    b = diff_augment(x, ALL, generator=torch.Generator().manual_seed(3))
    c = diff_augment(x, ALL, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_translation_moves_pixels_and_fills_vacated_positions():
    x = torch.arange(1, 1 + 2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    out = diff_augment(x, "translation", generator=torch.Generator().manual_seed(0), fill=-7.0)
    vals = set(out.unique().tolist())
    assert vals <= set(x.unique().tolist()) | {-7.0}  # only moved pixels or the fill value
    for b in range(2):  # each sample is an integer shift of itself (|shift| <= 2)
        ok = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.full_like(x[b, 0], -7.0)
                src = x[b, 0, max(dy, 0) : 16 + min(dy, 0), max(dx, 0) : 16 + min(dx, 0)]
                ref[max(-dy, 0) : 16 + min(-dy, 0), max(-dx, 0) : 16 + min(-dx, 0)] = src
                ok |= torch.equal(out[b, 0], ref)
        assert ok


def test_cutout_blanks_one_clipped_square():
    x = torch.ones(32, 1, 28, 28)
    out = diff_augment(x, "cutout", generator=torch.Generator().manual_seed(1))
    blank = (out == 0).sum(dim=(1, 2, 3))
    assert ((blank >= 7 * 7) & (blank <= 14 * 14)).all()  # centre inside: at least a quarter
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_color_on_one_channel_scales_contrast_about_the_mean():
    x = torch.rand(8, 1, 10, 10)
    out = diff_augment(x, "color", generator=torch.Generator().manual_seed(2))
    # brightness shifts by b, contrast scales deviations by c in [0.5, 1.5]
    dev_in = x - x.mean(dim=(1, 2, 3), keepdim=True)
    dev_out = out - out.mean(dim=(1, 2, 3), keepdim=True)
    ratio = dev_out.flatten(1).norm(dim=1) / dev_in.flatten(1).norm(dim=1)
    assert ((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5)).all()
    assert torch.allclose(dev_out, dev_in * ratio.view(-1, 1, 1, 1), atol=1e-5)


def test_empty_policy_is_identity_and_bad_policy_errors():
    x = torch.rand(2, 1, 8, 8)
    assert diff_augment(x, "") is x
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    with pytest.raises(ValueError, match=r"unknown op\(s\) \['flip'\]"):
        diff_augment(x, "color,flip")
    with pytest.raises(ValueError, match=r"got \(2, 8\)"):
        diff_augment(torch.rand(2, 8), "color")
