"""sgdlab.models: every model builds and runs on its intended input; clear errors otherwise."""

import pytest
import torch
from torch import nn

from sgdlab.models import ModelConfigError, build_model, list_models, model_kwargs, param_count

# name -> (input_shape, num_outputs, kwargs): each model on the data it is meant for
CASES = {
    "mlp": ((1, 28, 28), 10, {"widths": (32, 16), "activation": "gelu"}),
    "cnn": ((1, 28, 28), 10, {"width": 0.25}),
    "resnet": ((3, 16, 16), 10, {"depth": 8, "width": 0.5}),
    "two_layer_relu": ((5,), 1, {"width": 16}),
    "diag_linear": ((7,), 1, {"alpha": 0.5}),
    "conv1d": ((40,), 10, {"channels": 8}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: intra-op threads only contend
    yield
    torch.set_num_threads(n)


def test_cases_cover_registry():
    assert sorted(CASES) == list_models()


@pytest.mark.parametrize("name", sorted(CASES))
def test_builds_and_runs_forward(name):
    shape, out, kw = CASES[name]
    model = build_model(name, shape, out, seed=0, **kw)
    y = model(torch.randn(3, *shape))
    assert y.shape == (3, out)
    assert torch.isfinite(y).all()
    assert param_count(model) > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_seed_gives_same_weights_and_leaves_global_rng(name):
    shape, out, kw = CASES[name]
    before = torch.get_rng_state()
    a = build_model(name, shape, out, seed=3, **kw)
    b = build_model(name, shape, out, seed=3, **kw)
    assert torch.equal(torch.get_rng_state(), before)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_mlp_widths_and_param_count():
    m = build_model("mlp", (1, 28, 28), 10, widths=(64,), seed=0)
    assert param_count(m) == 784 * 64 + 64 + 64 * 10 + 10
    m2 = build_model("mlp", (20,), 3, widths=(), flatten=False)
    assert param_count(m2) == 20 * 3 + 3


def test_cnn_is_deepobs_fmnist_2c2d():
    m = build_model("cnn", (1, 28, 28), 10)
    assert param_count(m) == 3_274_634  # DeepOBS fmnist_2c2d
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64]


def test_conv1d_accepts_both_layouts():
    m = build_model("conv1d", (1, 40), 10, seed=0)
    x = torch.randn(4, 40)
    assert torch.equal(m(x), m(x.unsqueeze(1)))


def test_resnet_norm_batch_vs_none():
    bn = build_model("resnet", (3, 32, 32), 10, depth=20, norm="batch")
    plain = build_model("resnet", (3, 32, 32), 10, depth=20, norm="none")
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert n_bn == 1 + 9 * 2 + 2  # stem, two per block, two projection shortcuts
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.Conv2d) for m in bn.modules()) == 1 + 18 + 2  # ResNet-20


def test_two_layer_symmetric_init_is_zero_and_fixed_layer_is_buffer():
    m = build_model("two_layer_relu", (5,), 1, width=8, symmetric_init=True, fixed_second_layer=True, seed=0)
    assert torch.allclose(m(torch.randn(10, 5)), torch.zeros(10, 1), atol=1e-6)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"w", "b"}
    with pytest.raises(ModelConfigError, match="width=7"):
        build_model("two_layer_relu", (5,), 1, width=7, symmetric_init=True)


def test_diag_linear_is_zero_at_init_and_matches_formula():
    m = build_model("diag_linear", (4,), 1, alpha=0.3)
    assert torch.equal(m.weight, torch.zeros(1, 4))
    with torch.no_grad():
        m.u.copy_(torch.tensor([[1.0, 2.0, 0.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0, 1.0, 2.0]])
    expected = (1 - 0.09) + (4 - 0.09) + (0 - 0.09) + 2 * (1 - 0.09)
    assert m(x).item() == pytest.approx(expected)


def test_unknown_name_lists_allowed():
    with pytest.raises(ModelConfigError, match=r"unknown model 'vgg'.*'cnn'.*'mlp'"):
        build_model("vgg", (1, 28, 28), 10)


def test_unknown_kwarg_names_it_and_lists_allowed():
    with pytest.raises(ModelConfigError, match=r"'cnn': unknown kwarg\(s\) \['depth'\].*'width'"):
        build_model("cnn", (1, 28, 28), 10, depth=3)
    assert model_kwargs("resnet") == {"depth": 20, "width": 1.0, "norm": "batch"}


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("cnn", (40,), r"model 'cnn' needs \(C,H,W\) input, dataset gives \(40,\)"),
        ("resnet", (28, 28), r"model 'resnet' needs \(C,H,W\) input, dataset gives \(28, 28\)"),
        ("conv1d", (1, 28, 28), r"model 'conv1d' needs \(L,\) or \(C,L\)"),
    ],
)
def test_shape_mismatch_errors(name, shape, match):
    with pytest.raises(ModelConfigError, match=match):
        build_model(name, shape, 10)


def test_bad_values_name_the_key():
    with pytest.raises(ModelConfigError, match="norm='layer'"):
        build_model("resnet", (3, 8, 8), 10, norm="layer")
    with pytest.raises(ModelConfigError, match="depth=9"):
        build_model("resnet", (3, 8, 8), 10, depth=9)
    with pytest.raises(ModelConfigError, match="model 'mlp': activation 'swish'.*'gelu'"):
        build_model("mlp", (4,), 2, activation="swish")
    with pytest.raises(ModelConfigError, match="num_outputs=0"):
        build_model("mlp", (4,), 0)
    with pytest.raises(ModelConfigError, match="alpha=0"):
        build_model("diag_linear", (4,), 1, alpha=0)


def test_device_and_dtype():
    m = build_model("mlp", (4,), 2, widths=(3,), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())


def test_normalized_mlp_with_fixed_last_layer_is_scale_invariant():
    """LayerNorm (no affine) after each hidden layer + a fixed output layer: f(c w) = f(w) for all trainable w;
    BatchNorm only with batch statistics; without the fixed layer or the norms it is not."""
    x = torch.randn(16, 12, dtype=torch.float64)

    def scaled_change(m, c=3.7):
        y = m(x)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(c)
        return float((m(x) - y).abs().max())

    kw = {"widths": [8, 6], "dtype": torch.float64, "seed": 0}
    ln = build_model("mlp", (12,), 3, norm="layer", train_last_layer=False, **kw)
    assert [n for n, _ in ln.named_parameters()] == ["net.1.weight", "net.4.weight"]  # no biases, last fixed
    assert "net.7.weight" in dict(ln.named_buffers()) and ln.is_scale_invariant("eval")
    assert scaled_change(ln) < 1e-8
    bn = build_model("mlp", (12,), 3, norm="batch", train_last_layer=False, **kw)
    assert bn.is_scale_invariant("train") and not bn.is_scale_invariant("eval")
    assert scaled_change(bn.train()) < 1e-8
    for other in ({"norm": "layer"}, {"train_last_layer": False}):
        m = build_model("mlp", (12,), 3, **other, **kw)
        assert not m.is_scale_invariant("train") and scaled_change(m) > 1e-3
    with pytest.raises(ModelConfigError, match="norm='group'"):
        build_model("mlp", (12,), 3, norm="group")
    with pytest.raises(ModelConfigError, match="hidden layer"):
        build_model("mlp", (12,), 3, widths=[], norm="layer")
