"""Seeded hyper-parameter search: the trials of a ``sweep.optimizers[i].search``, fixed before anything runs.

Each trial becomes one run key of the sweep (with ``extra.search = {kind, seed, study, trial}`` in its spec),
so the sweep machinery gives a search what it gives a grid: one MLflow child run per trial, checkpoints,
resume, caching. Because the points depend only on the config, a search killed mid-way and re-run finds the
same trials, trains the unfinished ones and repeats none.

- ``random``: independent uniform draws in the unit cube (numpy's PCG64, seeded);
- ``quasirandom``: a scrambled Halton sequence (``scipy.stats.qmc.Halton``), AlgoPerf's baseline tuning:
  it covers the space more evenly than random draws for the same number of trials (lower discrepancy).

Study ``s`` of ``S`` uses seed ``seed + s``: independent studies, as the external-tuning protocol needs.
Unit-cube coordinates map to ``[low, high]`` linearly, or log-linearly with ``log: true``; ``1-<key>`` sets
``key = 1 - value``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sgdlab.config import SearchConfig


def unit_points(kind: str, n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` points in ``[0, 1)^dim``."""
    if kind == "random":
        return np.random.default_rng(seed).random((n, dim))
    if kind == "quasirandom":
        from scipy.stats import qmc

        return qmc.Halton(d=dim, scramble=True, seed=seed).random(n)
    raise ValueError(f"search kind {kind!r}: allowed random, quasirandom")


def trials(search: SearchConfig) -> list[dict[str, Any]]:
    """Every trial of every study: ``{"study", "trial", "values": {space key: value}}`` in order."""
    keys = sorted(search.space)
    out = []
    for s in range(search.studies):
        u = unit_points(search.kind, search.trials, len(keys), search.seed + s)
        for t in range(search.trials):
            values = {}
            for j, k in enumerate(keys):
                p = search.space[k]
                if p.log:
                    v = math.exp(math.log(p.low) + u[t, j] * (math.log(p.high) - math.log(p.low)))
                else:
                    v = p.low + u[t, j] * (p.high - p.low)
                values[k] = float(v)
            out.append({"study": s, "trial": t, "values": values})
    return out


def apply(values: dict[str, float], hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` (resolved: every hyper-parameter with its value) with the trial's ``values`` set.

    Raises ``KeyError`` naming a key the optimizer does not have (the caller adds where it came from)."""
    out = dict(hparams)
    for key, v in values.items():
        name = key[2:] if key.startswith("1-") else key
        v = 1.0 - v if key.startswith("1-") else v
        if name in ("beta1", "beta2"):
            if "betas" not in out:
                raise KeyError(f"{key!r}: the optimizer has no betas")
            betas = list(out["betas"])
            betas[0 if name == "beta1" else 1] = v
            out["betas"] = tuple(betas)
        elif name in out and (isinstance(out[name], (int, float)) and not isinstance(out[name], bool)):
            out[name] = v
        else:
            scalars = sorted(k for k, x in out.items() if isinstance(x, (int, float)) and not isinstance(x, bool))
            raise KeyError(f"{key!r} is not a numeric hyper-parameter of this optimizer; it has {scalars}")
    return out
