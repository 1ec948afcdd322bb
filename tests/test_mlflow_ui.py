"""The MLflow UI in a real (headless) browser lists a study's runs.

``tracking.runs_url`` must open the training-runs table with the UI's "machine learning" side bar, not the
GenAI "Overview" (traces, usage, tool calls) that MLflow 3.17 shows by default.

Needs Debian's chromium (``apt-get install chromium``; ``make setup`` installs it when run as root).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sgdlab import tracking
from sgdlab.ui import ProcessTree

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_lists_the_study_runs(tmp_path, mlflow_store):
    exp = tracking.ensure_experiment("ui-study")
    assert tracking.client().get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    parent = tracking.start_run(exp, "pipeline", tracking.lineage_tags("ui-study"))
    for name in ("sgd lr=0.1 seed=0", "adam lr=0.001 seed=0"):
        child = tracking.start_run(exp, name, tracking.lineage_tags("ui-study"), parent_run_id=parent)
        tracking.log_metrics(child, {"test/acc": 0.8}, 10)
        tracking.end_run(child)
    tracking.end_run(parent)

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        mlflow_store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_WORKERS": "1"},
    )
    tree = ProcessTree(server)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not start"
                tree.refresh()
                time.sleep(1)
        url = tracking.runs_url(exp, port=port)
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        shot = tmp_path / "runs.png"
        subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={tmp_path / 'chrome2'}",
                "--window-size=1400,900",
                f"--screenshot={shot}",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
    finally:
        tree.stop()  # the huey job consumers too
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "ui-study" in text
    assert " pipeline " in text  # the study's parent run is listed in the runs table
    assert re.search(r"\b3 matching runs", text), text[-2000:]  # with its two child runs
    # the machine-learning side bar (Runs, Models, Model registry), not the GenAI one / its Overview
    assert "Model registry" in text, text[:2000]
    for genai in ("Training runs", "Evaluation runs", "Tool calls", "Token Usage"):
        assert genai not in text, (genai, text[:2000])
    assert shot.is_file() and shot.stat().st_size > 10_000
