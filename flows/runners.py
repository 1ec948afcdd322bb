"""Task-runner factory: the same flows run on threads, a process pool, or a Dask cluster.

Chosen by ``orchestration.task_runner`` in params.yaml. Threads are the laptop default. Long CPU/GPU
work that needs hard timeouts or true parallelism belongs in processes or Dask (a thread-pool timeout
cannot interrupt blocking code). Dask: ``dask_address`` points at an existing scheduler; without it a
LocalCluster of ``max_workers`` single-threaded worker processes is started for the flow.
"""

import contextlib

from sgdlab.config import Config, OrchestrationConfig


def make_task_runner(cfg: OrchestrationConfig):
    if cfg.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.task_runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": cfg.max_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    raise ValueError(f"orchestration.task_runner={cfg.task_runner!r}; allowed: thread, process, dask")


def unit_resources(cfg: Config) -> dict[str, float] | None:
    """Dask resources each unit asks for: ``{"GPU": 1}`` for a study on CUDA (``study.device: cuda``) sent to an
    existing cluster, so that each GPU worker (``sgdlab cluster --gpus N``: one per GPU, offering GPU=1) takes
    one run at a time; None otherwise (threads, processes, a LocalCluster, or CPU/auto devices)."""
    o = cfg.orchestration
    if o.task_runner == "dask" and o.dask_address and cfg.study.device == "cuda":
        return {"GPU": 1}
    return None


def check_resources(cfg: Config, timeout: float = 30.0) -> None:
    """Before any unit is submitted: some worker of the cluster must offer the resources units ask for, else
    Dask would hold them forever."""
    need = unit_resources(cfg)
    if not need:
        return
    from distributed import Client

    address = cfg.orchestration.dask_address
    with Client(address, timeout=timeout) as c:
        workers = c.scheduler_info(n_workers=-1)["workers"].values()
    if not any(all(w.get("resources", {}).get(k, 0) >= v for k, v in need.items()) for w in workers):
        raise RuntimeError(
            f"study.device=cuda sends each unit to a worker offering {need}, but no worker of {address} offers it; "
            "start the workers with --resources GPU=1 (sgdlab cluster --gpus N), or set study.device=auto"
        )


def submitting(cfg: Config):
    """Context for submitting units: annotates them with :func:`unit_resources` when there are any."""
    need = unit_resources(cfg)
    if not need:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources=need)
