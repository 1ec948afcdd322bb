"""Task-runner factory: the same flows run on threads, a process pool, or a Dask cluster.

Chosen by ``orchestration.task_runner`` in params.yaml. Threads are the laptop default. Long CPU/GPU
work that needs hard timeouts or true parallelism belongs in processes or Dask (a thread-pool timeout
cannot interrupt blocking code). Dask: ``dask_address`` points at an existing scheduler; without it a
LocalCluster of ``max_workers`` single-threaded worker processes is started for the flow.
"""

from sgdlab.config import OrchestrationConfig


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
