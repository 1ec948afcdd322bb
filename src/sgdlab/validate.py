"""Everything knowable from the config, checked before any compute (``sgdlab config``, every CLI command,
the pipeline): unknown optimizers (with close names), hyper-parameters an optimizer does not take,
non-finite or non-positive lrs, unknown models or model kwargs, loop and schedule settings the training
loop refuses, batch sizes larger than the data, scaling-rule variants outside their validity, a bad GAN
profile or override, output folders outside the project. Each error names the params.yaml key.
"""

from __future__ import annotations

from pathlib import Path

from sgdlab.config import Config
from sgdlab.data import DataSpec
from sgdlab.study import Study


def validate_config(cfg: Config, root: Path | str | None = None) -> Study:
    """Raise ConfigError (or SweepError, a ValueError) naming the key; return the study."""
    from sgdlab.phases.gan import gan_config
    from sgdlab.sweep import expand, searches

    study = Study(cfg, root)
    d = cfg.data
    placeholder = DataSpec(cfg.train.dataset, "0" * 64, d.val_fraction, d.split_seed, d.probe_size)
    expand(cfg, placeholder, study.expected_n_train())
    searches(cfg, placeholder, study.expected_n_train())
    gan_config(study)
    return study
