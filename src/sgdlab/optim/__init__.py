"""sgdlab.optim — one registry of optimizer families plus SDE scaling tools.

>>> from sgdlab.optim import build_optimizer, get_spec
>>> spec = get_spec("adam"); spec.source
'torch.optim'

Importing this package registers every family (torch.optim, pytorch_optimizer, opacus, own code).
"""

from . import own, specs_external, specs_opacus, specs_torch  # noqa: F401  (importing registers every family)
from .registry import (
    HParam,
    OptimizerConfigError,
    OptimizerSpec,
    UnknownOptimizerError,
    batches_per_step,
    build_optimizer,
    get_spec,
    list_specs,
    resolve_hparams,
)

__all__ = [
    "HParam",
    "OptimizerConfigError",
    "OptimizerSpec",
    "UnknownOptimizerError",
    "batches_per_step",
    "build_optimizer",
    "get_spec",
    "list_specs",
    "resolve_hparams",
]
