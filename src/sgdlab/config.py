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
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATASET_NAMES = ("fashion_mnist", "mnist1d", "sparse_regression", "xor", "separable")


class ConfigError(ValueError):
    """A bad value in params.yaml or in an override; the message names the key."""


def _numeric(annotation: Any) -> bool:
    """Whether a field's type takes numbers and not booleans (``int``, ``float``, their unions, tuples of them)."""
    import typing

    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(_numeric(a) for a in args if a is not type(None))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info) -> Any:
        """YAML reads ``true``/``yes``/``on`` as booleans and pydantic would take them as 1: ``steps: true``
        would train one step. A number field refuses them."""
        field = cls.model_fields.get(info.field_name)
        bad = isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))
        if field is not None and bad and _numeric(field.annotation):
            raise ValueError(f"expected a number, got the boolean {value!r} (YAML reads true/false/yes/no/on/off so)")
        return value


# --------------------------------------------------------------------------------------------- study
class StudyConfig(_Frozen):
    # a folder name: letters, digits, '_', '-', '.' but not starting with '.' (so never '.' or '..')
    name: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    models_dir: str = "models"  # checkpoints: <models_dir>/<study>/<run_key>/
    results_dir: str = "results"  # tables and reports: <results_dir>/<study>/
    # models_dir, results_dir and data.root must lie inside the project (the folder of params.yaml) unless
    # this is true: DVC only versions what is inside the repository, and a copied project must not write
    # into (or read from) the original's folders.
    allow_outside_project: bool = False


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


# ---------------------------------------------------------------------------------------- training
class ModelConfig(_Frozen):
    name: str = "mlp"  # a name of sgdlab.models (checked against the registry when the sweep expands)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Frozen):
    """The lr schedule of every run. The limits are the training loop's own (:class:`sgdlab.train.Schedule`
    validates; this model only types the fields), so what loads here is what trains."""

    kind: str = "constant"  # sgdlab.schedules.KINDS
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    @model_validator(mode="after")
    def _loop_accepts(self) -> ScheduleConfig:
        from sgdlab.schedules import Schedule  # pure Python: no torch import

        Schedule(**self.model_dump())  # ValueError names the field and its allowed range
        return self


class TrainConfig(_Frozen):
    """One training run's loop settings (the sweep varies optimizer, lr, batch size, seed and model). The
    sweep builds each run's :class:`sgdlab.train.LoopConfig` from these at load (``sgdlab.study``), so a
    value the loop refuses is refused before any compute."""

    dataset: str = "fashion_mnist"
    steps: int = Field(500, gt=0)
    physical_batch_size: int | None = Field(None, gt=0)
    schedule: ScheduleConfig = ScheduleConfig()
    log_every: int = Field(50, gt=0)
    eval_every: int = Field(100, ge=0)
    checkpoint_every: int = Field(200, ge=0)
    blowup_factor: float = Field(1e4, gt=1.0)
    amp_bf16: bool = False
    compile: bool = False
    sampling: Literal["epoch", "iid"] = "epoch"  # iid: with replacement, as the SDE theory assumes
    eval_val: bool = False  # also evaluate the validation part at each eval point (val/* curves: time to target)

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {v!r}; allowed: {', '.join(DATASET_NAMES)}")
        return v


class SearchParam(_Frozen):
    """One dimension of a search space: uniform on [low, high], or log-uniform with ``log: true``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"needs finite low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={self.low}")
        return self


class SearchObjective(_Frozen):
    """What an adaptive (``tpe``) search optimises: a final metric of each trial's run. Validation and
    training metrics only: tuning on the test set would make the reported test numbers optimistic."""

    metric: Literal["val/loss", "val/acc", "train/loss", "train/acc"] = "val/loss"
    direction: Literal["minimize", "maximize"] = "minimize"

    @model_validator(mode="after")
    def _sense(self):
        wrong = "maximize" if self.metric.endswith("loss") else "minimize"
        if self.direction == wrong:
            raise ValueError(f"objective {self.metric} with direction {wrong} would search for the worst setting")
        return self


class SearchConfig(_Frozen):
    """Hyper-parameter search for one optimizer: ``studies`` independent studies of ``trials`` trials each.

    ``random``: independent uniform draws; ``quasirandom``: a scrambled Halton sequence (AlgoPerf's baseline
    tuning), both seeded (study ``s`` uses seed ``seed + s``), so the trials are fixed before anything runs
    and an interrupted search resumes with none lost or repeated. Space keys: ``lr``, any scalar
    hyper-parameter of the optimizer (``weight_decay``, ``momentum``, ...), ``beta1``/``beta2`` (the entries
    of ``betas``), or ``1-<key>`` to search one minus it (e.g. ``1-beta2`` log-uniform in [1e-3, 1e-1]).
    The grid (``lr: [...]``) is the ``grid`` kind.

    ``tpe``: Optuna's tree-structured Parzen estimator (:mod:`sgdlab.optbench.tpe`) picks each trial from the
    results of the study's earlier ones: ``startup_trials`` seeded random trials, then TPE, optimising
    ``objective`` (a final metric of the trial's run, averaged over the sweep's seeds). Its Optuna storage
    lives in the study's models directory, so an interrupted search resumes with no trial lost or repeated."""

    kind: Literal["random", "quasirandom", "tpe"]
    trials: int = Field(ge=1, le=10000)
    studies: int = Field(1, ge=1, le=100)
    seed: int = Field(0, ge=0)
    space: dict[str, SearchParam]
    objective: SearchObjective = Field(default_factory=lambda: SearchObjective())  # tpe only
    startup_trials: int = Field(10, ge=1)  # tpe: random trials before the estimator takes over (Optuna's 10)

    @field_validator("space")
    @classmethod
    def _nonempty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("needs at least one parameter, e.g. {lr: {low: 1.0e-4, high: 1.0e-1, log: true}}")
        return v


class OptimizerEntry(_Frozen):
    """One optimizer family in the sweep: its name, one or more learning rates (or a search), other
    hyper-parameters."""

    name: str
    lr: float | tuple[float, ...]
    hparams: dict[str, Any] = Field(default_factory=dict)
    schedule: ScheduleConfig | None = None  # this family's lr schedule (None: train.schedule)
    search: SearchConfig | None = None  # replaces the lr grid: the trials' values (lr: the fallback value)

    @field_validator("lr")
    @classmethod
    def _positive(cls, v):
        for lr in v if isinstance(v, tuple) else (v,):
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"learning rate must be a finite number > 0, got {lr}")
        return v

    @field_validator("hparams")
    @classmethod
    def _no_lr(cls, v: dict) -> dict:
        if "lr" in v:
            raise ValueError("put the learning rate in `lr`, not in `hparams`")
        return v

    @property
    def lrs(self) -> tuple[float, ...]:
        return self.lr if isinstance(self.lr, tuple) else (self.lr,)


class VariantConfig(_Frozen):
    """An SDE-motivated transform applied to every base run of the sweep (adds runs, keeps the base)."""

    # linear (SGD family), sqrt (Adam/RMSprop), svag; batch_only and linear_lr are the baselines (any optimizer)
    rule: Literal["linear", "sqrt", "svag", "batch_only", "linear_lr"]
    factor: float = Field(gt=0.0)  # kappa for linear/sqrt/batch_only/linear_lr, l for svag


class SweepConfig(_Frozen):
    optimizers: tuple[OptimizerEntry, ...] = (OptimizerEntry(name="sgd", lr=0.1),)
    batch_sizes: tuple[int, ...] = (128,)
    seeds: tuple[int, ...] = (0,)
    models: tuple[ModelConfig, ...] = (ModelConfig(),)
    variants: tuple[VariantConfig, ...] = ()
    steps: tuple[int, ...] | None = None  # training lengths to sweep (None: train.steps)
    train_fractions: tuple[float, ...] = (1.0,)  # train on a seeded subset of the training part
    # train on a copy of the training labels with this seeded fraction replaced by another class (0: clean)
    label_noise: tuple[float, ...] = (0.0,)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v):
        if v is not None and (not v or any(x < 1 for x in v)):
            raise ValueError(f"steps must be a non-empty list of integers >= 1, got {v}")
        return v

    @field_validator("train_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions must be in (0, 1], got {list(v)}")
        return v

    @field_validator("label_noise")
    @classmethod
    def _label_noise(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 <= f < 1 for f in v):
            raise ValueError(f"label noise fractions must be in [0, 1), got {list(v)}")
        return v

    @field_validator("batch_sizes", "seeds")
    @classmethod
    def _nonempty_nonneg(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("needs at least one value")
        if any(x < 0 for x in v):
            raise ValueError(f"values must be >= 0, got {list(v)}")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 1 for x in v):
            raise ValueError(f"batch sizes must be >= 1, got {list(v)}")
        return v

    @field_validator("optimizers", "models")
    @classmethod
    def _nonempty(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("needs at least one entry")
        return v


# ----------------------------------------------------------------------------------------- probing
class ProbeConfig(_Frozen):
    """Hessian probes on a fixed seeded subset of the training data: the first ``subset_size`` examples of
    the dataset's probe subset (``data.probe_size``, itself capped at the training part's size), during
    training every ``every`` steps and on final checkpoints."""

    subset_size: int = Field(512, gt=0)
    batch_size: int | None = Field(None, gt=0)  # physical batch of the probe (None: the whole subset)
    bn_mode: Literal["eval", "train"] = "eval"
    k: int = Field(1, gt=0)  # top-k eigenvalues
    tol: float = Field(1e-3, gt=0.0, lt=1.0)
    max_iter: int = Field(100, gt=1)
    trace_probes: int = Field(20, ge=0)  # Hutchinson probes on checkpoints (0: no trace)
    every: int = Field(0, ge=0)  # probe cadence during training, in steps (0: off)
    train_trace_probes: int = Field(0, ge=0)  # Hutchinson probes at each in-training probe
    density_probes: int = Field(0, ge=0)  # stochastic Lanczos quadrature on checkpoints (0: off)
    # Hutchinson (default) or Hutch++: Hutch++ wins only on fast-decaying spectra, loses on flat/indefinite ones
    trace_method: Literal["hutchinson", "hutch++"] = "hutchinson"
    lanczos_steps: int = Field(40, gt=1)
    seed: int = Field(0, ge=0)

    @field_validator("trace_probes", "train_trace_probes")
    @classmethod
    def _not_one(cls, v: int) -> int:
        if v == 1:
            raise ValueError("a trace estimate with a standard error needs 0 (off) or >= 2 probes")
        return v


# ----------------------------------------------------------------------------- GAN and prediction
class GANPhaseConfig(_Frozen):
    """The class-conditional GAN of the prediction phase (trained on the training part only)."""

    profile: str = "cpu"  # a name in sgdlab.gan.PROFILES (cpu: minutes on 2 cores; gpu: larger, longer)
    overrides: dict[str, Any] = Field(default_factory=dict)  # GANConfig fields, e.g. {steps: 1500}
    n_per_class: int = Field(1000, gt=1)  # size of the labelled synthetic set, per class
    seed: int = Field(0, ge=0)
    frechet_steps: int = Field(400, ge=0)  # training steps of the Frechet feature CNN (0: no Frechet distance)
    # generators kept along GAN training for the FD-vs-time and tau-vs-time curves (0: none)
    snapshots: int = Field(0, ge=0)


class FlatnessConfig(_Frozen):
    target: float = Field(0.1, gt=0.0)  # allowed rise of the train error under weight noise
    n_samples: int = Field(8, gt=0)
    n_iter: int = Field(20, gt=0)


class PredictConfig(_Frozen):
    flatness: FlatnessConfig = FlatnessConfig()
    force: bool = False  # use a synthetic set made from another data hash (normally refused)


# ------------------------------------------------------------------------------------- orchestration
class OrchestrationConfig(_Frozen):
    task_runner: Literal["thread", "process", "dask"] = "thread"
    max_workers: int = Field(2, ge=1)
    dask_address: str | None = None  # None with task_runner=dask: a LocalCluster of max_workers workers
    # auto: sweep keys that differ only in seed and optimizer hyper-parameters train as one population (one
    # vectorised forward/backward per step; sgdlab.train.population) when there are at least
    # population_min_members of them and their model has at most population_max_params parameters; off: every
    # key alone. Measured on 2 CPU cores (make bench-population, one thread, one-at-a-time time / population
    # time): 16 diagonal linear nets 4.8x, 16 MLPs 784-256-10 1.24x (README "Populations")
    population: Literal["auto", "off"] = "auto"
    population_max_members: int = Field(16, ge=1)
    # smaller groups train alone: 2 members were slower than 2 runs alone (diagonal nets 0.90x, MLP 784-256 0.89x;
    # 4 members: 1.72x and 1.16x)
    population_min_members: int = Field(3, ge=1)
    # auto groups only models with at most this many trainable parameters. Measured on 2 CPU cores (8 SGD runs,
    # one thread): MLP 784-64 1.41x, 784-256 (204k) 1.25x, 784-512 (407k) 0.99x. On a GPU batching should pay
    # far beyond: raise it there.
    population_max_params: int = Field(250_000, ge=1)
    # max members by memory: a population's members (weights, gradients, optimizer state, what autograd saves
    # for backward: sgdlab.train.population.member_bytes) may take at most this fraction of the memory free on
    # the study's device when the sweep is planned, shared by the max_workers populations training at once
    population_memory_fraction: float = Field(0.5, gt=0, le=1)

    @field_validator("population", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` (and `no`, `false`) as the boolean False, `on`/`yes`/`true` as True
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _member_bounds(self) -> OrchestrationConfig:
        if self.population_min_members > self.population_max_members:
            raise ValueError(
                f"population_min_members={self.population_min_members} exceeds "
                f"population_max_members={self.population_max_members}"
            )
        return self


class TrackingConfig(_Frozen):
    experiment: str | None = None  # None: the study name
    log_every_eval: bool = True


class ServeConfig(_Frozen):
    """Scheduled runs of the study (``sgdlab serve``): a Prefect deployment on a real local server."""

    name: str = "nightly"
    cron: str | None = "0 2 * * *"  # every night at 02:00 (server time)
    interval_seconds: int | None = Field(None, gt=0)  # instead of cron (tests use a few seconds)
    host: str = "127.0.0.1"
    port: int = Field(4200, gt=0, lt=65536)

    @model_validator(mode="after")
    def _one(self) -> ServeConfig:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        return self


class Config(_Frozen):
    profile: str | None = None  # the profile applied (see ``profiles``)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> section overrides
    study: StudyConfig = StudyConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    probe: ProbeConfig = ProbeConfig()
    gan: GANPhaseConfig = GANPhaseConfig()
    predict: PredictConfig = PredictConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.study.name

    @field_validator("profiles")
    @classmethod
    def _profiles_keep_paths(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # dvc.yaml's outs are templated from params.yaml's base sections (${study.results_dir}/${study.name});
        # a profile that moved them would make the code write where DVC does not look.
        for name, over in v.items():
            if not isinstance(over, dict):
                raise ValueError(f"profiles.{name} must be a mapping of section overrides")
            for section, key in PATH_KEYS:
                if isinstance(over.get(section), dict) and key in over[section]:
                    raise ValueError(
                        f"profiles.{name}.{section}.{key}: a profile cannot move the study's outputs "
                        f"(dvc.yaml declares them from params.yaml's {section}.{key}); set it in the "
                        f"base section or with --set {section}.{key}=..."
                    )
        return v


# Settings that decide where outputs go: set in params.yaml's base sections (or --set), never in a profile.
PATH_KEYS = (("study", "name"), ("study", "models_dir"), ("study", "results_dir"), ("data", "root"))


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


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def strict_yaml(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, but a duplicated key is an error."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_raw(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the project root or pass --params)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty; a params file needs its sections (see the repo's params.yaml)")
    try:
        raw = strict_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_profile(raw: dict[str, Any], name: str | None, source: str = "params.yaml") -> dict[str, Any]:
    """Merge ``profiles[name]`` over the base sections (``name`` None: the file's ``profile`` key, if any)."""
    name = name if name is not None else raw.get("profile")
    if name is None:
        return raw
    profiles = raw.get("profiles") or {}
    if name not in profiles:
        raise ConfigError(
            f"{source}: profile = {name!r}: no such profile; available: "
            f"{', '.join(sorted(profiles)) or '(none defined under profiles:)'}"
        )
    over = profiles[name] or {}
    if not isinstance(over, dict):
        raise ConfigError(f"{source}: profiles.{name} must be a mapping of section overrides")
    return {**_deep_merge(raw, over), "profile": name}


def load_config(
    path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = (), profile: str | None = None
) -> Config:
    """Load ``params.yaml`` (default: the project's), merge the selected profile, then apply ``--set``
    overrides (so an override beats the profile, which beats the base sections)."""
    from sgdlab.paths import default_params_path

    path = Path(path) if path else default_params_path()
    raw = load_raw(path)
    chosen = profile
    for item in overrides:  # --set profile=full selects a profile too
        key, value = parse_override(item)
        if key == "profile":
            chosen = value
    raw = apply_profile(raw, chosen, path.name)
    raw = apply_overrides(raw, [o for o in overrides if parse_override(o)[0] != "profile"])
    return from_dict(raw, source=path.name)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what ``sgdlab config`` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
