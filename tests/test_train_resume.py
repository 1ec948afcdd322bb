"""Checkpoints: bit-exact resume on CPU, weights_only loading, config mismatch errors."""

import io
from pathlib import Path

import pytest
import torch

from sgdlab.models import build_model
from sgdlab.optim import list_specs
from sgdlab.train import DataTensors, LoopConfig, Schedule, load_checkpoint, train

REGISTERED = {s.name for s in list_specs()}

# optimizers whose resume must be exact; the own ones consume extra RNG / minibatches per step
RESUME_CASES = [
    ("sgd", {"lr": 0.1}),
    ("momentum", {"lr": 0.05}),
    ("adam", {"lr": 1e-3}),
    ("sam", {"lr": 0.05}),
    ("schedule_free_sgd", {"lr": 0.1}),
    ("label_noise_sgd", {"lr": 0.05, "task": "regression", "sigma": 0.5}),
    ("label_noise_sgd", {"lr": 0.05, "num_classes": 2, "p": 0.3}),
    ("svag", {"lr": 0.05}),
    ("local_sgd", {"lr": 0.05, "workers": 3, "local_steps": 2}),
    ("xgrad_sgd", {"lr": 0.05}),
    ("xgrad_adamw", {"lr": 1e-3}),
    ("xgrad_adam", {"lr": 1e-3}),
    # warmup_steps=3 < checkpoint step 6: the checkpoint carries frozen v and both error feedbacks
    ("onebit_adam", {"lr": 1e-3, "workers": 3, "warmup_steps": 3}),
    ("zo_sgd", {"lr": 0.01, "n_perturbations": 2, "perturbation": "rademacher", "weight_decay": 0.01}),
    # the checkpoint (step 6) falls in the annealing phase [3, 8): it carries m and the step count
    ("zo_adamu", {"lr": 0.01, "t1": 3, "t2": 8, "t3": 13, "anneal": "continuous"}),
    ("zo_adamu", {"lr": 0.01, "t1": 3, "t2": 8, "t3": 9}),
    # the checkpoint carries the Hutchinson diagonal and the probe generator / the Adam moment and the slack
    ("psps", {"init_probes": 4, "gamma_max": 1.0}),
    ("psps", {"precond": "adam", "slack": "l2", "gamma_max": 1.0}),
    ("gam_sam", {"lr": 0.05, "sam_rho": 0.05, "rho": 0.05}),
    ("svag_momentum", {"lr": 0.05, "l": 2.0}),
    # the checkpoint carries the noise generator and the accountant's history: same noise, same dp/epsilon
    ("dp_sgd", {"lr": 0.1, "momentum": 0.5, "max_grad_norm": 0.5, "noise_multiplier": 1.0}),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Preempted(Exception):
    pass


def data(task="classification"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() if task == "classification" else x[:, :2].sum(1)
    return DataTensors(x[:160], y[:160], x[160:], y[160:])


def model(seed=0, out=2):
    return build_model("mlp", (6,), out, widths=(16,), seed=seed)


IDS = [f"{o}-{h.get('task', 'classification')}" for o, h in RESUME_CASES]


@pytest.mark.parametrize(("opt", "hp"), RESUME_CASES, ids=IDS)
def test_resume_is_bit_exact(tmp_path, opt, hp):
    if opt not in REGISTERED:
        pytest.skip(f"optimizer {opt!r} not registered yet")
    task = hp.get("task", "classification")
    out = 1 if task == "regression" else 2
    d = data(task)
    N = 6
    # log_every does not divide N: the checkpoint carries a half-filled metrics window
    cfg = LoopConfig(
        steps=2 * N,
        batch_size=16,
        log_every=4,
        checkpoint_every=N,
        task=task,
        schedule=Schedule("cosine", min_lr_ratio=0.1),
    )
    straight = model(out=out)
    logs_a = []
    res_a = train(
        straight,
        opt,
        hp,
        d,
        cfg,
        checkpoint_path=tmp_path / "straight.pt",
        metric_sink=lambda m, s: logs_a.append((s, m)),
    )

    path = tmp_path / "ckpt.pt"
    run_preempted_model = build_model("mlp", (6,), out, widths=(16,), seed=0)

    def hook(step, *_):
        if step == N + 2:
            raise Preempted

    with pytest.raises(Preempted):
        train(run_preempted_model, opt, hp, d, cfg, checkpoint_path=path, on_step=hook)
    assert load_checkpoint(path)["step"] == N

    fresh = build_model("mlp", (6,), out, widths=(16,), seed=123)  # new objects, other init
    logs_b = []
    res_b = train(fresh, opt, hp, d, cfg, checkpoint_path=path, metric_sink=lambda m, s: logs_b.append((s, m)))
    assert res_b.resumed_from == N and res_b.steps_done == 2 * N
    for (na, a), (nb, b) in zip(straight.state_dict().items(), fresh.state_dict().items()):
        assert na == nb and torch.equal(a, b), na
    assert res_a.metrics == res_b.metrics
    assert [x for x in logs_a if x[0] > N] == logs_b  # metrics after the resume point identical


def test_checkpoint_loads_weights_only_and_holds_config(tmp_path):
    path = tmp_path / "c.pt"
    cfg = LoopConfig(steps=4, batch_size=16, checkpoint_every=2)
    train(model(), "adam", {"lr": 1e-3}, data(), cfg, checkpoint_path=path)
    outer = torch.load(path, weights_only=True)  # a checksummed envelope, itself weights_only-loadable
    assert outer["format"] == "sgdlab.verified/1" and len(outer["sha256"]) == 64
    ck = torch.load(io.BytesIO(outer["blob"].numpy().tobytes()), weights_only=True)
    assert load_checkpoint(path)["step"] == ck["step"]
    assert ck["step"] == 4 and ck["config"] == cfg.to_dict()
    assert ck["optimizer_name"] == "adam" and ck["hparams"]["lr"] == 1e-3
    assert ck["sampler"]["generator"].dtype == torch.uint8
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp files left


def test_finished_checkpoint_is_a_no_op_and_extends(tmp_path):
    path = tmp_path / "c.pt"
    d = data()
    cfg = LoopConfig(steps=5, batch_size=16)
    m1 = model()
    train(m1, "sgd", {"lr": 0.1}, d, cfg, checkpoint_path=path)
    m2 = model(seed=9)
    res = train(m2, "sgd", {"lr": 0.1}, d, cfg, checkpoint_path=path)
    assert res.resumed_from == 5 and res.steps_done == 5
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    # extending the run: 5 + 5 steps == 10 straight steps (constant lr)
    m3 = model(seed=9)
    train(m3, "sgd", {"lr": 0.1}, d, LoopConfig(steps=10, batch_size=16), checkpoint_path=path)
    m4 = model()
    train(m4, "sgd", {"lr": 0.1}, d, LoopConfig(steps=10, batch_size=16))
    assert all(torch.equal(a, b) for a, b in zip(m3.parameters(), m4.parameters()))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    path = tmp_path / "c.pt"
    d = data()
    train(model(), "sgd", {"lr": 0.1}, d, LoopConfig(steps=2, batch_size=16), checkpoint_path=path)
    m = model()
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(ValueError, match=r"batch_size: checkpoint 16, now 8.*hparams|hparams.lr"):
        train(m, "sgd", {"lr": 0.2}, d, LoopConfig(steps=4, batch_size=8), checkpoint_path=path)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    # resume=False starts afresh and overwrites
    res = train(m, "sgd", {"lr": 0.2}, d, LoopConfig(steps=3, batch_size=8), checkpoint_path=path, resume=False)
    assert res.resumed_from == 0 and load_checkpoint(path)["step"] == 3


def test_checkpoint_beyond_steps(tmp_path):
    path = tmp_path / "c.pt"
    train(model(), "sgd", {"lr": 0.1}, data(), LoopConfig(steps=4, batch_size=16), checkpoint_path=path)
    with pytest.raises(ValueError, match="at step 4, beyond LoopConfig steps=3"):
        train(model(), "sgd", {"lr": 0.1}, data(), LoopConfig(steps=3, batch_size=16), checkpoint_path=path)


def test_not_a_checkpoint_is_named_and_moved_aside(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"hello": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"c\.pt: not a checksummed sgdlab file"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match=r"c\.pt: not a checksummed.*moved to .*c\.pt\.corrupt-.*from step 0"):
        res = train(model(), "sgd", {"lr": 0.1}, data(), LoopConfig(steps=2, batch_size=16), checkpoint_path=path)
    assert res.resumed_from == 0 and res.quarantined and Path(res.quarantined).is_file()
    assert load_checkpoint(path)["step"] == 2  # a fresh, verified checkpoint in its place


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_checkpoint_is_never_resumed(tmp_path, damage):
    """256 flipped bytes inside a tensor (the zip stays valid: torch.load alone reads wrong numbers) or a
    truncated file: named, quarantined, and the run trains from step 0 to exactly the uninterrupted result."""
    cfg = LoopConfig(steps=6, batch_size=16, checkpoint_every=3)
    straight = model()
    train(straight, "sgd", {"lr": 0.1}, data(), cfg, checkpoint_path=tmp_path / "straight.pt")
    path = tmp_path / "c.pt"
    m = model()
    train(m, "sgd", {"lr": 0.1}, data(), LoopConfig(steps=3, batch_size=16, checkpoint_every=3), checkpoint_path=path)
    if damage == "flip":
        outer = torch.load(path, weights_only=True)
        n = outer["blob"].numel()
        raw = bytearray(path.read_bytes())
        i = raw.find(outer["blob"].numpy().tobytes()[n // 2 : n // 2 + 64])  # inside the payload's tensors
        assert i > 0
        raw[i : i + 256] = bytes(b ^ 0xFF for b in raw[i : i + 256])
        path.write_bytes(bytes(raw))
        assert torch.load(path, weights_only=True)["format"] == "sgdlab.verified/1"  # still a valid zip
        match = "SHA-256 mismatch"
    else:
        path.write_bytes(path.read_bytes()[:-500])
        match = "unreadable or truncated"
    with pytest.raises(ValueError, match=f"c\\.pt: {match}"):
        load_checkpoint(path)
    resumed = model()
    with pytest.warns(UserWarning, match=match):
        res = train(resumed, "sgd", {"lr": 0.1}, data(), cfg, checkpoint_path=path)
    assert res.resumed_from == 0 and res.steps_done == 6 and res.status == "finished"
    assert len(list(tmp_path.glob("c.pt.corrupt-*"))) == 1
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
