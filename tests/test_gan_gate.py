"""The GAN predictor's quality gate (``sgdlab.generalization.gate``): criteria on hand-computed cases, and the
scores table that shows a failed gate instead of presenting the GAN's numbers as trustworthy."""

from __future__ import annotations

import math

import pytest

from sgdlab.generalization.gate import ERROR_GAP_MAX, FD_RATIO_MAX, gan_quality_gate
from sgdlab.report.tables import scores_table

META = {
    "frechet_synthetic_vs_val": 8.0,
    "frechet_train_vs_val": 2.0,
    "frechet_synthetic_vs_test": 8.5,
    "frechet_synthetic_vs_train": 9.0,
}


def _rows(gan, val):
    return [{"pred/gan": g, "pred/val": v} for g, v in zip(gan, val)]


def test_both_criteria_hold_then_pass_with_the_numbers():
    g = gan_quality_gate(META, _rows([0.20, 0.30], [0.18, 0.26]))
    assert g["verdict"] == "pass" and g["note"] == "" and g["reasons"] == []
    assert g["fd_ratio"] == pytest.approx(4.0)  # 8 / 2 <= 5
    assert g["mean_err_synthetic"] == pytest.approx(0.25) and g["mean_err_val"] == pytest.approx(0.22)
    assert g["err_gap"] == pytest.approx(0.03)  # <= 0.05
    assert (g["fd_synthetic_vs_test"], g["fd_synthetic_vs_train"]) == (8.5, 9.0)  # diagnostics, not gated
    assert (FD_RATIO_MAX, ERROR_GAP_MAX) == (5.0, 0.05)  # the stated criteria


def test_each_criterion_fails_on_its_own_and_says_by_how_much():
    far = {**META, "frechet_synthetic_vs_val": 250.0}  # the measured state of issue 14: ~100x the floor
    g = gan_quality_gate(far, _rows([0.20, 0.30], [0.18, 0.26]))
    assert g["verdict"] == "fail" and g["note"] == "not trustworthy at this sample quality"
    assert g["fd_ratio"] == pytest.approx(125.0)
    assert len(g["reasons"]) == 1 and "125.0x the real-data floor 2" in g["reasons"][0]
    # classifiers err more on the samples than on real held-out data (36% vs 24%): 12 pp > 5 pp
    g = gan_quality_gate(META, _rows([0.30, 0.42], [0.20, 0.28]))
    assert g["verdict"] == "fail" and g["err_gap"] == pytest.approx(0.12)
    assert "36.0% is 12.0 pp higher than on validation 24.0%" in g["reasons"][0]
    g = gan_quality_gate(META, _rows([0.10], [0.20]))  # too easy: lower
    assert g["verdict"] == "fail" and "10.0 pp lower" in g["reasons"][0]
    both = gan_quality_gate(far, _rows([0.10], [0.20]))
    assert len(both["reasons"]) == 2


def test_missing_numbers_are_unknown_never_pass():
    g = gan_quality_gate({"frechet_skipped": "held-out set has 1 example(s) of some class"}, _rows([0.2], [0.2]))
    assert g["verdict"] == "unknown" and g["note"] == "quality not measured"
    assert "held-out set has 1 example" in g["reasons"][0] and math.isnan(g["fd_ratio"])
    g = gan_quality_gate(META, _rows([float("nan")], [0.2]))  # no classifier with both predictions
    assert g["verdict"] == "unknown" and "error calibration" in g["reasons"][0]
    g = gan_quality_gate({**META, "frechet_synthetic_vs_val": 250.0}, [])  # a failure still shows as fail
    assert g["verdict"] == "fail"


def test_the_scores_table_marks_a_failed_gate_on_the_gan_row():
    scores = [
        {"predictor": "gan", "kind": "error", "target": "test_err", "mae": 0.12, "kendall_tau": 0.3, "psi": 0.1,
         "pgdl": 0.2, "gate": "fail", "gate_note": "not trustworthy at this sample quality",
         "gate_reasons": "FD 125x the floor"},
        {"predictor": "val", "kind": "error", "target": "test_err", "mae": 0.01, "kendall_tau": 0.9, "psi": 0.8,
         "pgdl": 0.5},
    ]  # fmt: skip
    t = scores_table(scores)
    assert t.columns[-1] == "quality gate"
    by_name = {row[0]: (row, cls) for row, cls in zip(t.rows, t.row_classes)}
    row, cls = by_name["gan"]
    assert row[-1] == "fail: not trustworthy at this sample quality (FD 125x the floor)" and cls == "warn"
    row, cls = by_name["val"]
    assert row[-1] == "–" and cls == ""
