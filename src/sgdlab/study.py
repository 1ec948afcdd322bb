"""The ``Study``: one object that turns a validated :class:`~sgdlab.config.Config` into phase work.

It owns what every phase, task, flow, CLI command and the report used to restate on its own:

- the study's directories (``<models_dir>/<study>``, ``<results_dir>/<study>``, ``<data.root>``), kept
  inside the project (the folder of params.yaml) unless ``study.allow_outside_project`` says otherwise;
- :data:`OUTPUTS`, the one table of phase outputs. ``dvc.yaml`` is generated from it
  (:mod:`sgdlab.phases.dvc`), so no output file name is spelled anywhere else;
- the :class:`~sgdlab.data.DataSpec` of the configured dataset (content hash + split settings), which
  enters every run key, and the verified, per-process cached tensors of it;
- the finished runs of the sweep (paths stored relative to the study, resolved here);
- the MLflow experiment and its URLs (the GAN config for the study's device: ``sgdlab.phases.gan``).

:func:`sgdlab.validate.validate_config` checks everything knowable before compute (optimizers and their
hyper-parameters, models and their kwargs, loop settings, batch sizes against the data size, the GAN
profile) so a bad value is refused at load by ``sgdlab config`` rather than after minutes of preparing data.

The Study imports only what every phase needs (config, paths, data, results, run specs, tracking): the
``dvc.yaml`` deps of a phase are the import closure of its code, and a phase-specific import here would
make every stage depend on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdlab import results, tracking
from sgdlab.config import Config, ConfigError
from sgdlab.data import DataSpec, load_spec, prepare_dataset, read_meta
from sgdlab.paths import project_root
from sgdlab.runspec import RunSpec


@dataclass(frozen=True)
class Output:
    """One declared output of a phase. ``path`` is a template over the roots ``{models}`` (the study's
    checkpoints), ``{results}`` (its tables) and ``{data}`` (the data root). ``kind``: ``outs``,
    ``metrics`` or ``plots`` (DVC's three sections); ``cache``: versioned in the DVC cache;
    ``persist``: survives a re-run of the stage (finished run keys are reused, not retrained)."""

    path: str
    kind: str = "outs"
    cache: bool = True
    persist: bool = False


# The report's figures, in order (sgdlab.report.build gives each its title and caption).
REPORT_FIGURES = (
    "fig1_training_curves",
    "fig2_edge_of_stability",
    "fig3_spectral_density",
    "fig4_predicted_vs_true",
    "fig5_measures",
    "fig6_summary",
    "fig8_scaling_rules",
    "fig9_gan_curve",
)


def _report_outputs() -> dict[str, Output]:
    outs = {"html": Output("{results}/report/report.html", cache=False)}
    outs.update({stem: Output(f"{{results}}/report/{stem}.png", kind="plots", cache=False) for stem in REPORT_FIGURES})
    return outs


# phase -> output name -> Output. The only place output paths are written down.
OUTPUTS: dict[str, dict[str, Output]] = {
    "prepare": {"processed": Output("{data}/processed")},
    "sweep": {"models": Output("{models}", persist=True), "runs": Output("{results}/runs.parquet")},
    "probe": {
        "probe": Output("{results}/probe.parquet"),
        "densities": Output("{results}/densities.json"),
        # one JSON per run key, keyed by the checkpoint's content hash + probe settings (the phase's cache)
        "units": Output("{results}/probe-units", persist=True),
    },
    "gan": {
        "generator": Output("{results}/gan/generator.pt"),
        "synthetic": Output("{results}/gan/synthetic.parquet"),
        "samples": Output("{results}/gan/samples.png", cache=False),
        "meta": Output("{results}/gan/gan.json", kind="metrics", cache=False),
        # generators along training (gan.snapshots) and curve.json: FD to the validation part vs training time
        "snapshots": Output("{results}/gan/snapshots"),
    },
    "predict": {
        "predictions": Output("{results}/predictions.parquet"),
        "scores": Output("{results}/scores.parquet"),
        "scores_json": Output("{results}/scores.json", kind="metrics", cache=False),
        # per generator snapshot: FD, and the GAN predictor's MAE and tau over the population, vs GAN training time
        "gan_curve": Output("{results}/gan_curve.parquet"),
    },
    "report": _report_outputs(),
}


def result_paths(results_dir: Path | str) -> dict[str, Path]:
    """Every output under ``{results}`` as ``"phase.name" -> path`` for code that only holds a results
    directory (the report library, :func:`sgdlab.results.load_runs`)."""
    return {
        f"{phase}.{name}": Path(o.path.format(results=Path(results_dir), models="", data=""))
        for phase, outs in OUTPUTS.items()
        for name, o in outs.items()
        if o.path.startswith("{results}")
    }


class Study:
    """A study of one config (see module docstring). Cheap to build; builds nothing on disk."""

    def __init__(self, cfg: Config, root: Path | str | None = None) -> None:
        self.cfg = cfg
        self.root = Path(root).resolve() if root is not None else project_root()
        self.name = cfg.study.name
        self.models_dir = self._inside(cfg.study.models_dir, "study.models_dir") / self.name
        self.results_dir = self._inside(cfg.study.results_dir, "study.results_dir") / self.name
        self.data_root = self._inside(cfg.data.root, "data.root")

    # ------------------------------------------------------------------------------------------ paths
    def _inside(self, value: str, key: str) -> Path:
        p = (self.root / value).resolve()
        if not self.cfg.study.allow_outside_project and not p.is_relative_to(self.root):
            raise ConfigError(
                f"params.yaml: {key} = {value!r}: resolves to {p}, outside the project {self.root}; "
                "keep outputs inside the project or set study.allow_outside_project: true"
            )
        return p

    def path(self, phase: str, name: str) -> Path:
        """The absolute path of output ``name`` of ``phase`` (from :data:`OUTPUTS`)."""
        try:
            template = OUTPUTS[phase][name].path
        except KeyError:
            raise KeyError(
                f"no output {name!r} of phase {phase!r}; declared: "
                f"{', '.join(f'{p}.{n}' for p, outs in OUTPUTS.items() for n in outs)}"
            ) from None
        return Path(template.format(models=self.models_dir, results=self.results_dir, data=self.data_root))

    def outputs(self, phase: str) -> dict[str, Path]:
        return {name: self.path(phase, name) for name in OUTPUTS[phase]}

    def run_dir(self, run_key: str) -> Path:
        return self.models_dir / run_key

    def relative(self, path: Path | str) -> str:
        """``path`` relative to the study's models directory (what tables store, so a copied or moved
        project reads its own checkpoints)."""
        return Path(path).resolve().relative_to(self.models_dir).as_posix()

    def resolve(self, stored: str) -> Path:
        """A path stored in a table (relative to the models directory) as an absolute path. An absolute
        path (tables written before paths were relative) is refused: it may point into another project."""
        p = Path(stored)
        if p.is_absolute():
            raise ValueError(
                f"{stored}: an absolute path in {self.path('sweep', 'runs')}; re-run the sweep "
                "(`sgdlab sweep`: finished keys are reused) to store paths relative to the study"
            )
        return self.models_dir / p

    # ------------------------------------------------------------------------------------------- data
    @property
    def device(self) -> str:
        return self.cfg.study.device

    def processed_dir(self, dataset: str | None = None) -> Path:
        return self.path("prepare", "processed") / (dataset or self.cfg.train.dataset)

    def data_spec(self, dataset: str | None = None, *, prepare: bool = False):
        """The :class:`~sgdlab.data.DataSpec` of ``dataset`` (default ``train.dataset``) as prepared on
        disk. ``prepare=True`` (re)builds it first when missing, truncated or made with other settings."""
        name = dataset or self.cfg.train.dataset
        if prepare:
            data_hash = prepare_dataset(name, self.cfg.data, self.data_root).data_hash
        else:
            data_hash = read_meta(self.processed_dir(name) / "train.parquet")["data_hash"]
        d = self.cfg.data
        return DataSpec(name, data_hash, d.val_fraction, d.split_seed, d.probe_size)

    def load(self, spec=None):
        """The tensors of ``spec`` (default: the configured dataset) on the study's device, verified
        against the spec's data hash; memoised per process (runs of a sweep share the dataset)."""
        spec = spec or self.data_spec()
        train_file = self.processed_dir(spec.dataset) / "train.parquet"
        stamp = train_file.stat().st_mtime_ns if train_file.exists() else 0
        key = (
            spec.dataset,
            spec.data_hash,
            spec.val_fraction,
            spec.split_seed,
            spec.probe_size,
            str(self.data_root),
            self.device,
            stamp,
        )
        with _cache_lock:
            if key not in _splits_cache:
                if len(_splits_cache) >= 2:
                    _splits_cache.pop(next(iter(_splits_cache)))
                _splits_cache[key] = load_spec(spec, self.data_root, self.device)
            return _splits_cache[key]

    def n_train(self, spec) -> int:
        """Size of the training part of the prepared ``spec`` (train split minus the validation part),
        from the Parquet footer (no data read)."""
        import pyarrow.parquet as pq

        n = pq.ParquetFile(self.processed_dir(spec.dataset) / "train.parquet").metadata.num_rows
        return n - int(round(spec.val_fraction * n))

    def expected_n_train(self, dataset: str | None = None) -> int:
        """Size of the training part (train split minus validation) from the config alone, or from the
        prepared file when it exists and was made with these settings: what batch sizes are checked
        against at load, before any data is built."""
        d, name = self.cfg.data, dataset or self.cfg.train.dataset
        n = {
            "fashion_mnist": lambda: d.fashion_mnist.train_size or 60000,
            "mnist1d": lambda: int(d.mnist1d.num_samples * d.mnist1d.train_split),
            "sparse_regression": lambda: d.sparse_regression.n_train,
            "xor": lambda: d.xor.n_train,
            "separable": lambda: d.separable.n_train,
        }[name]()
        return n - int(round(d.val_fraction * n))

    # ------------------------------------------------------------------------------------------- runs
    def finished_runs(self) -> list[FinishedRun]:
        """The sweep's finished runs, from ``runs.parquet`` and each run's ``result.json``."""
        out = []
        for row in results.read_table(self.path("sweep", "runs")):
            if row.get("status") != "finished":
                continue
            ckpt = self.resolve(row["checkpoint"])
            done = results.read_result(ckpt.parent)
            if done is None:
                raise FileNotFoundError(
                    f"{ckpt.parent / 'result.json'}: run {row['run_key']} is listed as finished "
                    "but its result is missing; re-run the sweep"
                )
            out.append(FinishedRun(RunSpec.from_dict(done["spec"]), row, ckpt))
        return out

    # ------------------------------------------------------------------------------------------ MLflow
    @property
    def experiment_name(self) -> str:
        return self.cfg.experiment_name

    def experiment_id(self) -> str:
        return tracking.ensure_experiment(self.experiment_name)

    def runs_url(self, host: str = "127.0.0.1", port: int = 5000) -> str:
        """The MLflow UI page of the study's runs (``sgdlab ui`` serves it)."""
        return tracking.runs_url(self.experiment_id(), host, port)


@dataclass(frozen=True)
class FinishedRun:
    """A finished run of the sweep: its spec, its ``runs.parquet`` row and its checkpoint (absolute)."""

    spec: RunSpec
    row: dict[str, Any]
    checkpoint: Path


_cache_lock = threading.Lock()
_splits_cache: dict[tuple, Any] = {}


def recipe_paths(results_dir: Path | str) -> dict[str, Path]:
    """A recipe's own outputs beside the study's tables (``sgdlab recipe``): ``recipe/check.json`` (the verdict),
    ``recipe/figure.png`` (the paper's figure), ``recipe/curves.json`` (what the check read)."""
    d = Path(results_dir) / "recipe"
    return {"dir": d, "check": d / "check.json", "figure": d / "figure.png", "curves": d / "curves.json"}
