"""The Prefect task of every phase: one unit of a phase's work (prepare a dataset, train one run, probe one
checkpoint, train the GAN, score the predictors, build the report).

No Prefect result cache on purpose: each unit is idempotent in the library (a finished run key's
``result.json``, a verified prepared dataset, a probe result keyed by the checkpoint's content hash), which
stays right when someone deletes or edits a file, where a Prefect cache entry would not notice.
"""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from sgdlab.config import Config  # noqa: E402
from sgdlab.phases import get_phase  # noqa: E402


@task(name="phase-unit", task_run_name="{phase}-{label}", cache_policy=NO_CACHE, retries=0)
def unit_task(phase: str, label: str, cfg: Config, payload: dict, ctx: dict) -> dict:
    """Run one unit of ``phase`` (``label`` names it in the Prefect UI)."""
    p = get_phase(phase)
    return p.unit(p.study(cfg), payload, ctx)
