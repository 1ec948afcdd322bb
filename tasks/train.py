"""Prefect task: one training run of a sweep, keyed by its run key.

No Prefect result cache here on purpose: the run directory is the cache (``result.json`` = finished,
``checkpoint.pt`` = resumable), which stays right when someone deletes a run directory, which a
Prefect cache entry would not notice.
"""


from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from sgdlab.probing import sharpness_hook_factory  # noqa: E402
from sgdlab.runner import execute_run  # noqa: E402
from sgdlab.sweep import RunSpec  # noqa: E402


@task(name="train-run", task_run_name="train-{run_key}", cache_policy=NO_CACHE, retries=0)
def train_run_task(run_key: str, spec: dict, run_dir: str, data: dict, tracking_ctx: dict, device: str,
                   probe: dict | None = None) -> dict:
    """Train one run (or return its stored result); returns its runs-table row. With ``probe['every']`` > 0
    the Hessian is probed along training (``hessian/*`` metrics at those steps)."""
    factory = sharpness_hook_factory(probe) if probe else None
    return execute_run(RunSpec.from_dict(spec), run_dir, data, tracking_ctx, device, on_step_factory=factory)
