"""The benchmark's outputs from its summary (pure, no I/O but the files asked for): the score table in
Markdown, the per-workload table as rows (Parquet), the performance-profile figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sgdlab.optbench import scoring


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    v = float(v)
    if math.isinf(v):
        return "not reached"
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}g}"


def _ci(ci: dict | None, digits: int = 3) -> str:
    if not ci:
        return "–"
    return f"{ci['mean']:.{digits}g} [{ci['lo']:.{digits}g}, {ci['hi']:.{digits}g}]"


def _hp(chosen: dict) -> str:
    hp = ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in sorted(chosen["hparams"].items()))
    return f"lr={chosen['lr']:.3g}" + (f"; {hp}" if hp else "")


def table_rows(summary: dict) -> list[dict[str, Any]]:
    """One row per (workload, optimizer): the numbers behind the Markdown table, for ``scores.parquet``."""
    rows = []
    for w, ws in summary["workloads"].items():
        for o in summary["optimizers"]:
            seeds = ws["seeds"].get(o, {})
            curv = ws["curvature"].get(o, {})
            rows.append(
                {
                    "workload": w,
                    "optimizer": o,
                    "target_metric": ws["target"]["metric"],
                    "target_value": ws["target"]["value"],
                    "steps_to_target": ws["times"][o]["steps"],
                    "wall_to_target_s": ws["times"][o]["wall"],
                    "study_steps": ws["study_times"][o]["steps"],
                    "ratio_steps": summary["steps"]["ratios"][o][w],
                    "trials": ws["trials"][o],
                    "trials_reached": ws["reached"][o],
                    "chosen_lr": ws["chosen"][o]["lr"],
                    "chosen_hparams": ws["chosen"][o]["hparams"],
                    "seeds_reached": seeds.get("reached"),
                    "seeds_n": len(seeds.get("seeds", [])),
                    "seed_steps_mean": (seeds.get("steps_ci") or {}).get("mean"),
                    "seed_steps_lo": (seeds.get("steps_ci") or {}).get("lo"),
                    "seed_steps_hi": (seeds.get("steps_ci") or {}).get("hi"),
                    "seed_final_mean": (seeds.get("final_ci") or {}).get("mean"),
                    "seed_final_lo": (seeds.get("final_ci") or {}).get("lo"),
                    "seed_final_hi": (seeds.get("final_ci") or {}).get("hi"),
                    "sharpness_kind": curv.get("kind"),
                    "sharpness_over_threshold_max": curv.get("max_ratio"),
                    "sharpness_over_threshold_last": curv.get("last_ratio"),
                }
            )
    return rows


def markdown(summary: dict) -> str:
    p = summary["protocol"]
    lines = [
        f"# {summary['title']} ({summary['scale']})",
        "",
        f"Protocol: {p['studies']} studies x {p['trials']} trials ({p['search']}) per optimizer and workload; a "
        "study's time is its fastest trial's, an optimizer's time the median over studies; the chosen setting "
        f"(fastest trial) re-run with {p['seeds']} fresh seeds; r_max = {p['r_max']:g}. Intervals: two-sided 95% "
        "Student t over seeds. Times are optimizer steps to the validation target (first evaluation at which it is "
        "reached); wall time = steps x the run's mean seconds per step.",
        "",
        "## Scores (performance-profile integral over [1, r_max], 1 = fastest everywhere)",
        "",
        "| optimizer | score (steps) | score (wall) |",
        "|---|---|---|",
    ]
    order = sorted(summary["optimizers"], key=lambda o: -summary["steps"]["score"][o])
    for o in order:
        lines.append(f"| {o} | {summary['steps']['score'][o]:.3f} | {summary['wall']['score'][o]:.3f} |")
    for w, ws in summary["workloads"].items():
        t = ws["target"]
        rel = "<=" if t["metric"].endswith("loss") else ">="
        lines += [
            "",
            f"## {w}: {ws['title']}",
            "",
            f"Target: {t['metric']} {rel} {t['value']:g}"
            + (f" ({t['note']})" if t.get("note") else "")
            + (f"; step budget {ws['budget_steps']}" if ws.get("budget_steps") else ""),
            "",
            "| optimizer | steps to target (median of studies) | per study | ratio | trials reached | chosen "
            "| seeds reached | seed steps to target, mean [95% CI] | seed final "
            f"{t['metric']} [95% CI] | sharpness / threshold: max, last |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for o in summary["optimizers"]:
            s = ws["seeds"].get(o, {})
            c = ws["curvature"].get(o, {})
            curv = f"{_num(c.get('max_ratio'))}, {_num(c.get('last_ratio'))} ({c['kind']})" if c.get("kind") else "–"
            lines.append(
                f"| {o} | {_num(ws['times'][o]['steps'])} | {', '.join(_num(v) for v in ws['study_times'][o]['steps'])}"
                f" | {_num(summary['steps']['ratios'][o][w])} | {ws['reached'][o]}/{ws['trials'][o]}"
                f" | {_hp(ws['chosen'][o])} | {s.get('reached', 0)}/{len(s.get('seeds', []))}"
                f" | {_ci(s.get('steps_ci'), 4)} | {_ci(s.get('final_ci'))} | {curv} |"
            )
    lines += [
        "",
        "Sharpness / threshold: the top Hessian eigenvalue over the optimizer's stability threshold along the seed "
        "runs (preconditioned sharpness against (2 + 2 beta1) / ((1 - beta1) eta) for Adam-type methods, "
        "lambda_max against 2/eta-type thresholds otherwise; Cohen et al. 2021, 2022); values near 1 mean the run "
        "trained at the edge of stability. '–': no threshold for the family.",
        "",
    ]
    return "\n".join(lines)


def figure(summary: dict, path: Path) -> Path:
    """Performance profiles (left) and steps to target per workload (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    r_max = summary["protocol"]["r_max"]
    opts = summary["optimizers"]
    workloads = list(summary["workloads"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    taus = np.linspace(1.0, r_max, 601)
    cmap = plt.get_cmap("tab10")
    for i, o in enumerate(opts):
        rho = scoring.profile(summary["steps"]["ratios"][o], taus)
        a.step(taus, rho, where="post", color=cmap(i % 10), lw=1.8, label=f"{o} ({summary['steps']['score'][o]:.2f})")
    a.set_xlim(1.0, r_max)
    a.set_ylim(-0.02, 1.02)
    a.set_xlabel("performance ratio tau (steps to target / fastest optimizer's)")
    a.set_ylabel("fraction of workloads with ratio <= tau")
    a.set_title("Performance profiles (legend: benchmark score)")
    a.legend(fontsize=8, loc="lower right")
    width = 0.8 / max(1, len(opts))
    finite = [
        summary["workloads"][w]["times"][o]["steps"]
        for w in workloads
        for o in opts
        if math.isfinite(summary["workloads"][w]["times"][o]["steps"])
    ]
    fallback = max(finite) * 1.6 if finite else 1.0  # summaries written before budgets were recorded
    budgets = [summary["workloads"][w].get("budget_steps") or fallback for w in workloads]
    for j, budget in enumerate(budgets):  # a not-reached bar stands at its workload's step budget
        b.hlines(budget, j - 0.45, j + 0.45, colors="0.3", linestyles="--", lw=1)
    for i, o in enumerate(opts):
        xs = np.arange(len(workloads)) + (i - (len(opts) - 1) / 2) * width
        ys = [summary["workloads"][w]["times"][o]["steps"] for w in workloads]
        shown = [y if math.isfinite(y) else budgets[j] for j, y in enumerate(ys)]
        bars = b.bar(xs, shown, width=width, color=cmap(i % 10), label=o)
        for bar, y in zip(bars, ys):
            if not math.isfinite(y):
                bar.set_hatch("//")
                bar.set_alpha(0.35)
    b.set_xticks(np.arange(len(workloads)), workloads, fontsize=8)
    b.set_ylim(0, max(budgets) * 1.3)  # linear from 0: bar heights compare as step counts; room for the legend
    b.legend(fontsize=7, ncol=4, loc="upper center")
    b.set_ylabel("steps to validation target (median over studies)")
    b.set_xlabel("workload (dashed: step budget; hatched: target not reached within it)")
    b.set_title("Steps to target")
    fig.suptitle(f"{summary['title']} ({summary['scale']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
