"""The GAN predictor's quality gate: is the synthetic set good enough for its predictions to mean anything?

Zhang, Gupta, Saunshi, Arora (ICLR 2022) predict a classifier's test error by its error on GAN samples; that
only works when the samples are close to the data distribution. The gate states two criteria, fixed here
before any study runs (not tuned to a result), and the predict phase applies them to every study:

1. **Sample quality**: the class-conditional Frechet distance of the synthetic set to held-out (validation)
   data, over the real-data floor (the same distance from training images to the same held-out data), must
   be at most :data:`FD_RATIO_MAX`. Real data against real data sits at ratio 1.
2. **Error calibration**: over the population of classifiers, the mean error on the synthetic set must be
   within :data:`ERROR_GAP_MAX` (absolute, i.e. 5 percentage points) of the mean error on the validation
   part: a synthetic set that is much easier or much harder than real held-out data biases every prediction.

Verdicts: ``pass`` (both hold), ``fail`` (either does not; the reasons name which and by how much), or
``unknown`` (a number is missing, e.g. ``gan.frechet_steps: 0`` or too few classifiers): the GAN
predictor's scores are then shown as *not trustworthy at this sample quality* (fail) or *quality not
measured* (unknown), never as if they were trustworthy. Diagnostics reported beside the verdict, not gated:
FD(synthetic, test) and FD(synthetic, train), the paper's explanation of why GAN samples predict test
rather than training error (they are closer to unseen data than to the training set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

FD_RATIO_MAX = 5.0
ERROR_GAP_MAX = 0.05

CRITERIA = (
    f"FD(synthetic, val) / FD(train, val) <= {FD_RATIO_MAX:g} and |mean error on synthetic - mean error on "
    f"validation| <= {ERROR_GAP_MAX * 100:g} pp over the classifiers"
)
NOTES = {
    "pass": "",
    "fail": "not trustworthy at this sample quality",
    "unknown": "quality not measured",
}


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def gan_quality_gate(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The gate (module docstring) from the gan phase's ``gan.json`` (``frechet_*``) and the predict rows
    (``pred/gan``, ``pred/val`` per classifier). Returns the verdict, the note to show, the numbers and one
    reason per criterion that failed or could not be evaluated."""
    fd_syn, floor = _num(meta.get("frechet_synthetic_vs_val")), _num(meta.get("frechet_train_vs_val"))
    pairs = [(_num(r.get("pred/gan")), _num(r.get("pred/val"))) for r in rows]
    pairs = [(g, v) for g, v in pairs if math.isfinite(g) and math.isfinite(v)]
    out: dict[str, Any] = {
        "criteria": CRITERIA,
        "fd_synthetic_vs_val": fd_syn,
        "fd_train_vs_val": floor,
        "fd_ratio": fd_syn / floor if math.isfinite(fd_syn) and math.isfinite(floor) and floor > 0 else math.nan,
        "fd_synthetic_vs_test": _num(meta.get("frechet_synthetic_vs_test")),
        "fd_synthetic_vs_train": _num(meta.get("frechet_synthetic_vs_train")),
        "n_models": len(pairs),
        "mean_err_synthetic": sum(g for g, _ in pairs) / len(pairs) if pairs else math.nan,
        "mean_err_val": sum(v for _, v in pairs) / len(pairs) if pairs else math.nan,
    }
    out["err_gap"] = out["mean_err_synthetic"] - out["mean_err_val"]
    reasons, unknown = [], []
    if math.isfinite(out["fd_ratio"]):
        if out["fd_ratio"] > FD_RATIO_MAX:
            reasons.append(
                f"FD(synthetic, val) = {fd_syn:.3g} is {out['fd_ratio']:.1f}x the real-data floor {floor:.3g} "
                f"(gate: <= {FD_RATIO_MAX:g}x)"
            )
    else:
        why = meta.get("frechet_skipped") or "no Frechet distance in gan.json (gan.frechet_steps: 0?)"
        unknown.append(f"sample quality: {why}")
    if math.isfinite(out["err_gap"]):
        if abs(out["err_gap"]) > ERROR_GAP_MAX:
            side = "higher" if out["err_gap"] > 0 else "lower"
            reasons.append(
                f"mean error on synthetic {out['mean_err_synthetic'] * 100:.1f}% is {abs(out['err_gap']) * 100:.1f} pp "
                f"{side} than on validation {out['mean_err_val'] * 100:.1f}% (gate: <= {ERROR_GAP_MAX * 100:g} pp)"
            )
    else:
        unknown.append("error calibration: no classifier has both a GAN and a validation prediction")
    out["verdict"] = "fail" if reasons else ("unknown" if unknown else "pass")
    out["reasons"] = reasons + unknown
    out["note"] = NOTES[out["verdict"]]
    return out
