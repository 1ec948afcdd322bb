"""The MLflow UI in a real (headless) browser lists a study's runs.

Needs Debian's chromium (``apt-get install chromium``; ``make setup`` installs it when run as root).
"""

import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from sgdlab import tracking

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000"]


def test_mlflow_ui_lists_the_study_runs(tmp_path, mlflow_store):
    from flows.serve import free_port, stop

    exp = tracking.ensure_experiment("ui-study")
    parent = tracking.start_run(exp, "pipeline", tracking.lineage_tags("ui-study"))
    for name in ("sgd lr=0.1 seed=0", "adam lr=0.001 seed=0"):
        child = tracking.start_run(exp, name, tracking.lineage_tags("ui-study"), parent_run_id=parent)
        tracking.log_metrics(child, {"test/acc": 0.8}, 10)
        tracking.end_run(child)
    tracking.end_run(parent)

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", mlflow_store, "--host", "127.0.0.1",
           "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not start"
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/#/experiments/{exp}/runs"
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        shot = tmp_path / "runs.png"
        subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chrome2'}", "--window-size=1400,900",
                        f"--screenshot={shot}", url], capture_output=True, timeout=120)
    finally:
        stop(server)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "ui-study" in text
    assert " pipeline " in text  # the study's parent run is listed in the runs table
    assert re.search(r"\b3 matching runs", text), text[-2000:]  # with its two child runs
    assert shot.is_file() and shot.stat().st_size > 10_000
