"""Class-conditional GAN: config, training smoke test, EMA, checkpoints, sampling."""

from __future__ import annotations

import pytest
import torch

from sgdlab.gan import (
    CorruptGANCheckpoint,
    GANCheckpointError,
    GANConfig,
    generator_hash,
    load_gan,
    sample_grid_png,
    sample_synthetic,
    train_gan,
)
from sgdlab.integrity import load_verified, save_verified

TINY = dict(
    z_dim=8,
    g_widths=(8, 8, 4),
    d_widths=(4, 8, 8),
    steps=6,
    batch_size=8,
    log_every=2,
    bn_stat_batches=2,
    device="cpu",
    seed=0,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convolutions gain nothing from 2 threads, and on 2 shared cores OpenMP spin-waits
    # made 6 tiny steps take 2-9 s instead of 0.3 s.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=48, k=3, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.arange(n) % k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = _data()
    path = tmp_path_factory.mktemp("gan") / "gan.pt"
    seen = []
    res = train_gan(
        x,
        y,
        3,
        GANConfig(**TINY),
        checkpoint_path=path,
        metric_sink=lambda m, step: seen.append((step, m)),
    )
    return res, path, seen


def test_config_validation_and_profiles():
    cpu = GANConfig.profile("cpu")
    assert cpu.device == "cpu" and GANConfig.profile("gpu").batch_size > cpu.batch_size
    assert GANConfig.from_dict(cpu.to_dict()) == cpu
    assert GANConfig.profile("cpu", steps=10).steps == 10
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\]"):
        GANConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="GAN profile 'tpu'"):
        GANConfig.profile("tpu")
    with pytest.raises(ValueError, match="GANConfig.steps=0"):
        GANConfig(steps=0)
    with pytest.raises(ValueError, match=r"GANConfig.betas=\(0.5, 1.0\)"):
        GANConfig(betas=(0.5, 1.0))
    with pytest.raises(ValueError, match="unknown op"):
        GANConfig(diffaugment="color,flip")
    with pytest.raises(ValueError, match="GANConfig.precision='fp16'"):
        GANConfig(precision="fp16")


def test_training_runs_with_finite_losses(trained):
    res, _, seen = trained
    assert [s for s, _ in seen] == [2, 4, 6]
    assert res.history["step"] == [2.0, 4.0, 6.0]
    for key in ("gan/loss_d", "gan/loss_g", "gan/ms_ratio", "gan/d_real", "gan/d_fake"):
        assert len(res.history[key]) == 3
        assert all(torch.isfinite(torch.tensor(res.history[key])))
    assert res.sample_shape == (1, 28, 28) and res.num_classes == 3
    assert not res.generator.training and not res.generator_raw.training
    assert all(p.grad is None for m in (res.generator_raw, res.discriminator) for p in m.parameters())


def test_ema_generator_differs_from_raw(trained):
    res, _, _ = trained
    diffs = [(pe - pr).abs().max().item() for pe, pr in zip(res.generator.parameters(), res.generator_raw.parameters())]
    assert max(diffs) > 1e-6
    assert generator_hash(res.generator) != generator_hash(res.generator_raw)


def test_train_gan_leaves_global_rng_alone_and_is_seeded():
    x, y = _data(n=24)
    state = torch.get_rng_state()
    cfg = GANConfig(**{**TINY, "steps": 2, "bn_stat_batches": 1})
    a = train_gan(x, y, 3, cfg)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_gan(x, y, 3, cfg)
    assert generator_hash(a.generator) == generator_hash(b.generator)


def test_checkpoint_round_trip_gives_identical_samples(trained):
    res, path, _ = trained
    loaded = load_gan(path, num_classes=3, sample_shape=(1, 28, 28))
    assert generator_hash(loaded.generator) == generator_hash(res.generator)
    assert loaded.config == res.config and loaded.history == res.history
    xa, ya = sample_synthetic(res.generator, 3, 5, seed=11)
    xb, yb = sample_synthetic(loaded.generator, 3, 5, seed=11)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = sample_synthetic(loaded.generator, 3, 5, seed=12)
    assert not torch.equal(xa, xc)


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path, trained):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_gan(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(GANCheckpointError, match="garbage.pt.*corrupt"):
        load_gan(garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained[1].read_bytes()[:2000])
    with pytest.raises(GANCheckpointError, match="truncated.pt"):
        load_gan(truncated)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(GANCheckpointError, match="other.pt: .*format 'something-else'"):
        load_gan(other)
    flipped = tmp_path / "flipped.pt"  # bytes flipped inside a tensor: the zip stays valid, the checksum does not
    raw = bytearray(trained[1].read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 256] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 : len(raw) // 2 + 256])
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CorruptGANCheckpoint, match="flipped.pt: GAN checkpoint is corrupt"):
        load_gan(flipped)


def test_checkpoint_class_and_shape_mismatch(tmp_path, trained):
    _, path, _ = trained
    with pytest.raises(GANCheckpointError, match=r"num_classes=3, but num_classes=10"):
        load_gan(path, num_classes=10)
    with pytest.raises(GANCheckpointError, match=r"sample_shape=\(1, 28, 28\), but"):
        load_gan(path, sample_shape=(1, 40))
    ck = load_verified(path)
    ck["num_classes"] = 5  # state dicts hold 3-class embeddings
    bad = tmp_path / "tampered.pt"
    save_verified(bad, ck)
    with pytest.raises(GANCheckpointError, match="tampered.pt: 'generator' does not fit"):
        load_gan(bad)


def test_sample_synthetic_shapes_labels_range_and_mode(trained):
    g = trained[0].generator
    g.train()
    x, y = sample_synthetic(g, 3, 4, seed=0, batch=5)
    assert g.training  # mode restored
    g.eval()
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # trained with data_range (0, 1)
    with pytest.raises(ValueError, match="num_classes=10 does not match"):
        sample_synthetic(g, 10, 4, seed=0)
    with pytest.raises(ValueError, match="n_per_class=0"):
        sample_synthetic(g, 3, 0, seed=0)


def test_sample_grid_png(tmp_path, trained):
    out = sample_grid_png(trained[0].generator, tmp_path / "grid.png", n_per_class=3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_range_is_mapped_back():
    x, y = _data(n=24)
    cfg = GANConfig(**{**TINY, "steps": 1})
    res = train_gan(x * 255, y, 3, cfg, data_range=(0, 255))
    xs, _ = sample_synthetic(res.generator, 3, 4, seed=0)
    assert 0.0 <= float(xs.min()) and float(xs.max()) <= 255.0 and float(xs.max()) > 1.0


def test_one_dimensional_signals():
    x, y = _data(n=24, shape=(1, 40))
    # also covers: odd batch, no minibatch-std, no mode-seeking term
    cfg = GANConfig(**{**TINY, "steps": 2, "batch_size": 7, "d_mbstd_group": 0, "mode_seeking": 0})
    res = train_gan(x * 2 - 1, y, 3, cfg, data_range=(-1, 1))
    assert all(map(torch.isfinite, torch.tensor(res.history["gan/loss_g"])))
    xs, ys = sample_synthetic(res.generator, 3, 2, seed=0)
    assert xs.shape == (6, 1, 40) and ys.shape == (6,)


def test_train_gan_input_errors():
    x, y = _data(n=24)
    cfg = GANConfig(**TINY)
    with pytest.raises(ValueError, match=r"add the channel axis"):
        train_gan(x[:, 0], y, 3, cfg)
    with pytest.raises(ValueError, match=r"no samples of class\(es\) \[3\]"):
        train_gan(x, y, 4, cfg)
    with pytest.raises(ValueError, match=r"outside data_range=\(0.0, 1.0\)"):
        train_gan(x * 255, y, 3, cfg)
    with pytest.raises(ValueError, match=r"y_train shape \(23,\)"):
        train_gan(x, y[:-1], 3, cfg)
    with pytest.raises(ValueError, match=r"must lie in \[0, num_classes=2\)"):
        train_gan(x, y, 2, cfg)
    with pytest.raises(TypeError, match="cfg must be a GANConfig"):
        train_gan(x, y, 3, TINY)
    with pytest.raises(ValueError, match="divisible by 4"):
        train_gan(torch.rand(24, 1, 30, 30), y, 3, cfg)


def test_minibatch_std_feature_per_group():
    from sgdlab.gan.nets import minibatch_std

    h = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    out = minibatch_std(h, 4)
    assert out.shape == (8, 1, 5, 5)
    for grp in range(2):
        g = h[4 * grp : 4 * grp + 4]
        ref = torch.sqrt(g.var(dim=0, unbiased=False) + 1e-8).mean()
        assert torch.allclose(out[4 * grp : 4 * grp + 4], ref.expand(4, 1, 5, 5))
    with pytest.raises(ValueError, match="batch 6 is not a multiple of group=4"):
        minibatch_std(h[:6], 4)
    with pytest.raises(ValueError, match="batch_size=10 must be a multiple of d_mbstd_group=4"):
        GANConfig(batch_size=10)


def test_bf16_autocast_path_runs_on_cpu():
    x, y = _data(n=24)
    res = train_gan(x, y, 3, GANConfig(**{**TINY, "steps": 2, "precision": "bf16"}))
    xs, _ = sample_synthetic(res.generator, 3, 2, seed=0)
    assert xs.dtype == torch.float32 and torch.isfinite(xs).all()
    assert all(t.dtype == torch.float32 for t in res.discriminator.state_dict().values())


def test_gan_phase_progress_lines_are_throttled_and_always_end(capsys):
    from sgdlab.phases.gan import progress_lines

    p = progress_lines("gan: training", every_s=3600.0)
    for step in range(50, 1001, 50):
        p(step, 1000)
    out = capsys.readouterr().out.splitlines()
    assert out == [out[0]] and out[0].startswith("gan: training: step 1000/1000 [")  # only the last
    p = progress_lines("x", every_s=0.0)
    p(1, 3), p(2, 3)
    assert capsys.readouterr().out.splitlines()[0].startswith("x: step 1/3")


def test_border_fill_is_the_background_and_fill_settings_are_validated():
    from sgdlab.gan.train import border_fill

    x = torch.full((3, 1, 28, 28), -1.0)
    x[:, :, 4:24, 4:24] = 0.7  # a bright object on a black background, in [-1, 1] units
    assert border_fill(x) == pytest.approx(-1.0)
    sig = torch.zeros(2, 1, 40)
    sig[:, :, 0], sig[:, :, -1] = 0.2, 0.4
    assert border_fill(sig) == pytest.approx(0.3)  # 1-D signals: both ends
    assert GANConfig(diffaugment_fill=-0.5).diffaugment_fill == -0.5
    for bad in ("edge", 2.0, True):
        with pytest.raises(ValueError, match="diffaugment_fill"):
            GANConfig(diffaugment_fill=bad)
    with pytest.raises(ValueError, match="d_head"):
        GANConfig(d_head="mean")


def test_flatten_head_sees_the_whole_map_and_sum_head_pools_it():
    from sgdlab.gan.nets import ProjectionDiscriminator

    flat = ProjectionDiscriminator((1, 28, 28), 10, (4, 8, 8), head="flatten")
    pooled = ProjectionDiscriminator((1, 28, 28), 10, (4, 8, 8), head="sum")
    # one projection weight per (channel, position) of the 7x7 map vs one per channel
    assert flat.embed.weight.shape == (10, 8 * 7 * 7) and pooled.embed.weight.shape == (10, 8)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    assert flat(x, y).shape == (2,) and pooled(x, y).shape == (2,)
    with pytest.raises(ValueError, match="head"):
        ProjectionDiscriminator((1, 28, 28), 10, (4, 8, 8), head="max")
