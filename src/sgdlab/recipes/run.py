"""The impure half of a recipe check: read the finished study (tables, MLflow curves, checkpoints), run the
pure check, write ``recipe/check.json`` and the figure, log the verdict on the recipe's MLflow run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sgdlab.recipes import RecipeData, get_recipe, load_recipe_file, recipe_paths
from sgdlab.recipes.verdict import Verdict


def gather(study, name: str) -> RecipeData:
    """The study's runs (probe columns joined), their curves from MLflow, the recipe's measures."""
    from sgdlab import results, tracking

    recipe = get_recipe(name)
    rows = results.load_runs(study.results_dir)  # a missing table names itself and says to run the sweep
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        if r.get("mlflow_run_id"):
            got = {m: sorted(tracking.iter_metric_history(r["mlflow_run_id"], m)) for m in recipe.metrics}
            curves[r["run_key"]] = {m: v for m, v in got.items() if v}
    measures = recipe.measures(study, rows) if recipe.measures is not None else {}
    return RecipeData(rows, curves, measures)


def check(cfg, name: str, scale: str, run_id: str | None = None) -> Verdict:
    """Check the finished study of recipe ``name``; write check.json + figure; log on ``run_id`` (MLflow)."""
    from sgdlab.recipes import criteria
    from sgdlab.study import Study

    rf = load_recipe_file(name)
    crit = criteria(name, rf)
    recipe = get_recipe(name)
    study = Study(cfg)
    data = gather(study, name)
    verdict = recipe.check(data, crit)
    paths = recipe_paths(study.results_dir)
    paths["dir"].mkdir(parents=True, exist_ok=True)
    fig = recipe.figure(data, crit, verdict)
    fig.savefig(paths["figure"], dpi=110)
    _atomic_json(paths["curves"], {"runs": len(data.runs), "curves": data.curves, "measures": data.measures})
    _atomic_json(paths["check"], {**verdict.to_dict(), "scale": scale, "study": study.name, "paper": rf.paper})
    if run_id is not None:
        from sgdlab import tracking

        tracking.set_tags(
            run_id,
            {
                "recipe": name,
                "recipe.scale": scale,
                "recipe.verdict": verdict.label,
                "recipe.claim": rf.claim[:4900],
                "recipe.paper": rf.paper[:4900],
            },
        )
        tracking.log_metrics(run_id, verdict.mlflow_metrics())
        for p in (paths["check"], paths["figure"]):
            tracking.log_artifact(run_id, p, "recipe")
    return verdict


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)
