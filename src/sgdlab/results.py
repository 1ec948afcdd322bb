"""The sweep's results table, ``runs.parquet``: one row per run key, written atomically.

Columns are plain scalars (nested specs as JSON strings) so the table opens in pandas, DuckDB or
Spark as is. Later phases write their own tables keyed by run key (``probe.parquet``,
``predictions.parquet``); :func:`load_runs` joins them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _scalar(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def write_table(rows: Iterable[dict[str, Any]], path: Path | str) -> Path:
    """Write rows (dicts; union of keys becomes the columns) to Parquet atomically, with CRC checksums on every
    page (verified by :func:`read_table`: a flipped bit is an error naming the file, not different data)."""
    rows = [{k: _scalar(v) for k, v in r.items()} for r in rows]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows]) if rows else pa.table({})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_result(run_dir: Path | str) -> dict | None:
    """A run's ``result.json`` (its row and spec; written last, atomically, by the runner) or None."""
    p = Path(run_dir) / "result.json"
    return json.loads(p.read_text()) if p.is_file() else None


def read_table(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a table written by :func:`write_table` (page checksums verified); a missing or damaged file
    names itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results table; run the sweep first (`sgdlab sweep`)")
    try:
        return pq.read_table(path, page_checksum_verification=True).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise TableError(
            f"{path}: damaged results table ({str(exc).splitlines()[0][:200]}); delete it and re-run the phase "
            "that writes it (cached runs are not trained again)"
        ) from None


class TableError(ValueError):
    """A results table cannot be read back intact; the message names the file."""


GROUP_KEYS = ("model", "optimizer", "lr", "batch_size", "steps", "train_fraction", "label_noise", "variant")


def summarize(rows: list[dict[str, Any]], metric: str = "test/acc") -> list[dict[str, Any]]:
    """Mean +- std (over seeds) of ``metric`` per (model, optimizer, lr, batch size, variant), with the
    two-sided 95% Student-t interval of the mean (``ci95 lo``/``ci95 hi``; None for fewer than 2 seeds)."""
    import math
    import statistics

    from sgdlab.optbench.scoring import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in GROUP_KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        vals = [r[metric] for r in rs if r.get("status") == "finished" and r.get(metric) is not None]
        ci = mean_ci(vals) if vals and not any(math.isnan(v) for v in vals) else None
        lo = ci.lo if ci is not None and ci.n > 1 else None
        hi = ci.hi if ci is not None and ci.n > 1 else None
        out.append(
            {
                **dict(zip(GROUP_KEYS, key)),
                "runs": len(rs),
                "finished": sum(r.get("status") == "finished" for r in rs),
                "diverged": sum(r.get("status") == "diverged" for r in rs),
                "failed": sum(r.get("status") == "failed" for r in rs),
                f"{metric} mean": statistics.fmean(vals) if vals else None,
                f"{metric} std": statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None),
                f"{metric} ci95 lo": lo,
                f"{metric} ci95 hi": hi,
            }
        )
    return out


# Each phase owns its table (a DVC stage must not rewrite another stage's output, or DVC would see the
# earlier stage as changed): runs.parquet (sweep), probe.parquet (Hessian probe), predictions.parquet
# (generalization predictors). load_runs joins them by run key for analysis and reports.
PHASE_TABLES = ("probe.probe", "predict.predictions")  # outputs of sgdlab.study.OUTPUTS


def load_runs(results_dir: Path | str) -> list[dict[str, Any]]:
    """``runs.parquet`` with the columns of the later phases' tables (joined by ``run_key``) when present."""
    from sgdlab.study import result_paths

    paths = result_paths(results_dir)
    rows = read_table(paths["sweep.runs"])
    by_key = {r["run_key"]: r for r in rows}
    for name in PHASE_TABLES:
        p = paths[name]
        if p.is_file():
            for extra in read_table(p):
                if extra["run_key"] in by_key:
                    by_key[extra["run_key"]].update({k: v for k, v in extra.items() if k != "run_key"})
    return rows
