"""Paper recipes: one command runs a small study through the normal pipeline and checks a paper's claim.

A recipe is three things:

* a **file** ``recipes/<name>.yaml`` at the project root: the paper, the claim in one sentence, the
  criteria (thresholds fixed before anything runs), the phases it needs and its params as overrides of
  ``params.yaml``'s sections, shared (``sections``) and per scale (``scales.quick`` for 2 CPU cores in
  <= 5 minutes, ``scales.full`` for a GPU machine). The merged config is validated like every config.
* a **check** in this package: a pure function from the study's tables (:class:`RecipeData`: the runs
  table joined with the probe table, the per-step curves, recipe measures) and the criteria to a
  :class:`~sgdlab.recipes.verdict.Verdict` with the numbers behind each criterion.
* a **figure**: the paper's figure drawn from the same tables, with units on every axis.

The study of recipe ``svag`` at scale ``quick`` is named ``recipe-svag`` (``recipe-svag-full`` at full
scale) with its data under ``data/recipes/<study>``, so recipes never touch the default study's files. The
flow (``flows/recipes.py``) runs the phases, then the check, logging the verdict on the recipe's MLflow
parent run. ``sgdlab recipe check NAME`` re-runs only the check on the finished tables.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sgdlab.recipes.verdict import Criterion, Verdict
from sgdlab.study import recipe_paths

__all__ = [
    "RECIPES",
    "Criterion",
    "Recipe",
    "RecipeData",
    "RecipeError",
    "RecipeFile",
    "Verdict",
    "get_recipe",
    "list_recipes",
    "load_recipe_file",
    "recipe_config",
    "recipe_paths",
    "recipes_dir",
]

SCALES = ("quick", "full")


class RecipeError(ValueError):
    """A recipe that cannot run as asked; the message names the recipe, the file or the key."""


class RecipeFile(BaseModel):
    """``recipes/<name>.yaml``: validated strictly (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    paper: str
    claim: str
    phases: tuple[Literal["prepare", "sweep", "probe", "report"], ...] = ("prepare", "sweep", "report")
    criteria: dict[str, Any] = Field(default_factory=dict)
    sections: dict[str, Any] = Field(default_factory=dict)
    scales: dict[Literal["quick", "full"], dict[str, Any]]


@dataclass(frozen=True)
class RecipeData:
    """What a check reads: runs-table rows (probe columns joined), ``{run_key: {metric: [(step, value)]}}``
    curves, and the recipe's own per-run measures (``{run_key: {name: value}}``)."""

    runs: list[dict[str, Any]]
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    measures: dict[str, dict[str, float]] = field(default_factory=dict)

    def finished(self, **where: Any) -> list[dict[str, Any]]:
        """Finished rows whose columns equal ``where`` (floats compared with a relative 1e-9)."""
        return [r for r in self.runs if r.get("status") == "finished" and _matches(r, where)]

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        return [r for r in self.runs if _matches(r, where)]

    def curve(self, row: dict[str, Any], metric: str) -> list[tuple[int, float]]:
        return self.curves.get(row["run_key"], {}).get(metric, [])


def _matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    for k, want in where.items():
        got = row.get(k)
        if isinstance(want, float) and isinstance(got, (int, float)):
            if abs(got - want) > 1e-9 * max(1.0, abs(want)):
                return False
        elif got != want:
            return False
    return True


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: its check, its figure, the pydantic model of its criteria, and optionally a
    ``measures(study, rows) -> {run_key: {name: value}}`` computed from checkpoints (e.g. ||w - w*||)."""

    name: str
    criteria: type[BaseModel]
    check: Callable[[RecipeData, Any], Verdict]
    figure: Callable[[RecipeData, Any, Verdict], Any]
    measures: Callable[[Any, list[dict[str, Any]]], dict[str, dict[str, float]]] | None = None
    metrics: tuple[str, ...] = ("train/loss", "train/acc", "test/loss", "test/acc")


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    RECIPES[recipe.name] = recipe
    return recipe


def _load_builtin() -> None:
    from sgdlab.recipes import (  # noqa: F401  (they register)
        adam_geometry,
        cnn_vs_fc,
        eos,
        label_noise,
        large_step_logistic,
        local_sgd,
        normalization,
        scaling_rules,
        svag,
        xor,
    )


def list_recipes() -> list[str]:
    _load_builtin()
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    _load_builtin()
    if name not in RECIPES:
        import difflib

        close = difflib.get_close_matches(name, RECIPES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RecipeError(f"unknown recipe {name!r}{hint} (recipes: {', '.join(sorted(RECIPES))})")
    return RECIPES[name]


# -------------------------------------------------------------------------------------------- files
def recipes_dir() -> Path:
    """``recipes/`` of the project (``SGDLAB_HOME``), else the one beside this code's checkout."""
    from sgdlab.paths import project_root

    here = project_root() / "recipes"
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "recipes"


def load_recipe_file(name: str, directory: Path | None = None) -> RecipeFile:
    """Read and validate ``recipes/<name>.yaml`` (its criteria against the recipe's criteria model)."""
    import yaml

    from sgdlab.config import strict_yaml

    recipe = get_recipe(name)
    path = (directory or recipes_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file (recipe {name!r} needs it)")
    try:
        raw = strict_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    try:
        rf = RecipeFile.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_errors(err, path)) from None
    try:
        recipe.criteria.model_validate(rf.criteria)
    except ValidationError as err:
        raise RecipeError(_errors(err, path, "criteria.")) from None
    for where in [rf.sections, *rf.scales.values()]:
        for section, key in (("study", "name"), ("data", "root"), ("study", "results_dir"), ("study", "models_dir")):
            if isinstance(where.get(section), dict) and key in where[section]:
                raise RecipeError(
                    f"{path}: {section}.{key} is set by `sgdlab recipe` (the study recipe-{name}); "
                    f"remove it (override with --set {section}.{key}=... if you must)"
                )
    return rf


def _errors(err: ValidationError, path: Path, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "<root>")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def criteria(name: str, rf: RecipeFile) -> BaseModel:
    return get_recipe(name).criteria.model_validate(rf.criteria)


def study_name(name: str, scale: str) -> str:
    return f"recipe-{name}" if scale == "quick" else f"recipe-{name}-{scale}"


def recipe_config(
    name: str, scale: str = "quick", overrides: list[str] | tuple[str, ...] = (), params: Path | None = None
):
    """The recipe's config: params.yaml's base sections (its profile not applied), the recipe's ``sections``
    and ``scales[scale]`` merged over them, the recipe's study name and data root, then ``--set`` overrides.
    Validated like every config (unknown keys and bad values name the key)."""
    from sgdlab.config import _deep_merge, apply_overrides, from_dict, load_raw
    from sgdlab.paths import default_params_path

    if scale not in SCALES:
        raise RecipeError(f"recipe {name}: scale {scale!r} is not one of {', '.join(SCALES)}")
    rf = load_recipe_file(name)
    if scale not in rf.scales:
        raise RecipeError(f"recipes/{name}.yaml has no scales.{scale}")
    path = Path(params) if params else default_params_path()
    raw = copy.deepcopy(load_raw(path))
    raw["profile"] = None
    raw = _deep_merge(raw, rf.sections)
    raw = _deep_merge(raw, rf.scales[scale])
    study = study_name(name, scale)
    raw = _deep_merge(raw, {"study": {"name": study}, "data": {"root": f"data/recipes/{study}"}})
    raw = apply_overrides(raw, list(overrides))
    return from_dict(raw, source=f"{path.name} + recipes/{name}.yaml (scale {scale})")


def read_verdict(results_dir: Path) -> Verdict | None:
    p = recipe_paths(results_dir)["check"]
    if not p.is_file():
        return None
    try:
        return Verdict.from_dict(json.loads(p.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
