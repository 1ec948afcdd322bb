"""Prefect task: probe one finished run's final checkpoint and record it in its MLflow child run."""


from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from prefect import task  # noqa: E402
from prefect.cache_policies import INPUTS, TASK_SOURCE  # noqa: E402

from sgdlab import tracking  # noqa: E402
from sgdlab.probing import probe_checkpoint  # noqa: E402
from sgdlab.runner import load_cached  # noqa: E402
from sgdlab.sweep import RunSpec  # noqa: E402


@task(name="probe-checkpoint", task_run_name="probe-{run_key}",
      cache_policy=(INPUTS + TASK_SOURCE) - "mlflow_run_id", persist_result=True, retries=1)
def probe_task(run_key: str, spec: dict, checkpoint: str, checkpoint_sha: str, data: dict, probe: dict,
               device: str, mlflow_run_id: str) -> dict:
    """Returns the probe metrics (``hessian/*``); keyed by the checkpoint's content hash and the probe settings."""
    s = RunSpec.from_dict(spec)
    out = probe_checkpoint(s, checkpoint, load_cached(device=device, **data), probe)
    scalars = {k: v for k, v in out.items() if not k.startswith("_")}
    tracking.log_metrics(mlflow_run_id, {f"final/{k}": v for k, v in scalars.items()}, s.steps)
    return out
