"""sgdlab.train.train: learning works, metrics/hooks, micro-batching, divergence, bad input."""

import math

import pytest
import torch

from sgdlab.models import build_model
from sgdlab.train import DataTensors, EpochSampler, LoopConfig, Schedule, evaluate, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on 2 shared cores: intra-op threads only contend
    yield
    torch.set_num_threads(n)


def separable(n=512, d=10, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, generator=g, dtype=dtype)
    y = (x @ w > 0).long()
    k = n * 3 // 4
    return DataTensors(x[:k], y[:k], x[k:], y[k:])


def mlp(d=10, out=2, dtype=torch.float32, seed=0, widths=(32,)):
    return build_model("mlp", (d,), out, widths=widths, seed=seed, dtype=dtype)


def params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def test_learns_separable_problem_and_hook_steps():
    data, model = separable(), mlp()
    seen = []

    def hook(step, m, opt, lr):
        seen.append((step, lr))

    cfg = LoopConfig(steps=150, batch_size=32, log_every=50, schedule=Schedule("warmup_constant", warmup_steps=10))
    res = train(model, "momentum", {"lr": 0.05}, data, cfg, on_step=hook)
    assert res.status == "finished" and res.reason is None and res.steps_done == 150
    assert res.metrics["train/acc"] > 0.95
    assert res.metrics["test/acc"] > 0.85
    assert [s for s, _ in seen] == list(range(1, 151))
    assert seen[0][1] == pytest.approx(0.005) and seen[9][1] == pytest.approx(0.05)
    assert res.samples_per_s > 0 and res.wall_time_s > 0
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no .grad left behind


def test_metrics_reach_sink_with_names_and_steps():
    data, model = separable(), mlp()
    got = []
    cfg = LoopConfig(steps=20, batch_size=16, log_every=5, eval_every=10)
    res = train(
        model,
        "sgd",
        {"lr": 0.1},
        data,
        cfg,
        metric_sink=lambda m, s: got.append((s, dict(m))),
        on_step=lambda s, *_: {"probe/x": float(s)} if s % 4 == 0 else None,
    )
    by_name = {}
    for step, m in got:
        for k, v in m.items():
            by_name.setdefault(k, []).append(step)
            assert isinstance(v, float) and math.isfinite(v)
    assert by_name["train/loss"] == [5, 10, 15, 20]
    assert by_name["train/acc"] == [5, 10, 15, 20]
    assert by_name["lr"] == [5, 10, 15, 20]
    assert by_name["test/loss"] == [10, 20] and by_name["test/acc"] == [10, 20]
    assert by_name["train_full/loss"] == [20] and by_name["train_full/acc"] == [20]
    assert by_name["probe/x"] == [4, 8, 12, 16, 20]
    assert by_name["weights/norm"] == [5, 10, 15, 20]
    norm = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))
    assert [m for s, m in got if "weights/norm" in m][-1]["weights/norm"] == pytest.approx(norm, rel=1e-6)
    final = [m for s, m in got if "train_full/loss" in m][0]
    assert final["train_full/loss"] == res.metrics["train/loss"]
    assert final["test/acc"] == res.metrics["test/acc"]


def test_train_loss_metric_is_mean_of_step_losses():
    # log_every=1 gives each step's loss; log_every=4 must report their mean
    data = separable()
    a, b = [], []
    train(
        mlp(),
        "sgd",
        {"lr": 0.1},
        data,
        LoopConfig(steps=8, batch_size=16, log_every=1, final_eval=False),
        metric_sink=lambda m, s: a.append(m["train/loss"]),
    )
    train(
        mlp(),
        "sgd",
        {"lr": 0.1},
        data,
        LoopConfig(steps=8, batch_size=16, log_every=4, final_eval=False),
        metric_sink=lambda m, s: b.append(m["train/loss"]),
    )
    assert b == pytest.approx([sum(a[:4]) / 4, sum(a[4:]) / 4], rel=1e-6)


@pytest.mark.parametrize("opt", ["sgd", "momentum"])
def test_physical_batch_accumulation_equals_full_batch(opt):
    data = separable(n=256, dtype=torch.float64)
    full, micro = mlp(dtype=torch.float64), mlp(dtype=torch.float64)
    kw = {"steps": 3, "batch_size": 32, "final_eval": False}
    train(full, opt, {"lr": 0.5}, data, LoopConfig(**kw))
    train(micro, opt, {"lr": 0.5}, data, LoopConfig(physical_batch_size=8, **kw))
    for p, q in zip(full.parameters(), micro.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    init = mlp(dtype=torch.float64)
    assert not torch.allclose(full.net[1].weight, init.net[1].weight, atol=1e-3)  # it did move


def test_hook_does_not_perturb_training_rng():
    data = separable()
    a, b = mlp(), mlp()
    cfg = LoopConfig(steps=10, batch_size=16, final_eval=False)
    train(a, "sgd", {"lr": 0.1}, data, cfg)
    train(b, "sgd", {"lr": 0.1}, data, cfg, on_step=lambda *_: {"r": torch.randn(3).sum().item()})
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_global_rng_left_untouched():
    before = torch.get_rng_state()
    train(mlp(), "sgd", {"lr": 0.1}, separable(), LoopConfig(steps=3, batch_size=16))
    assert torch.equal(torch.get_rng_state(), before)


def test_divergence_stops_with_reason_naming_step():
    data = separable()
    got = []
    res = train(
        mlp(),
        "sgd",
        {"lr": 1e4},
        data,
        LoopConfig(steps=200, batch_size=32, log_every=5),
        metric_sink=lambda m, s: got.append(s),
    )
    assert res.status == "diverged"
    assert res.steps_done < 200 and res.steps_done % 5 == 0
    assert "step" in res.reason and "train loss" in res.reason
    step = int(res.reason.split("at step ")[1].split()[0])
    assert res.steps_done - 5 < step <= res.steps_done


def test_blowup_factor_triggers_before_nan():
    data = separable()
    res = train(mlp(), "sgd", {"lr": 30.0}, data, LoopConfig(steps=100, batch_size=32, log_every=1, blowup_factor=5.0))
    assert res.status == "diverged"
    assert "exceeds blowup_factor 5" in res.reason


def test_regression_task_with_diag_linear():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 20, generator=g)
    w = torch.zeros(20)
    w[:3] = torch.tensor([1.0, -2.0, 0.5])
    y = x @ w
    data = DataTensors(x[:150], y[:150], x[150:], y[150:])
    model = build_model("diag_linear", (20,), 1, alpha=0.1)
    res = train(
        model, "sgd", {"lr": 0.05}, data, LoopConfig(steps=400, batch_size=50, task="regression", log_every=100)
    )
    assert res.status == "finished"
    assert set(res.metrics) == {"train/loss", "test/loss"}
    assert res.metrics["test/loss"] < 1e-3


def test_batchnorm_model_trains_and_eval_restores_mode():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    data = DataTensors(x[:48], y[:48], x[48:], y[48:])
    model = build_model("resnet", (3, 8, 8), 4, depth=8, width=0.25, seed=0)
    res = train(model, "adam", {"lr": 1e-3}, data, LoopConfig(steps=4, batch_size=16, eval_every=2))
    assert res.status == "finished" and model.training
    model.eval()
    m = evaluate(model, x, y, "classification", batch_size=10)
    assert not model.training and 0 <= m["acc"] <= 1


def test_sampler_epochs_without_replacement_and_state():
    s = EpochSampler(10, 3, torch.device("cpu"), seed=0)
    epoch = torch.cat([s.next_indices() for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 batches of 3, no repeats, remainder dropped
    state = s.state_dict()
    nxt = [s.next_indices().clone() for _ in range(4)]
    s2 = EpochSampler(10, 3, torch.device("cpu"), seed=99)
    s2.load_state_dict(state)
    assert all(torch.equal(a, s2.next_indices()) for a in nxt)


# ---- bad input: raises naming key/value, before any parameter changes ------------------------
BASE = {"steps": 5, "batch_size": 16}


def _bad_runs():
    data = separable()
    reg_y = DataTensors(data.x_train, data.y_train.float(), data.x_test, data.y_test.float())
    img = DataTensors(
        torch.randn(40, 1, 8, 8), torch.randint(0, 2, (40,)), torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    )
    return [
        ("unknown optimizer", "sgdd", {"lr": 0.1}, data, BASE, r"unknown optimizer 'sgdd'"),
        ("foreign hparam", "sgd", {"lr": 0.1, "betas": (0.9, 0.9)}, data, BASE, r"betas"),
        ("lr zero", "sgd", {"lr": 0.0}, data, BASE, r"'lr'.*0\.0"),
        ("lr negative", "adam", {"lr": -1.0}, data, BASE, r"'lr'.*-1\.0"),
        (
            "batch > n",
            "sgd",
            {"lr": 0.1},
            data,
            {"steps": 5, "batch_size": 1000},
            r"batch_size=1000 exceeds the number of training samples \(384\)",
        ),
        (
            "shape",
            "sgd",
            {"lr": 0.1},
            img,
            BASE,
            r"model MLP cannot take dataset samples of shape "
            r"\(1, 8, 8\)",
        ),
        ("float labels", "sgd", {"lr": 0.1}, reg_y, BASE, r"task='classification' needs integer class labels.*float32"),
        (
            "ckpt no path",
            "sgd",
            {"lr": 0.1},
            data,
            {**BASE, "checkpoint_every": 2},
            r"checkpoint_every=2 needs checkpoint_path",
        ),
    ]


@pytest.mark.parametrize("case", _bad_runs(), ids=lambda c: c[0])
def test_bad_input_raises_before_any_change(case):
    _, opt, hp, data, cfg, match = case
    model = mlp()
    before = params(model)
    with pytest.raises((ValueError, TypeError), match=match):
        train(model, opt, hp, data, LoopConfig(**cfg))
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))
    assert all(p.grad is None for p in model.parameters())


def test_too_few_logits_for_labels():
    data = separable()
    y = data.y_train.clone()
    y[0] = 5
    bad = DataTensors(data.x_train, y, data.x_test, data.y_test)
    with pytest.raises(ValueError, match=r"labels in \[0, 5\]"):
        train(mlp(), "sgd", {"lr": 0.1}, bad, LoopConfig(**BASE))


def test_probe_does_not_touch_batchnorm_buffers():
    data = DataTensors(
        torch.randn(40, 3, 8, 8), torch.randint(0, 2, (40,)), torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))
    )
    model = build_model("resnet", (3, 8, 8), 2, depth=8, width=0.25)
    before = params(model)
    with pytest.raises(ValueError, match="checkpoint_path"):
        train(model, "sgd", {"lr": 0.1}, data, LoopConfig(**BASE, checkpoint_every=1))
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": -3}, "steps=-3"),
        ({"steps": 5, "batch_size": 16, "physical_batch_size": 5}, "physical_batch_size=5"),
        ({"steps": 5, "batch_size": 16, "physical_batch_size": 32}, "physical_batch_size=32"),
        ({"steps": 5, "task": "ranking"}, "task='ranking'"),
        ({"steps": 5, "blowup_factor": 0.5}, "blowup_factor=0.5"),
        ({"steps": 5, "schedule": {"kind": "exp"}}, "kind='exp'"),
    ],
)
def test_bad_config_names_the_key(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LoopConfig(**kw)


def test_amp_and_compile_ignored_on_cpu_with_warning():
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.warns(UserWarning, match="amp_bf16=True is ignored on cpu"):
        res = train(
            mlp(), "sgd", {"lr": 0.1}, separable(), LoopConfig(steps=2, batch_size=16, amp_bf16=True, device="cpu")
        )
    assert res.status == "finished"


def test_schedule_free_returns_eval_weights(tmp_path):
    from sgdlab.optim import list_specs

    if "schedule_free_sgd" not in {s.name for s in list_specs()}:
        pytest.skip("schedule_free_sgd not registered")
    from sgdlab.train import load_checkpoint

    data, model = separable(), mlp()
    path = tmp_path / "sf.pt"
    res = train(
        model,
        "schedule_free_sgd",
        {"lr": 0.5},
        data,
        LoopConfig(steps=30, batch_size=32, eval_every=10),
        checkpoint_path=path,
    )
    m = evaluate(model, data.x_test, data.y_test, "classification")
    assert m["loss"] == res.metrics["test/loss"]  # returned model = the evaluated (x) weights
    ck = load_checkpoint(path)
    assert ck["optimizer_mode"] == "eval"
    assert all(torch.equal(a, b) for a, b in zip(ck["model"].values(), model.state_dict().values()))
    more = train(
        mlp(seed=5),
        "schedule_free_sgd",
        {"lr": 0.5},
        data,
        LoopConfig(steps=40, batch_size=32, eval_every=10),
        checkpoint_path=path,
    )
    assert more.resumed_from == 30 and more.status == "finished"


def test_progress_callable_and_quiet_in_ci(monkeypatch):
    from sgdlab.train.progress import make_progress

    calls = []
    train(
        mlp(),
        "sgd",
        {"lr": 0.1},
        separable(),
        LoopConfig(steps=6, batch_size=16, log_every=3),
        progress=lambda s, total, m: calls.append((s, total, sorted(m))),
    )
    keys = ["lr", "train/acc", "train/loss", "weights/norm"]
    assert calls == [(3, 6, keys), (6, 6, keys)]
    monkeypatch.setenv("CI", "true")
    assert make_progress(True, 10) is None
    with pytest.raises(TypeError, match="progress=3"):
        make_progress(3, 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_compile_smoke():
    data, model = separable(), mlp()
    res = train(
        model,
        "adam",
        {"lr": 1e-2},
        data,
        LoopConfig(steps=50, batch_size=32, amp_bf16=True, compile=True, device="cuda"),
    )
    assert res.status == "finished" and res.metrics["train/acc"] > 0.8
    assert next(model.parameters()).is_cuda


# hparams some registered optimizers need beyond their defaults
REQUIRED_HPARAMS = {"label_noise_sgd": {"num_classes": 2}}


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_every_registered_optimizer_runs_through_the_loop():
    from sgdlab.optim import list_specs

    data = separable(n=128)
    for spec in list_specs():
        model = mlp()
        res = train(
            model,
            spec.name,
            REQUIRED_HPARAMS.get(spec.name, {}),
            data,
            LoopConfig(steps=3, batch_size=16, physical_batch_size=8, log_every=1),
        )
        assert res.status == "finished", (spec.name, res.reason)
        assert math.isfinite(res.metrics["train/loss"]), spec.name
        assert all(p.grad is None for p in model.parameters()), spec.name


def test_gradient_accumulation_with_batchnorm_warns_of_ghost_batchnorm():

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    model = build_model("resnet", (3, 8, 8), 10, seed=0)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    cfg = LoopConfig(steps=1, batch_size=16, physical_batch_size=8, final_eval=False)
    with pytest.warns(UserWarning, match=r"ghost BatchNorm"):
        train(model, "sgd", {"lr": 0.01}, DataTensors(x, y, x, y), cfg)


def test_the_minibatches_of_one_step_are_independent_draws():
    """SVAG's two batches per step come from independent streams: with one permutation they would always
    be disjoint (noise multiplier l + (l-1)B/(N-B) instead of l); independent epoch-wise draws overlap
    with probability 1 - C(N-B, B)/C(N, B) = 0.234 for N=64, B=4."""
    from math import comb

    from sgdlab.train.batching import make_samplers

    s0, s1 = make_samplers("epoch", 64, 4, torch.device("cpu"), [1, 2])
    overlap = sum(bool(set(s0.next_indices().tolist()) & set(s1.next_indices().tolist())) for _ in range(4000))
    assert overlap / 4000 == pytest.approx(1 - comb(60, 4) / comb(64, 4), abs=0.025)
    iid = make_samplers("iid", 10, 5, torch.device("cpu"), [0])[0]
    draws = torch.stack([iid.next_indices() for _ in range(2000)])
    repeats = (draws.sort(dim=1).values.diff(dim=1) == 0).any(dim=1).float().mean().item()
    assert repeats == pytest.approx(1 - (10 * 9 * 8 * 7 * 6) / 10**5, abs=0.03)  # with replacement: 0.698
    with pytest.raises(ValueError, match=r"sampling='shuffled'"):
        LoopConfig(steps=1, sampling="shuffled")


def test_eval_val_logs_the_validation_curve_at_eval_points():
    d = separable()
    n = len(d.x_test) // 2
    data = DataTensors(d.x_train, d.y_train, d.x_test[:n], d.y_test[:n], d.x_test[n:], d.y_test[n:])
    got = []
    cfg = LoopConfig(steps=20, batch_size=16, log_every=5, eval_every=10, eval_val=True)
    model = mlp()
    train(model, "sgd", {"lr": 0.1}, data, cfg, metric_sink=lambda m, s: got.append((s, m)))
    val_points = [(s, m["val/acc"]) for s, m in got if "val/acc" in m]
    assert [s for s, _ in val_points] == [10]  # step 20 is the final evaluation (the caller's val point)
    cfg_step10 = LoopConfig(steps=10, batch_size=16, log_every=5, eval_every=0)
    again = mlp()
    train(again, "sgd", {"lr": 0.1}, data, cfg_step10)
    want = evaluate(again, d.x_test[n:], d.y_test[n:], "classification")
    assert val_points[0][1] == want["acc"]  # the same weights as a 10-step run, evaluated on the val part
    test_at_10 = [m["test/acc"] for s, m in got if s == 10 and "test/acc" in m]
    assert test_at_10 and "val/loss" in dict(got)[10]


def test_eval_val_without_a_validation_set_is_refused_before_training():
    data, model = separable(), mlp()
    before = params(model)
    with pytest.raises(ValueError, match="eval_val=True needs a non-empty validation set"):
        train(model, "sgd", {"lr": 0.1}, data, LoopConfig(steps=5, batch_size=16, eval_every=5, eval_val=True))
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))
