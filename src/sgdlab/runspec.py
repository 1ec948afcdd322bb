"""``RunSpec``: everything that determines one training run, and its stable run key.

The spec holds the :class:`~sgdlab.data.DataSpec` (content hash of the prepared data, validation split,
split seed, probe subset, train fraction), the model, the optimizer with every resolved hyper-parameter,
batch size, steps, seed, the loop settings and the in-training probe settings. The key is a hash of all of
it, so any setting that changes what a run sees or records gives a new key. Kept apart from
:mod:`sgdlab.sweep` (which expands and validates grids) so reading a finished run imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sgdlab.data.spec import DataSpec


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one training run (its key is a hash of all of it)."""

    data: DataSpec
    model: str
    model_kwargs: dict[str, Any]
    optimizer: str
    hparams: dict[str, Any]  # resolved: every hyper-parameter with its value, lr included
    batch_size: int
    steps: int
    seed: int
    loop: dict[str, Any]  # LoopConfig fields other than steps/batch_size/seed/device/task
    probe: dict[str, Any] | None = None  # in-training Hessian probe settings (None: no probe along training)
    variant: str = "base"
    base_key: str = ""  # for a variant, the key of the run it was derived from
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.data.dataset

    @property
    def data_hash(self) -> str:
        return self.data.data_hash

    @property
    def train_fraction(self) -> float:
        return self.data.train_fraction

    @property
    def lr(self) -> float:
        return float(self.hparams["lr"])

    @property
    def key(self) -> str:
        return run_key(self)

    @property
    def label(self) -> str:
        v = "" if self.variant == "base" else f" [{self.variant}]"
        f = "" if self.train_fraction == 1.0 else f" data={self.train_fraction:g}"
        f += f" noise={self.data.label_noise:g}" if self.data.label_noise else ""
        s = (self.extra or {}).get("search")
        t = f" trial {s['study']}/{s['trial']}" if s else ""
        return (
            f"{self.optimizer} lr={self.lr:g} B={self.batch_size} T={self.steps} {self.model} seed={self.seed}{f}{t}{v}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(**{**d, "data": DataSpec(**d["data"])})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    return x


def run_key(spec: RunSpec) -> str:
    """16 hex digits of sha256 over the canonical JSON of the spec (``base_key`` excluded)."""
    d = spec.to_dict()
    d.pop("base_key")
    if not d["data"].get("label_noise"):  # clean labels: the key of a run from before label noise existed
        d["data"].pop("label_noise", None)
    blob = json.dumps(_jsonable(d), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
