"""Ctrl-C and SIGTERM: training stops within a step with its checkpoint, one clear line, exit 130, and no
process left behind (the ephemeral Prefect API server included); re-running resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from procs import spawn

from sgdlab import interrupt
from sgdlab.models import build_model
from sgdlab.train import DataTensors, LoopConfig, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_flag():
    interrupt.clear()
    yield
    interrupt.clear()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    return DataTensors(x, (x[:, 0] > 0).long(), x[:64], (x[:64, 0] > 0).long())


def test_a_stop_request_checkpoints_after_the_current_step_and_resume_is_exact(tmp_path):
    cfg = LoopConfig(steps=400, batch_size=16, checkpoint_every=1000, log_every=10)
    straight = build_model("mlp", (8,), 2, seed=0, widths=[16])
    train(straight, "adam", {"lr": 1e-2}, _data(), cfg, checkpoint_path=tmp_path / "straight.pt")
    model = build_model("mlp", (8,), 2, seed=0, widths=[16])
    seen = []

    def hook(step, m, opt, lr):
        seen.append(step)
        if step == 123:
            threading.Thread(target=interrupt.request, args=("SIGTERM",)).start()  # as a signal would, from outside
            time.sleep(0.2)

    path = tmp_path / "c.pt"
    with pytest.raises(interrupt.Interrupted, match=r"SIGTERM: stopped at step 12[3-9] of 400"):
        train(model, "adam", {"lr": 1e-2}, _data(), cfg, checkpoint_path=path, on_step=hook)
    stopped = load_checkpoint(path)["step"]
    assert stopped == seen[-1] and 123 <= stopped <= 129  # within a step or so of the request, checkpointed
    interrupt.clear()
    resumed = build_model("mlp", (8,), 2, seed=0, widths=[16])
    res = train(resumed, "adam", {"lr": 1e-2}, _data(), cfg, checkpoint_path=path)
    assert res.resumed_from == stopped
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_run_not_started_does_not_start(tmp_path):
    from sgdlab.runner import execute_run

    interrupt.request("SIGINT")
    with pytest.raises(interrupt.Interrupted, match="not started"):
        execute_run(None, type("S", (), {"key": "k", "label": "x"})(), {})  # before touching the study


def _session_processes(sid: int) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                zombie = (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # dead, not yet reaped
                if os.getsid(int(d.name)) == sid and not zombie:
                    out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:150])
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return out


SWEEP = [
    "--set", "data.datasets=[xor]", "--set", "train.dataset=xor", "--set", "train.steps=20000",
    "--set", "train.checkpoint_every=500", "--set", "sweep.optimizers=[{name: sgd, lr: 0.1}]",
    "--set", "sweep.seeds=[0, 1]", "--set", "sweep.batch_sizes=[32]", "--set", "sweep.variants=[]",
    "--set", "sweep.models=[{name: mlp, kwargs: {widths: [32]}}]", "--set", "probe.every=0",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sgdlab_sweep_stops_on_a_signal_within_seconds_and_leaves_nothing_running(tmp_path, mlflow_store, sig):
    for f in ("params.yaml", "dvc.yaml"):
        (tmp_path / f).write_text((ROOT / f).read_text())
    env = {**os.environ, "SGDLAB_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow_store}
    cmd = [sys.executable, "-m", "sgdlab.cli", "sweep", *SWEEP]
    proc = spawn(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("models/*/*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    left = _session_processes(proc.pid)
    lines = [line for line in err.splitlines() if "mlflow.store.db.utils" not in line]
    assert proc.returncode == 130, err[-3000:]
    assert took < 5.0, f"exit {took:.1f} s after {sig.name}"  # the goal; 0.75 s measured
    assert "Traceback" not in err and len(lines) == 2, lines
    assert lines[1].startswith(f"interrupted ({sig.name}: sweep: 2 of 2 units stopped")
    assert left == [], f"left running: {left}"
    ckpts = list(tmp_path.glob("models/*/*/checkpoint.pt"))
    assert len(ckpts) == 2 and not list(tmp_path.glob("models/*/*/result.json"))
    assert all(0 < load_checkpoint(c)["step"] < 20000 for c in ckpts)


def test_spawned_process_groups_are_reaped():
    import procs

    proc = spawn([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"])
    time.sleep(1.0)
    assert _session_processes(proc.pid), "the child did not start"
    assert procs.reap() == [proc.pid]
    time.sleep(0.3)
    assert _session_processes(proc.pid) == []  # the grandchild (a server, say) is gone with its parent


def test_reaping_lets_a_command_stop_the_servers_it_started_in_other_sessions():
    """Like `sgdlab tracking-server`, the child starts a server in a session of its own and stops it on SIGTERM;
    reaping sends SIGTERM before SIGKILL, so the server does not outlive a failed test."""
    import procs

    code = (
        "import signal, subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "signal.signal(signal.SIGTERM, lambda *a: (p.terminate(), p.wait(), sys.exit(0)))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    server = int(proc.stdout.readline())
    assert procs.reap() == [proc.pid]
    with pytest.raises(ProcessLookupError):
        os.kill(server, 0)
