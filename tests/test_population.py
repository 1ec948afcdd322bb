"""Population training equals one-at-a-time training, member by member (float64: to 1e-10 after 50 steps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgdlab import interrupt
from sgdlab.models import build_model
from sgdlab.optim import build_optimizer, get_spec, list_specs, resolve_hparams
from sgdlab.train import DataTensors, LoopConfig, load_checkpoint, train
from sgdlab.train.foreach_step import foreach_eligible
from sgdlab.train.population import (
    POPULATION_FAMILIES,
    TRAINED_ALONE,
    Member,
    check_population,
    population_blocker,
    train_population,
)

SEEDS_LRS = [(0, 0.02), (1, 0.05), (2, 0.01), (3, 0.03), (4, 0.02), (5, 0.04), (6, 0.015), (7, 0.025)]
# per family, hparams besides lr (adaptive families get smaller steps)
EXTRA = {"label_noise_sgd": {"num_classes": 3, "p": 0.2}}
LR_SCALE = {"adam": 0.1, "adamw": 0.1, "nadam": 0.1, "radam": 0.1, "rmsprop": 0.05, "rmsprop_bc": 0.05,
            "adagrad": 1.0, "adabelief": 0.1, "adabound": 0.1, "adan": 0.1, "lamb": 0.1, "lion": 0.02,
            "soap": 0.1, "shampoo": 0.1, "psgd_kron": 0.1, "schedule_free_adamw": 0.1, "apollo": 0.1,
            "apollo_mini": 0.1, "svag_adam": 0.1, "adafactor": 0.1}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(dtype=torch.float64, n=120, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 40, 5, generator=g, dtype=dtype)
    y = (x[:, :classes].argmax(1)).long()
    return DataTensors(x[:n], y[:n], x[n:], y[n:])


def _model(seed, dtype=torch.float64, **kw):
    return build_model("mlp", (5,), 3, widths=(12,), seed=seed, dtype=dtype, **kw)


def _cfg(seed, steps=50, **kw):
    base = dict(steps=steps, batch_size=16, log_every=10, eval_every=25, seed=seed, device="cpu")
    return LoopConfig(**{**base, **kw})


def _hp(opt, lr):
    return {"lr": lr * LR_SCALE.get(opt, 1.0), **EXTRA.get(opt, {})}


class Sink:
    def __init__(self):
        self.points: list[tuple[int, dict]] = []

    def __call__(self, metrics, step):
        self.points.append((step, dict(metrics)))


def _alone(opt, seed, lr, data, dtype=torch.float64, **kw):
    m, sink = _model(seed, dtype), Sink()
    res = train(m, opt, _hp(opt, lr), data, _cfg(seed, **kw), metric_sink=sink)
    return m, res, sink


def _members(opt, data, dtype=torch.float64, pairs=SEEDS_LRS, **kw):
    return [Member(_model(s, dtype), opt, _hp(opt, lr), data, _cfg(s, **kw), metric_sink=Sink()) for s, lr in pairs]


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _same_points(a: Sink, b: Sink, tol: float) -> None:
    assert [s for s, _ in a.points] == [s for s, _ in b.points]
    for (_, ma), (_, mb) in zip(a.points, b.points):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert ma[k] == pytest.approx(mb[k], rel=tol, abs=tol), k


@pytest.mark.parametrize("opt", sorted(POPULATION_FAMILIES))
def test_each_member_matches_its_single_run_in_float64(opt):
    data = _data()
    members = _members(opt, data)
    results = train_population(members)
    for (seed, lr), m, res in zip(SEEDS_LRS, members, results):
        assert not isinstance(res, BaseException), res
        alone, res1, sink1 = _alone(opt, seed, lr, data)
        assert res.status == res1.status and res.steps_done == res1.steps_done == 50
        assert _max_diff(m.model, alone) < 1e-10, (opt, seed)
        _same_points(m.metric_sink, sink1, 1e-9)
        for k, v in res1.metrics.items():
            assert res.metrics[k] == pytest.approx(v, rel=1e-9, abs=1e-12)


def test_float32_members_match_within_the_documented_tolerance():
    """Batched kernels round differently: after 50 steps of adam a member is within 1e-4 of its run alone."""
    data = _data(torch.float32)
    members = _members("adam", data, torch.float32)
    train_population(members)
    for (seed, lr), m in zip(SEEDS_LRS, members):
        alone, _, _ = _alone("adam", seed, lr, data, torch.float32)
        assert _max_diff(m.model, alone) < 1e-4


@pytest.mark.parametrize("opt", ["sgd", "adam", "label_noise_sgd", "svag"])
def test_a_population_interrupted_and_resumed_ends_as_one_never_stopped(tmp_path, opt):
    data = _data()
    pairs = SEEDS_LRS[:4]

    def members(tag):
        out = _members(opt, data, pairs=pairs, checkpoint_every=10)
        for i, m in enumerate(out):
            m.checkpoint_path = tmp_path / tag / f"m{i}.pt"
        return out

    straight = members("straight")
    train_population(straight)
    resumed = members("resumed")
    stop_at = {"step": 23}

    def stopper(step, model, optimizer, lr):
        if step == stop_at["step"]:
            interrupt.request("test")
        return None

    resumed[2].on_step = stopper
    try:
        with pytest.raises(interrupt.Interrupted, match="stopped at step 23 of 50"):
            train_population(resumed)
    finally:
        interrupt.clear()
    assert all(load_checkpoint(m.checkpoint_path)["step"] == 23 for m in resumed)
    again = members("resumed")
    for m, first in zip(again, resumed):
        m.metric_sink = first.metric_sink  # one store per run across the interruption
    results = train_population(again)
    assert all(r.resumed_from == 23 and r.steps_done == 50 for r in results)
    for a, b in zip(again, straight):
        assert _max_diff(a.model, b.model) == 0.0
    # a member's checkpoint is a single-run checkpoint: a single run resumes it and ends the same
    seed, lr = pairs[1]
    alone = _model(seed)
    train(
        alone, opt, _hp(opt, lr), data, _cfg(seed, checkpoint_every=10), checkpoint_path=tmp_path / "resumed" / "m1.pt"
    )
    assert _max_diff(alone, straight[1].model) < 1e-10


def test_a_diverging_member_stops_and_the_others_are_undisturbed():
    data = _data()
    pairs = [(0, 0.05), (1, 500.0), (2, 0.02)]
    members = _members("sgd", data, pairs=pairs, blowup_factor=10.0)
    results = train_population(members)
    assert results[1].status == "diverged" and results[1].steps_done < 50
    for i in (0, 2):
        seed, lr = pairs[i]
        alone, res1, _ = _alone("sgd", seed, lr, data)
        assert results[i].status == "finished" and _max_diff(members[i].model, alone) < 1e-10


def test_a_member_whose_hook_fails_stops_with_its_error_alone():
    data = _data()
    members = _members("momentum", data, pairs=SEEDS_LRS[:3])

    def broken(step, model, optimizer, lr):
        if step == 7:
            raise RuntimeError("probe failed")

    members[0].on_step = broken
    results = train_population(members)
    assert isinstance(results[0], RuntimeError) and str(results[0]) == "probe failed"
    for (seed, lr), m, r in zip(SEEDS_LRS[1:3], members[1:], results[1:]):
        alone, _, _ = _alone("momentum", seed, lr, data)
        assert r.status == "finished" and _max_diff(m.model, alone) < 1e-10


def _closure_calls(name: str) -> list[tuple[int, bool]]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    hp = resolve_hparams(name, {"lr": 0.01, **EXTRA.get(name, {})})
    opt = build_optimizer(name, m.named_parameters(), hp)
    if get_spec(name).per_sample_grads:  # DP-SGD records per-sample gradients with hooks on m
        opt.attach(m)
    if get_spec(name).train_eval:
        opt.train()
    w0 = [p.detach().clone() for p in m.parameters()]
    calls = []

    def closure(k=0, backward=True):
        calls.append((k, all(torch.equal(a, p) for a, p in zip(w0, m.parameters()))))
        if not backward:
            with torch.no_grad():
                return nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward(create_graph=get_spec(name).create_graph)
        return loss.detach()

    opt.step(closure)
    return calls


@pytest.mark.parametrize("name", sorted(s.name for s in list_specs()))
def test_population_families_step_from_one_gradient_per_minibatch_at_the_current_weights(name):
    """The contract the population relies on, for every family it lists; the others break it (or need
    second-order graphs) and are trained alone."""
    calls = _closure_calls(name)
    spec = get_spec(name)
    bps = spec.batches_per_step if isinstance(spec.batches_per_step, int) else 2
    exact = calls == [(k, True) for k in range(bps)] and not spec.create_graph
    if name in POPULATION_FAMILIES:
        assert exact, calls
    else:
        assert name in TRAINED_ALONE or not exact, f"{name} could join populations: {calls}"


def test_blockers_and_mismatches_are_named_before_any_compute():
    data = _data()
    assert "re-evaluates" not in (population_blocker(_model(0), "sgd", _cfg(0)) or "")
    assert "does not step from one gradient" in population_blocker(_model(0), "sam", _cfg(0))
    bn = build_model("mlp", (5,), 3, widths=(12,), seed=0, dtype=torch.float64, norm="batch")
    assert "BatchNorm" in population_blocker(bn, "sgd", _cfg(0))
    assert "micro-batches" in population_blocker(_model(0), "sgd", _cfg(0, physical_batch_size=8))
    a, b = _members("sgd", data, pairs=SEEDS_LRS[:2])
    before = [p.clone() for p in a.model.parameters()]
    b.cfg = _cfg(1, batch_size=8)
    with pytest.raises(ValueError, match=r"population member 1: LoopConfig.batch_size=8 differs from member 0's 16"):
        train_population([a, b])
    b.cfg, b.optimizer_name = _cfg(1), "lion"
    with pytest.raises(ValueError, match="population member 1: optimizer 'lion' differs.*only adam, adamw"):
        check_population([a, b])
    b.optimizer_name, b.hparams = "adam", {"lr": 0.01}
    check_population([a, b])  # the torch.optim families mix (test_torch_optim_families_mix_in_one_population)
    b.optimizer_name, b.hparams = "sgd", {"lr": -1.0}
    with pytest.raises(ValueError, match="population member 1: .*lr"):
        train_population([a, b])
    b.hparams, b.model = {"lr": 0.1}, build_model("mlp", (5,), 3, widths=(7,), seed=1, dtype=torch.float64)
    with pytest.raises(ValueError, match="population member 1: model parameters or buffers differ"):
        train_population([a, b])
    assert all(torch.equal(p, q) for p, q in zip(before, a.model.parameters()))


def test_hooks_see_each_member_exactly_as_its_single_run_does():
    """The in-training probes (on_step) of a member see its own model and optimizer at every step."""
    data = _data()

    def recorder(log):
        def hook(step, model, optimizer, lr):
            log.append((step, lr, sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())))
            return {"probe/norm": log[-1][2]} if step % 10 == 0 else None

        return hook

    pairs = SEEDS_LRS[:3]
    members = _members("adam", data, pairs=pairs, schedule={"kind": "cosine"})
    logs = [[] for _ in members]
    for m, log in zip(members, logs):
        m.on_step = recorder(log)
    train_population(members)
    for (seed, lr), m, log in zip(pairs, members, logs):
        alone_log, sink = [], Sink()
        train(_model(seed), "adam", _hp("adam", lr), data, _cfg(seed, schedule={"kind": "cosine"}),
              metric_sink=sink, on_step=recorder(alone_log))  # fmt: skip
        assert [(s, lr_) for s, lr_, _ in log] == [(s, lr_) for s, lr_, _ in alone_log]
        assert [n for *_, n in log] == pytest.approx([n for *_, n in alone_log], rel=1e-12)
        _same_points(m.metric_sink, sink, 1e-9)


@pytest.mark.parametrize(
    "opt,shared", [("adam", True), ("momentum", True), ("svag", True), ("svag_adam", True), ("lion", False)]
)
def test_torch_optim_members_take_one_shared_foreach_update(monkeypatch, opt, shared):
    """sgd/momentum/nesterov/adam/adamw/rmsprop_bc and the SVAG members step in foreach calls (foreach_step.py);
    others each alone."""
    import sgdlab.train.population as pop

    calls = []
    real = pop.foreach_step
    monkeypatch.setattr(pop, "foreach_step", lambda opts, first=None: (calls.append(len(opts)), real(opts, first)))
    data = _data()
    members = _members(opt, data, pairs=SEEDS_LRS[:3], steps=10)
    train_population(members)
    assert calls == ([3] * 10 if shared else [])
    alone, _, _ = _alone(opt, 0, SEEDS_LRS[0][1], data, steps=10)
    assert _max_diff(members[0].model, alone) < 1e-12


def test_packed_members_write_single_run_checkpoints_and_own_their_weights_after(tmp_path):
    """The foreach families train "packed" (each member's parameter a row of one stacked tensor): checkpoints
    written mid-population hold only the member's own weights, and every member owns its storage afterwards."""
    data = _data()
    wide = dict(widths=(200,))
    members = [
        Member(build_model("mlp", (5,), 3, seed=s, dtype=torch.float64, **wide), "momentum", {"lr": lr}, data,
               _cfg(s, steps=20, checkpoint_every=10), tmp_path / f"m{s}.pt")
        for s, lr in SEEDS_LRS
    ]  # fmt: skip
    stop = {"step": 15}
    members[0].on_step = lambda step, *_: interrupt.request("test") if step == stop["step"] else None
    try:
        with pytest.raises(interrupt.Interrupted):
            train_population(members)
    finally:
        interrupt.clear()
    for m in members:
        for p in m.model.parameters():  # own storage again (not a row of the 8-member stack)
            assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    alone = build_model("mlp", (5,), 3, seed=0, dtype=torch.float64, **wide)
    train(
        alone, "momentum", {"lr": 0.02}, data, _cfg(0, steps=15, checkpoint_every=10), checkpoint_path=tmp_path / "a.pt"
    )
    size = (tmp_path / "a.pt").stat().st_size  # 1803 float64 weights + momentum: ~30 kB; 8 members' rows: ~8x
    for m in members:
        assert load_checkpoint(m.checkpoint_path)["step"] == 15
        assert abs(m.checkpoint_path.stat().st_size - size) < 0.05 * size, (m.checkpoint_path.stat().st_size, size)


def test_a_hook_that_rebinds_parameter_data_is_followed():
    """A member whose parameter is re-bound (``p.data = ...``) mid-population leaves the stacked weights: the
    population repacks from the member's own values, so it still ends as its single run."""

    def rebind(step, model, optimizer, lr):
        if step in (5, 17):
            for p in model.parameters():
                p.data = p.data.clone() * 0.5
        return None

    data = _data()
    members = _members("momentum", data, pairs=SEEDS_LRS[:4], steps=30)
    for m in members[::2]:
        m.on_step = rebind
    train_population(members)
    for i, ((seed, lr), m) in enumerate(zip(SEEDS_LRS[:4], members)):
        alone = _model(seed)
        train(
            alone, "momentum", _hp("momentum", lr), data, _cfg(seed, steps=30), on_step=rebind if i % 2 == 0 else None
        )
        assert _max_diff(m.model, alone) < 1e-10, i


def test_stack_layouts_follow_the_gradient():
    """_layout reads a dense tensor's dimension order (innermost first); _strides rebuilds it for another size."""
    from sgdlab.train.population import _layout, _strides

    assert _layout(torch.empty(2, 3, 4)) == (2, 1, 0)
    t = torch.empty(2, 4, 3).transpose(1, 2)  # shape (2, 3, 4), strides (12, 1, 3): a vmapped Linear weight grad
    assert _layout(t) == (1, 2, 0)
    assert _strides(torch.Size((5, 3, 4)), (1, 2, 0)) == (12, 1, 3)
    assert _strides(torch.Size((2, 3, 4)), _layout(t)) == t.stride()
    assert _layout(torch.empty(3, 1).expand(3, 4)) is None  # overlapping: no stack can take it
    assert _layout(torch.empty(4, 6)[:, :3]) is None  # gaps
    assert _layout(torch.empty(1, 5)) == (1, 0)


def test_torch_optim_families_mix_in_one_population():
    """sgd, momentum, nesterov, adam, adamw and rmsprop_bc members share one population (one shared foreach
    update, packed weights); each still ends as its own single run."""
    from sgdlab.train.population import SHARED_UPDATE_FAMILIES

    data = _data()
    fams = sorted(SHARED_UPDATE_FAMILIES)
    members = [
        Member(_model(i), f, _hp(f, 0.03), data, _cfg(i, steps=30), metric_sink=Sink()) for i, f in enumerate(fams)
    ]
    for m in members:  # every one of them takes the shared update (else the population would step each alone)
        opt = build_optimizer(m.optimizer_name, m.model.named_parameters(), m.hparams)
        assert foreach_eligible(opt) is None, m.optimizer_name
    results = train_population(members)
    for i, (f, m, res) in enumerate(zip(fams, members, results)):
        assert not isinstance(res, BaseException), res
        alone, sink = _model(i), Sink()
        train(alone, f, _hp(f, 0.03), data, _cfg(i, steps=30), metric_sink=sink)
        assert _max_diff(m.model, alone) < 1e-10, f
        _same_points(m.metric_sink, sink, 1e-9)


@pytest.mark.parametrize("opt,state_per_weight", [("sgd", 0), ("momentum", 1), ("adam", 2)])
def test_member_bytes_from_shapes_equal_what_a_real_step_holds(opt, state_per_weight):
    """member_bytes on the meta device: weights, optimizer state after a step and autograd's saved tensors
    equal those of a real float32 step of the same model (counted the same way)."""
    from sgdlab.optim import build_optimizer
    from sgdlab.train.evaluate import loss_fn
    from sgdlab.train.population import available_bytes, member_bytes

    shape, batch, hp = (1, 28, 28), 64, {"lr": 0.01}
    meta = build_model("mlp", shape, 10, seed=0, device="meta", widths=(64,))
    est = member_bytes(meta, opt, hp, batch, shape, "classification")
    real = build_model("mlp", shape, 10, seed=0, widths=(64,))
    weights = sum(p.numel() * 4 for p in real.parameters())
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = real(x)
        loss = loss_fn("classification", out, y)
    loss.backward()
    o = build_optimizer(opt, real.named_parameters(), hp)
    o.step()
    state = sum(t.numel() * t.element_size() for st in o.state.values() for t in st.values() if torch.is_tensor(t))
    assert est["weights"] == est["grads"] == weights
    assert est["optimizer_state"] == state and abs(state - state_per_weight * weights) <= 64
    assert est["saved"] == saved + x.numel() * 4 + y.numel() * 8 + out.numel() * 4
    assert est["total"] == 2 * weights + state + est["saved"]
    assert all(p.grad is None for p in meta.parameters())  # no state left on the model
    with pytest.raises(ValueError, match="meta device"):
        member_bytes(real, opt, hp, batch, shape, "classification")
    assert available_bytes("cpu") > 0 and available_bytes("auto") > 0  # "auto": the study's default device


def test_members_with_their_own_step_counts_schedules_and_cadences_end_as_alone(tmp_path):
    """Loop settings outside SHARED_LOOP_FIELDS are per member: a member with fewer steps leaves the population
    at its last step (its cosine schedule over its own steps), the others go on; every one ends as alone."""
    data = _data()
    own = [
        dict(steps=20, schedule={"kind": "cosine"}, log_every=5),
        dict(steps=50, eval_every=10, checkpoint_every=7),
        dict(steps=35, log_every=7, blowup_factor=100.0, sampling="iid"),
        dict(steps=50),
    ]
    members = []
    for i, ((seed, lr), kw) in enumerate(zip(SEEDS_LRS, own)):
        m = Member(_model(seed), "adam", _hp("adam", lr), data, _cfg(seed, **kw), metric_sink=Sink())
        m.checkpoint_path = tmp_path / f"m{i}.pt"
        members.append(m)
    seen = []
    results = train_population(members, progress=lambda step, total, m: seen.append((step, total, m["members"])))
    assert seen[-1] == (50, 50, 0.0) and (20, 50, 3.0) in seen  # the 20-step member left at its step 20
    for i, ((seed, lr), kw, m, res) in enumerate(zip(SEEDS_LRS, own, members, results)):
        assert not isinstance(res, BaseException), res
        alone, sink1 = _model(seed), Sink()
        res1 = train(alone, "adam", _hp("adam", lr), data, _cfg(seed, **kw), checkpoint_path=tmp_path / f"a{i}.pt",
                     metric_sink=sink1)  # fmt: skip
        assert res.steps_done == res1.steps_done == kw["steps"]
        assert _max_diff(m.model, alone) < 1e-10, kw
        _same_points(m.metric_sink, sink1, 1e-9)


def test_frozen_parameters_stay_frozen_in_a_packed_population():
    """A parameter with requires_grad=False gets no gradient and keeps its value, as alone."""
    data = _data()
    members = _members("adam", data, pairs=SEEDS_LRS[:3], steps=20)
    for m in members:
        m.model.net[1].bias.requires_grad_(False)
    before = [m.model.net[1].bias.detach().clone() for m in members]
    train_population(members)
    for (seed, lr), m, b in zip(SEEDS_LRS[:3], members, before):
        assert m.model.net[1].bias.grad is None and torch.equal(m.model.net[1].bias, b)
        alone = _model(seed)
        alone.net[1].bias.requires_grad_(False)
        train(alone, "adam", _hp("adam", lr), data, _cfg(seed, steps=20))
        assert _max_diff(m.model, alone) < 1e-10
