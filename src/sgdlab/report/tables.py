"""Tables of the study report as plain data (:class:`Table`: header and rows of strings), built from
the phase tables; :mod:`sgdlab.report.html` renders them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sgdlab.report.data import fmt, group_key, is_num, several_models
from sgdlab.results import GROUP_KEYS, summarize


@dataclass(frozen=True)
class Table:
    """A rendered-ready table; ``row_classes[i]`` is a CSS class for row i ("" for none)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    row_classes: tuple[str, ...] = field(default=())


def _pm(mean: Any, std: Any, scale: float = 1.0, lo: Any = None, hi: Any = None) -> str:
    """``mean ± std [lo, hi]`` (the bracket: the 95% t interval of the mean, when there is one); percentages
    (scale 100) with one decimal, other numbers with 3 significant digits."""
    if not is_num(mean):
        return "–"
    if scale == 100.0:
        out = f"{mean * 100:.1f} ± {std * 100:.1f}" if is_num(std) else f"{mean * 100:.1f}"
        return out + (f" [{lo * 100:.1f}, {hi * 100:.1f}]" if is_num(lo) and is_num(hi) else "")
    out = f"{fmt(mean * scale)} ± {fmt(std * scale, 2)}" if is_num(std) else fmt(mean * scale)
    return out + (f" [{fmt(lo * scale)}, {fmt(hi * scale)}]" if is_num(lo) and is_num(hi) else "")


def _sort(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(r):
        return tuple((0, v, "") if is_num(v) else (1, 0, str(v)) for v in (*group_key(r), r.get("seed")))

    return sorted(rows, key=key)


def sweep_summary(runs: list[dict[str, Any]]) -> Table:
    """Mean +- std over finished seeds per (model, optimizer, lr, batch, variant), via ``results.summarize``."""
    metrics = [
        (m, label, 100.0 if m.endswith("/acc") else 1.0)
        for m, label in (
            ("test/acc", "test acc (%)"),
            ("test/loss", "test loss"),
            ("train/loss", "train loss"),
            ("val/acc", "val acc (%)"),
        )
        if any(is_num(r.get(m)) for r in runs)
    ]
    multi = several_models(runs)
    base = summarize(runs, metrics[0][0] if metrics else "test/acc")
    stats = {m: {tuple(g[k] for k in GROUP_KEYS): g for g in summarize(runs, m)} for m, _, _ in metrics}
    base.sort(key=lambda g: tuple((0, g[k], "") if is_num(g[k]) else (1, 0, str(g[k])) for k in GROUP_KEYS))
    cols = (
        (["model"] if multi else [])
        + ["optimizer", "lr", "batch", "variant", "runs", "finished", "diverged", "failed"]
        + [label for _, label, _ in metrics]
    )
    rows, classes = [], []
    for g in base:
        k = tuple(g[c] for c in GROUP_KEYS)
        cells = ([str(g["model"])] if multi else []) + [
            str(g["optimizer"]),
            fmt(g["lr"]),
            str(g["batch_size"]),
            str(g["variant"]),
            str(g["runs"]),
            str(g["finished"]),
            str(g["diverged"]),
            str(g["failed"]),
        ]
        cells += [
            _pm(
                stats[m][k][f"{m} mean"],
                stats[m][k][f"{m} std"],
                s,
                stats[m][k][f"{m} ci95 lo"],
                stats[m][k][f"{m} ci95 hi"],
            )
            for m, _, s in metrics
        ]
        rows.append(tuple(cells))
        classes.append("bad" if g["finished"] == 0 else ("warn" if g["diverged"] + g["failed"] else ""))
    return Table(
        "Sweep summary",
        tuple(cols),
        tuple(rows),
        "Mean ± std (sample std) [95% confidence interval of the mean: Student's t, n - 1 degrees of freedom] "
        "over the finished seeds of each group (no interval for one seed); diverged and failed runs are "
        "counted, not averaged.",
        tuple(classes),
    )


def runs_table(runs: list[dict[str, Any]]) -> Table:
    """Every run with its status and, for diverged/failed runs, the reason."""
    multi = several_models(runs)
    cols = [
        "run_key",
        *(["model"] if multi else []),
        "optimizer",
        "lr",
        "batch",
        "variant",
        "seed",
        "status",
        "reason",
        "steps done / planned",
        "train loss",
        "test acc (%)",
        "wall time (s)",
        "samples/s",
    ]
    rows, classes = [], []
    for r in _sort(runs):
        acc = r.get("test/acc")
        rows.append(
            (
                str(r["run_key"]),
                *([str(r.get("model"))] if multi else []),
                str(r.get("optimizer")),
                fmt(r.get("lr")),
                str(r.get("batch_size")),
                str(r.get("variant")),
                str(r.get("seed")),
                str(r.get("status")),
                str(r.get("reason") or ""),
                f"{fmt(r.get('steps_done'))} / {fmt(r.get('steps'))}",
                fmt(r.get("train/loss")),
                f"{acc * 100:.1f}" if is_num(acc) else "–",
                fmt(r.get("wall_time_s")),
                fmt(r.get("samples_per_s")),
            )
        )
        classes.append("" if r.get("status") == "finished" else "bad")
    n_bad = sum(c == "bad" for c in classes)
    return Table(
        "Runs",
        tuple(cols),
        tuple(rows),
        f"{len(rows)} runs, {n_bad} not finished (highlighted, with the reason the loop stopped them).",
        tuple(classes),
    )


def hessian_table(runs: list[dict[str, Any]]) -> Table | None:
    """Curvature at the final checkpoints (probe.parquet), or None when no run was probed."""
    probed = [r for r in runs if is_num(r.get("hessian/lambda_max"))]
    if not probed:
        return None
    multi = several_models(probed)
    cols = [
        *(["model"] if multi else []),
        "optimizer",
        "lr",
        "batch",
        "variant",
        "seed",
        "λ_max",
        "precond. λ_max",
        "threshold",
        "sharpness / threshold",
        "trace ± stderr",
    ]
    rows = []
    for r in _sort(probed):
        # raw lambda_max is never divided by a preconditioned threshold (Adam-kind runs: adam, adamw,
        # rmsprop_bc, svag_adam); tables written before the flag existed fall back to the name
        precond_thr = r.get("hessian/threshold_preconditioned")
        precond_thr = bool(precond_thr) if is_num(precond_thr) else str(r.get("optimizer")) in ("adam", "adamw")
        sharp = (
            r.get("hessian/precond_lambda_max")
            if is_num(r.get("hessian/precond_lambda_max"))
            else (None if precond_thr else r.get("hessian/lambda_max"))
        )
        thr = r.get("hessian/threshold")
        ratio = sharp / thr if is_num(sharp) and is_num(thr) and thr else None
        rows.append(
            (
                *([str(r.get("model"))] if multi else []),
                str(r.get("optimizer")),
                fmt(r.get("lr")),
                str(r.get("batch_size")),
                str(r.get("variant")),
                str(r.get("seed")),
                fmt(r.get("hessian/lambda_max")),
                fmt(r.get("hessian/precond_lambda_max")),
                fmt(thr),
                fmt(ratio),
                _pm(r.get("hessian/trace"), r.get("hessian/trace_stderr")),
            )
        )
    return Table(
        "Hessian at the final checkpoints",
        tuple(cols),
        tuple(rows),
        "λ_max by Lanczos and trace by Hutchinson (± its standard error) on the fixed probe subset. "
        "Sharpness / threshold compares λ_max with 2/η (momentum forms for heavy ball/Nesterov) and, for "
        "Adam/AdamW, the preconditioned λ_max with (2+2β1)/((1−β1)η); ≈1 means the run sits at the "
        "Edge of Stability.",
    )


def scores_table(scores: list[dict[str, Any]]) -> Table:
    """Predictor scores (scores.parquet): MAE in percentage points, signed Kendall tau, Psi, PGDL."""
    order = sorted(
        scores, key=lambda s: (s.get("kind") != "error", -(s["kendall_tau"] if is_num(s.get("kendall_tau")) else -2))
    )
    rows, classes = [], []
    for s in order:
        tau = s.get("kendall_tau")
        target = {"gap": "generalization gap", "test_err": "test error"}.get(s.get("target"), "test error")
        rows.append(
            (
                str(s.get("predictor")),
                str(s.get("kind")),
                target,
                fmt(s["mae"] * 100 if is_num(s.get("mae")) else None),
                f"{tau:+.3f}" if is_num(tau) else "–",
                fmt(s.get("psi")),
                fmt(s.get("pgdl")),
                _gate_cell(s),
            )
        )
        untrusted = isinstance(s.get("gate"), str) and s["gate"] != "pass"
        classes.append("warn" if (is_num(tau) and tau < 0) or untrusted else "")
    return Table(
        "Predictor scores",
        (
            "predictor",
            "kind",
            "scored against",
            "MAE (pp)",
            "Kendall τ (signed)",
            "Ψ (granulated)",
            "PGDL",
            "quality gate",
        ),
        tuple(rows),
        "Predictors of test error are scored against the true test error (MAE in percentage points, "
        "Kendall τ, Ψ); generalization measures against the generalization gap (test − train error on "
        "each run's own training data), as in Jiang et al. 2020. PGDL is the competition's official "
        "score (self-pairs included, uniform over cells) against the gap. Kendall τ is signed: τ < 0 "
        "(highlighted) ranks models backwards. The GAN predictor carries its quality gate "
        "(sgdlab.generalization.gate: FD(synthetic, val) <= 5x the real-data floor and mean error on "
        "synthetic within 5 pp of validation); a failed or unmeasured gate (highlighted) means its "
        "numbers are not trustworthy at this sample quality.",
        tuple(classes),
    )


def _gate_cell(s: dict[str, Any]) -> str:
    gate = s.get("gate")
    if not isinstance(gate, str) or not gate:
        return "–"
    if gate == "pass":
        return "pass"
    reasons = s.get("gate_reasons") if isinstance(s.get("gate_reasons"), str) else ""
    return f"{gate}: {s.get('gate_note') or ''}" + (f" ({reasons})" if reasons else "")
