"""The one config object: ``params.yaml`` loaded into frozen pydantic models.

Every knob of a study lives in ``params.yaml`` (one section per phase) and is validated here, once,
before any compute. Unknown keys are errors (``extra="forbid"``); every error names the key path, the
bad value and what is allowed, e.g.::

    params.yaml: data.val_fraction = 1.5: Input should be less than 1

Overrides from the command line use dotted keys (``--set data.probe_size=512``); values are parsed as
YAML scalars/lists, so ``--set data.datasets=[mnist1d]`` works.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATASET_NAMES = ("fashion_mnist", "mnist1d", "sparse_regression", "xor", "separable")


class ConfigError(ValueError):
    """A bad value in params.yaml or in an override; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- study
class StudyConfig(_Frozen):
    name: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


# ---------------------------------------------------------------------------------------------- data
class FashionMNISTConfig(_Frozen):
    source_dir: str | None = None  # None: $SGDLAB_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist
    train_size: int | None = Field(None, gt=0, le=60000)  # first n of the train split (None: all 60000)
    test_size: int | None = Field(None, gt=0, le=10000)


class MNIST1DConfig(_Frozen):
    num_samples: int = Field(5000, ge=20)
    train_split: float = Field(0.8, gt=0.0, lt=1.0)
    seed: int = Field(42, ge=0)


class SparseRegressionConfig(_Frozen):
    d: int = Field(100, gt=0)
    n_train: int = Field(40, gt=0)
    n_test: int = Field(1000, gt=0)
    kappa: int = Field(3, gt=0)
    noise: float = Field(0.0, ge=0.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _kappa_le_d(self) -> SparseRegressionConfig:
        if self.kappa > self.d:
            raise ValueError(f"kappa ({self.kappa}) must be <= d ({self.d})")
        return self


class XORConfig(_Frozen):
    d: int = Field(20, ge=2)
    i: int = Field(0, ge=0)
    j: int = Field(1, ge=0)
    n_train: int = Field(500, gt=0)
    n_test: int = Field(2000, gt=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _coords(self) -> XORConfig:
        if self.i == self.j or self.i >= self.d or self.j >= self.d:
            raise ValueError(f"i={self.i}, j={self.j} must be distinct coordinates < d={self.d}")
        return self


class SeparableConfig(_Frozen):
    d: int = Field(20, ge=1)
    n_train: int = Field(200, gt=0)
    n_test: int = Field(2000, gt=0)
    margin: float = Field(0.1, ge=0.0)
    seed: int = Field(0, ge=0)

    @field_validator("n_train", "n_test")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even (the data set holds every point with its mirror), got {v}")
        return v


class DataConfig(_Frozen):
    root: str = "data"
    datasets: tuple[str, ...] = ("fashion_mnist", "mnist1d", "sparse_regression", "xor", "separable")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    probe_size: int = Field(1000, gt=0)
    split_seed: int = Field(0, ge=0)
    fashion_mnist: FashionMNISTConfig = FashionMNISTConfig()
    mnist1d: MNIST1DConfig = MNIST1DConfig()
    sparse_regression: SparseRegressionConfig = SparseRegressionConfig()
    xor: XORConfig = XORConfig()
    separable: SeparableConfig = SeparableConfig()

    @field_validator("datasets")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in DATASET_NAMES:
                raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate dataset in {list(v)}")
        if not v:
            raise ValueError("at least one dataset is required")
        return v


# ------------------------------------------------------------------------------------- orchestration
class OrchestrationConfig(_Frozen):
    task_runner: Literal["thread", "process", "dask"] = "thread"
    max_workers: int = Field(2, ge=1)
    dask_address: str | None = None  # None with task_runner=dask: a LocalCluster of max_workers workers


class TrackingConfig(_Frozen):
    experiment: str | None = None  # None: the study name
    log_every_eval: bool = True


class Config(_Frozen):
    study: StudyConfig = StudyConfig()
    data: DataConfig = DataConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.study.name


# ------------------------------------------------------------------------------------------- loading
def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a setting sgdlab knows; check the spelling)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"{source}: {key}{shown}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``section.key=value`` into a dotted key and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key overrides applied (unknown keys fail in validation)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def from_dict(raw: dict[str, Any], source: str = "params.yaml") -> Config:
    """Validate a raw dict into a :class:`Config`, raising :class:`ConfigError` naming each bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_raw(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``params.yaml`` (default: the project's) and apply ``--set`` overrides."""
    from sgdlab.paths import default_params_path

    path = Path(path) if path else default_params_path()
    raw = apply_overrides(load_raw(path), overrides)
    return from_dict(raw, source=path.name)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what ``sgdlab config`` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
