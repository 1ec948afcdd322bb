"""A sweep in a plain process, for the fault tests to SIGKILL: ``python tests/fault_worker.py CONFIG.json``.

CONFIG: ``{"cfg": <study config dict>, "die_at": [run key, step] or null}``. Trains the study's run keys in
order through the platform's own path (:func:`sgdlab.runner.execute_run`, MLflow child runs under a parent run
of the study's experiment), then its adaptive (TPE) searches through :func:`sgdlab.optbench.tpe.run_search`,
and prints one JSON line per run: ``{"run_key", "cached", "status"}``. With ``die_at`` the process SIGKILLs
itself right after that update of that key (``["trial", n, step]``: of the first run of TPE trial ``n``, whose
key is known only once it is asked): a real kill at a chosen point.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main(path: str) -> None:
    import torch

    torch.set_num_threads(1)
    from sgdlab import tracking
    from sgdlab.config import from_dict
    from sgdlab.optbench.tpe import run_search
    from sgdlab.runner import execute_run
    from sgdlab.study import Study
    from sgdlab.sweep import expand, searches

    conf = json.loads(open(path).read())
    cfg = from_dict(conf["cfg"])
    study = Study(cfg)
    data = study.data_spec(prepare=True)
    specs = expand(cfg, data, study.n_train(data))
    die = conf.get("die_at") or (None, None)
    die_trial = die[1] if die[0] == "trial" else None
    die_key, die_step = (None, die[2]) if die[0] == "trial" else die

    def suicide(splits, spec):
        meta = (spec.extra or {}).get("search", {})
        trial = meta.get("trial") if meta.get("kind") == "tpe" else None
        if spec.key != die_key and (die_trial is None or trial != die_trial):
            return None

        def hook(step, model, opt, lr):
            if step == die_step:
                os.kill(os.getpid(), signal.SIGKILL)

        return hook

    exp = tracking.ensure_experiment(cfg.experiment_name)
    tracking.close_orphaned_runs(exp)
    tags = tracking.lineage_tags(study.name, data.data_hash, phase="sweep")
    parent = tracking.start_run(exp, "sweep", tags)
    ctx = {"experiment_id": exp, "parent_run_id": parent, "tags": tags}
    print(json.dumps({"parent": parent}), flush=True)
    for spec in specs:
        row = execute_run(study, spec, ctx, on_step_factory=suicide)
        print(json.dumps({"run_key": spec.key, "cached": row["cached"], "status": row["status"]}), flush=True)
    for unit in searches(cfg, data, study.n_train(data)):
        rows = run_search(unit, study.models_dir, lambda spec: execute_run(study, spec, ctx, on_step_factory=suicide))
        for row in rows:
            out = {"run_key": row["run_key"], "cached": row["cached"], "status": row["status"]}
            print(json.dumps({**out, "trial": row["search_trial"], "value": row["search_value"]}), flush=True)
    tracking.end_run(parent)


if __name__ == "__main__":
    main(sys.argv[1])
