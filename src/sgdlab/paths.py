"""Where things live: the project root and the paths every layer agrees on.

The root is ``$SGDLAB_HOME`` if set, else the nearest parent of the working directory holding both
``params.yaml`` and ``dvc.yaml``, else the working directory. Everything else (data, the MLflow store,
the Prefect home) is derived from it so a study never depends on where a command was started.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """Return the sgdlab project root (see module docstring)."""
    env = os.environ.get("SGDLAB_HOME")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file() and (d / "dvc.yaml").is_file():
            return d
    return here


def default_params_path(root: Path | None = None) -> Path:
    return (root or project_root()) / "params.yaml"


def apply_prefect_env(root: Path | None = None) -> None:
    """Set Prefect's environment defaults before ``import prefect`` (STACK.md).

    Runs stay with the project (``PREFECT_HOME=<root>/.prefect``), analytics are off (they caused
    "database is locked" noise), and the ephemeral API server gets 90 s to start on a slow 2-core box.
    Results are not persisted: no task or flow uses Prefect's cache (each unit is idempotent in the library),
    so a pickle of every phase's return value per run only grew ``.prefect/storage`` without bound.
    Values already in the environment win, so a user pointing ``PREFECT_API_URL`` at a server keeps it.
    """
    root = root or project_root()
    defaults = {
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
