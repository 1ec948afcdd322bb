"""Figures of the training side of a study: curves over seeds, Edge of Stability, spectral densities,
and the final accuracy summary. Each function returns a :class:`matplotlib.figure.Figure` or raises
:class:`SkipFigure` saying why the data cannot make that figure."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sgdlab.report.data import (
    Curves,
    SkipFigure,
    clean_curve,
    fmt,
    group_key,
    group_label,
    groups_by_optimizer,
    is_num,
    seed_band,
    several_models,
)
from sgdlab.report.style import group_colors, optimizer_colors, styled
from sgdlab.results import summarize

ADAM_FAMILY = ("adam", "adamw")  # their stability threshold is for the preconditioned sharpness
STEP_LABEL = "step (optimizer updates)"


def _has(curves: Curves, key: str, metric: str) -> bool:
    return clean_curve(curves.get(key, {}).get(metric))[0].size > 0


def _row_legend(axes, ax) -> None:
    """One legend per row, right of ``ax``, with the entries of all ``axes`` (deduplicated by label)."""
    seen: dict[str, Any] = {}
    for a in axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        ax.legend(seen.values(), seen.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


@styled
def training_curves(
    runs: list[dict[str, Any]], curves: Curves, *, loss: str = "train/loss", acc: str = "test/acc"
) -> Figure:
    """Figure 1: train loss (log y) and test accuracy (%) vs step, one row per optimizer, one colour per
    (lr, batch, variant) group: mean over finished seeds with a band (+-1 std for >= 3 seeds, min-max for
    2). Diverged or failed runs are drawn individually, dashed, ending in a cross, and labelled."""
    have = [r for r in runs if _has(curves, r["run_key"], loss) or _has(curves, r["run_key"], acc)]
    if not have:
        raise SkipFigure(f"no run has a {loss} or {acc} curve (no curves were passed from MLflow)")
    metrics = [m for m in (loss, acc) if any(_has(curves, r["run_key"], m) for r in have)]
    by_opt = groups_by_optimizer(have)
    multi = several_models(have)
    fig = Figure(figsize=(6.0 * len(metrics) + 3.4, 3.0 * len(by_opt) + 0.5), layout="constrained")
    axes = fig.subplots(len(by_opt), len(metrics), squeeze=False)
    for i, (opt, groups) in enumerate(by_opt.items()):
        for j, metric in enumerate(metrics):
            ax, scale = axes[i, j], (100.0 if metric == acc else 1.0)
            finite_hi: list[float] = []
            finite_lo: list[float] = []
            crosses = []
            for (_, rows), c in zip(groups.items(), group_colors(len(groups))):
                label = group_label(rows[0], with_model=multi, with_optimizer=False)
                band = seed_band(
                    [curves.get(r["run_key"], {}).get(metric) for r in rows if r.get("status") == "finished"]
                )
                if band is not None:
                    lo = band.lo if metric != loss else np.maximum(band.lo, band.mean * 1e-2)  # log axis
                    ax.plot(
                        band.steps,
                        band.mean * scale,
                        color=c,
                        lw=1.7,
                        label=f"{label} (n={band.n_seeds})",
                        marker="o" if band.steps.size < 3 else None,
                        ms=4,
                    )  # a lone point stays visible
                    if band.kind != "none":
                        ax.fill_between(band.steps, lo * scale, band.hi * scale, color=c, alpha=0.2, lw=0)
                    finite_hi.append(float(np.max(band.hi)) * scale)
                    finite_lo.append(float(np.min(lo[lo > 0])) * scale if (lo > 0).any() else math.nan)
                for r in rows:
                    if r.get("status") == "finished":
                        continue
                    s, v = clean_curve(curves.get(r["run_key"], {}).get(metric))
                    if s.size:
                        ax.plot(
                            s,
                            v * scale,
                            color=c,
                            ls="--",
                            lw=1.2,
                            label=f"{label} seed {r.get('seed')}: {r.get('status', 'not finished')}",
                        )
                        crosses.append((s[-1], v[-1] * scale, c))
            if metric == loss:
                ax.set_yscale("log", nonpositive="mask")
                if finite_hi:  # keep the finished runs readable: a blow-up leaves the axis at the top
                    lo = np.nanmin(finite_lo) if not all(math.isnan(x) for x in finite_lo) else None
                    ax.set_ylim(lo / 2 if lo else None, max(finite_hi) * 5)
            else:
                ax.set_ylim(-2, 102)
            ymin, ymax = ax.get_ylim()
            top = ymax / 1.6 if metric == loss else ymax - 3  # just inside the axis when off the chart
            for x, y, c in crosses:
                ax.plot([x], [min(max(y, ymin), top)], marker="X", ms=8, color=c, mec="black", mew=0.6, zorder=5)
            ax.set_title(f"{opt}: {'train loss' if metric == loss else 'test accuracy'}")
            ax.set_xlabel(STEP_LABEL)
            ax.set_ylabel("train loss (log scale)" if metric == loss else "test accuracy (%)")
        _row_legend(axes[i], axes[i, -1])
    fig.suptitle(
        "Training curves: mean over seeds (band: ±1 std for ≥3 seeds, min–max for 2)\n"
        "dashed, ending in ✕: a diverged or failed run"
    )
    return fig


@styled
def edge_of_stability(runs: list[dict[str, Any]], curves: Curves) -> Figure:
    """Figure 2: sharpness vs step with the stability threshold (dashed, same colour), one panel per
    optimizer, one seed (the lowest) per group. For Adam/AdamW the preconditioned sharpness is drawn when
    logged, since the threshold (2+2b1)/((1-b1) eta) applies to it (Cohen et al. 2022, adaptive EoS);
    otherwise raw lambda_max without a threshold. Edge of Stability: Cohen et al., ICLR 2021."""
    have = [
        r
        for r in runs
        if _has(curves, r["run_key"], "hessian/lambda_max") or _has(curves, r["run_key"], "hessian/precond_lambda_max")
    ]
    if not have:
        raise SkipFigure(
            "no run has a hessian/lambda_max curve (sharpness was not probed during training: "
            "probe.every = 0, or no curves were passed)"
        )
    by_opt = groups_by_optimizer(have)
    multi = several_models(have)
    ncols = min(2, len(by_opt))
    nrows = math.ceil(len(by_opt) / ncols)
    fig = Figure(figsize=(6.6 * ncols, 4.8 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(by_opt) :]:
        ax.set_visible(False)
    unconverged_shown = False
    for ax, (opt, groups) in zip(axes, by_opt.items()):
        vals: list[np.ndarray] = []
        precond_used = raw_adam = False
        for (_, rows), c in zip(groups.items(), group_colors(len(groups))):
            r = rows[0]
            cv = curves.get(r["run_key"], {})
            precond = _has(curves, r["run_key"], "hessian/precond_lambda_max")
            s, v = clean_curve(cv.get("hessian/precond_lambda_max" if precond else "hessian/lambda_max"))
            if not s.size:
                continue
            label = group_label(r, with_model=multi, with_optimizer=False) + f" seed {r.get('seed')}"
            if r.get("status") not in (None, "finished"):
                label += f" ({r['status']})"
            ax.plot(s, v, color=c, lw=1.6, marker="o", ms=2.5, label=label)
            cs, cvals = clean_curve(cv.get("hessian/converged"))
            bad = set(cs[cvals < 0.5].tolist()) if cs.size else set()
            if bad and not precond:  # Lanczos did not reach its tolerance at these steps: hollow red rings
                m = np.isin(s, list(bad))
                ax.plot(
                    s[m],
                    v[m],
                    ls="",
                    marker="o",
                    ms=7,
                    mfc="none",
                    mec="red",
                    mew=1.2,
                    label="Lanczos not converged" if not unconverged_shown else None,
                )
                unconverged_shown = True
            vals.append(v)
            precond_used |= precond
            if opt in ADAM_FAMILY and not precond:
                raw_adam = True
                continue  # the Adam threshold does not apply to raw lambda_max
            ts, tv = clean_curve(cv.get("hessian/threshold"))
            if ts.size > 1 and np.ptp(tv) > 1e-9 * abs(tv).max():
                ax.plot(ts, tv, color=c, ls="--", lw=1.3, drawstyle="steps-post")
                vals.append(tv)
            elif tv.size or is_num(r.get("hessian/threshold")):
                t = float(tv[0]) if tv.size else float(r["hessian/threshold"])
                ax.axhline(t, color=c, ls="--", lw=1.3)
                vals.append(np.array([t]))
        allv = np.concatenate(vals) if vals else np.array([1.0])
        pos = allv[allv > 0]
        if pos.size and pos.max() / pos.min() > 30:
            ax.set_yscale("log")
        what = "preconditioned λ_max" if precond_used else "λ_max"
        ax.set_title(
            f"{opt}: {what}" + (" (no threshold: Adam's is for the preconditioned one)" if raw_adam else ""),
            fontsize=10.5 if raw_adam else None,
        )
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(f"sharpness {what} (log scale)" if ax.get_yscale() == "log" else f"sharpness {what}")
        handles, labels = ax.get_legend_handles_labels()
        if not raw_adam:
            handles.append(Line2D([], [], color="0.3", ls="--", lw=1.3))
            labels.append(
                "threshold (2+2β1)/((1−β1)η)" if precond_used else "threshold (2/η for GD, (2+2β)/η heavy ball)"
            )
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, fontsize=8.5)
    fig.suptitle("Edge of Stability: sharpness during training\nvs the stability threshold (dashed, same colour)")
    return fig


@styled
def spectral_density(
    runs: list[dict[str, Any]], densities: dict[str, dict[str, list[float]]], max_runs: int = 6
) -> Figure:
    """Figure 3: Hessian spectral density (SLQ, log density) at the final checkpoint of up to ``max_runs``
    runs, one per optimizer (its first finished base run, lowest seed). SLQ: Ghorbani, Krishnan, Xiao 2019."""
    by_key = {r["run_key"]: r for r in runs}
    usable = {}
    for k, d in (densities or {}).items():
        g, p = np.asarray(d.get("grid", []), float), np.asarray(d.get("density", []), float)
        if g.ndim == 1 and g.size > 1 and g.shape == p.shape and np.isfinite(p).any():
            usable[k] = (g, p)
    if not usable:
        raise SkipFigure("densities.json has no usable {grid, density} entries")
    cand = [by_key.get(k, {"run_key": k, "optimizer": "unknown run"}) for k in usable]
    cand.sort(
        key=lambda r: (
            r.get("status", "finished") != "finished",
            r.get("variant", "base") not in (None, "base"),
            r.get("seed") or 0,
            r.get("lr") or 0,
            r.get("batch_size") or 0,
        )
    )
    per_opt: dict[str, list[dict]] = {}
    seen_groups = set()
    for r in cand:  # one seed per group; optimizers' lists in order of preference
        if group_key(r) not in seen_groups:
            seen_groups.add(group_key(r))
            per_opt.setdefault(str(r.get("optimizer")), []).append(r)
    chosen: list[dict] = []
    for i in range(max(len(v) for v in per_opt.values())):  # round robin: every optimizer before a second group
        chosen += [v[i] for _, v in sorted(per_opt.items()) if i < len(v)]
    chosen = chosen[:max_runs]
    colors = optimizer_colors(sorted(per_opt))
    styles = ["-", "--", ":", "-."]
    used: dict[str, int] = {}
    fig = Figure(figsize=(9.5, 5.0), layout="constrained")
    ax = fig.subplots()
    # smoothed tails reach 1e-300: draw everything below 1e-7 x the highest peak on the bottom axis
    floor = max(float(np.nanmax(usable[r["run_key"]][1])) for r in chosen) * 1e-7
    for r in chosen:
        g, p = usable[r["run_key"]]
        opt = str(r.get("optimizer"))
        ls = styles[used.get(opt, 0) % len(styles)]
        used[opt] = used.get(opt, 0) + 1
        label = group_label(r) + (f" seed {r['seed']}" if r.get("seed") is not None else "")
        ax.plot(g, np.clip(np.nan_to_num(p, nan=floor), floor, None), color=colors[opt], ls=ls, lw=1.6, label=label)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("Hessian eigenvalue λ")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(
        f"Hessian spectral density at the final checkpoint (SLQ; {len(chosen)} of {len(usable)} runs, "
        "one seed per group)"
    )
    ax.legend(loc="upper right", frameon=True, framealpha=0.85)
    return fig


@styled
def summary_bars(runs: list[dict[str, Any]], metric: str = "test/acc") -> Figure:
    """Figure 6: final ``metric`` (test accuracy in % by default) per group, mean +- std over finished seeds,
    one bar per (optimizer, lr, batch, variant), coloured by optimizer; diverged runs are counted."""
    if not any(is_num(r.get(metric)) for r in runs):
        raise SkipFigure(f"no run has a final {metric}")
    scale = 100.0 if metric.endswith("/acc") else 1.0
    rows = sorted(
        summarize(runs, metric),
        key=lambda g: (str(g["optimizer"]), str(g["model"]), g["lr"] or 0, g["batch_size"] or 0, str(g["variant"])),
    )
    multi = several_models(runs)
    colors = optimizer_colors(sorted({str(g["optimizer"]) for g in rows}))
    fig = Figure(figsize=(10.5, 0.42 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]  # first group on top
    means = np.array([(g[f"{metric} mean"] or 0.0) * scale for g in rows])
    stds = np.array([(g[f"{metric} std"] or 0.0) * scale for g in rows])
    ax.barh(
        y,
        means,
        xerr=stds,
        color=[colors[str(g["optimizer"])] for g in rows],
        height=0.7,
        error_kw={"elinewidth": 1.2, "capsize": 3},
    )
    top = float(np.max(means + stds)) if len(rows) else 1.0
    xmax = 100.0 if scale == 100 else (top * 1.35 if top > 0 else 1.0)
    for yi, g, m, s in zip(y, rows, means, stds):
        bad = g["diverged"] + g["failed"]
        if g[f"{metric} mean"] is None:
            text = f"no finished run ({g['diverged']} diverged, {g['failed']} failed)"
        else:
            text = (f"{m:.1f} ± {s:.1f}" if scale == 100 else f"{fmt(m)} ± {fmt(s, 2)}") + f"  (n={g['finished']}"
            text += f", {bad} diverged/failed)" if bad else ")"
        if scale == 100 and m - s > 0.55 * xmax:  # room inside the bar, left of the error bar
            ax.text(
                m - s - xmax * 0.01, yi, text, va="center", ha="right", fontsize=9, color="white", fontweight="bold"
            )
        else:
            ax.text(m + s + xmax * 0.01, yi, text, va="center", ha="left", fontsize=9)
    ax.set_yticks(y, [group_label(g, with_model=multi) for g in rows])
    ax.set_xlim(0, xmax)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", visible=False)
    name = metric.replace("/acc", " accuracy").replace("/loss", " loss").replace("/", " ")
    ax.set_xlabel(f"{name}{' (%)' if scale == 100 else ''}, mean ± std over finished seeds")
    ax.set_title(f"Final {name} per optimizer group")
    return fig


# optimizers whose SDE time is step x lr^2 (adaptive: Malladi et al. 2022); the others step x lr
ADAPTIVE_SDE = ("adam", "adamw", "rmsprop", "rmsprop_bc", "svag_adam")


def _effective_lr(row: dict[str, Any]) -> float:
    """The per-step learning rate: SVAG's optimizers take ``lr`` and step with ``lr / l``."""
    import json

    hp = row.get("hparams")
    hp = json.loads(hp) if isinstance(hp, str) else (hp or {})
    lr = float(row.get("lr") or hp.get("lr") or float("nan"))
    return lr / float(hp.get("l", 1)) if str(row.get("optimizer")).startswith("svag") else lr


def sde_time(row: dict[str, Any], steps: np.ndarray) -> np.ndarray:
    """SDE time of ``steps`` for this run: ``t = k eta`` (SGD-type; Li, Malladi, Arora 2021) or
    ``t = k eta^2`` (Adam/RMSprop-type; Malladi, Lyu, Panigrahi, Arora 2022), eta the per-step lr."""
    eta = _effective_lr(row)
    return steps * (eta**2 if str(row.get("optimizer")) in ADAPTIVE_SDE else eta)


@styled
def scaling_rules(
    runs: list[dict[str, Any]], curves: Curves, *, loss: str = "train/loss", max_groups: int = 4
) -> Figure:
    """A base run and its scaling-rule / SVAG variants on one axis: train loss against epochs (steps x
    batch / the run's training examples) and against SDE time, so "the curves coincide" can be read
    off (linear and square-root rules keep epochs and SDE time; SVAG keeps SDE time)."""
    by_key = {r["run_key"]: r for r in runs}
    families: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("variant") not in (None, "base") and r.get("base_key") in by_key and _has(curves, r["run_key"], loss):
            families.setdefault(r["base_key"], []).append(r)
    families = {k: v for k, v in families.items() if _has(curves, k, loss)}
    if not families:
        raise SkipFigure(
            "no base run with a scaling-rule or SVAG variant and a train/loss curve "
            "(set sweep.variants, e.g. [{rule: linear, factor: 2}, {rule: svag, factor: 4}])"
        )
    keys = list(families)[:max_groups]
    fig = Figure(figsize=(12, 3.6 * len(keys) + 0.6), layout="constrained")
    axes = fig.subplots(len(keys), 2, squeeze=False)
    for (ax_e, ax_t), key in zip(axes, keys):
        members = [by_key[key], *families[key]]
        for r, c in zip(members, group_colors(len(members))):
            s, v = clean_curve(curves[r["run_key"]].get(loss))
            n = r.get("n_train")
            label = f"{r.get('variant')}: {r.get('optimizer')} lr={_effective_lr(r):.3g} B={r.get('batch_size')}"
            if is_num(n) and n:
                ax_e.plot(s * float(r["batch_size"]) / float(n), v, color=c, lw=1.5, label=label)
            ax_t.plot(sde_time(r, s), v, color=c, lw=1.5, label=label)
        base = by_key[key]
        for ax in (ax_e, ax_t):
            ax.set_yscale("log")
            ax.set_ylabel(f"{loss} (log scale)")
        ax_e.set_xlabel("epochs (steps × batch size / training examples)")
        ax_t.set_xlabel("SDE time (steps × η" + ("²" if str(base.get("optimizer")) in ADAPTIVE_SDE else "") + ")")
        ax_e.set_title(
            f"{base.get('optimizer')} lr={base.get('lr')} B={base.get('batch_size')} seed {base.get('seed')}"
        )
        ax_t.legend(fontsize=8)
    fig.suptitle(
        "Scaling rules and SVAG: a base run and its variants on one axis\n(the rule holds where the curves coincide)"
    )
    return fig
