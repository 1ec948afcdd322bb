"""Scores of a generalization predictor over a population of trained models (numpy only).

- ``mae``: mean absolute error of predicted vs true test error.
- ``kendall_tau``: signed Kendall rank correlation (tau-b as ``scipy.stats.kendalltau``, or tau-a).
- ``granulated_kendall``: Jiang, Neyshabur, Mobahi, Krishnan, Bengio, "Fantastic Generalization
  Measures and Where to Find Them", ICLR 2020, Sec. 5.
- ``pgdl_score``: conditional mutual information score of the NeurIPS 2020 competition
  "Predicting Generalization in Deep Learning" (Jiang et al. 2020, arXiv:2012.07976), from
  Fantastic Sec. 6.

All take a 1-D ``measure`` (or prediction) and a 1-D target (true test error or generalization
gap) with one entry per model; hyper-parameters come as ``{name: values}`` with one value per
model (any hashable values).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

__all__ = ["granulated_kendall", "kendall_tau", "mae", "pgdl_conditional_mi", "pgdl_score", "pgdl_score_pair_weighted"]


def _vec(name: str, a, n: int | None = None) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries, expected {n}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or inf")
    return v


def _hparams(hparams: Mapping[str, object], n: int) -> dict[str, np.ndarray]:
    """Validate and encode each hyper-parameter as integer codes ``(n,)``."""
    if not isinstance(hparams, Mapping) or len(hparams) == 0:
        raise ValueError("hparams must be a non-empty {name: values} mapping")
    codes = {}
    for name, values in hparams.items():
        vals = list(values)
        if len(vals) != n:
            raise ValueError(f"hparams[{name!r}] has {len(vals)} values, expected {n} (one per model)")
        _, codes[name] = np.unique(np.array([repr(v) for v in vals]), return_inverse=True)
    return codes


def mae(pred, true) -> float:
    """Mean absolute error ``mean |pred - true|``."""
    p = _vec("pred", pred)
    t = _vec("true", true, p.shape[0])
    if p.shape[0] == 0:
        raise ValueError("pred is empty")
    return float(np.abs(p - t).mean())


def kendall_tau(pred, true, variant: str = "b") -> float:
    """Signed Kendall tau between two rankings, O(n^2) pairwise.

    ``S = sum_{i<j} sign(p_i - p_j) sign(t_i - t_j)``; tau-a ``= S / (n(n-1)/2)`` (the form written
    in Fantastic Generalization Measures); tau-b ``= S / sqrt(n_p n_t)`` with ``n_p``, ``n_t`` the
    numbers of pairs untied in ``pred`` and in ``true`` (``scipy.stats.kendalltau``'s default).
    They agree when there are no ties. tau-b of a constant input is ``nan``.
    """
    if variant not in ("a", "b"):
        raise ValueError(f"variant={variant!r}: allowed 'a', 'b'")
    p = _vec("pred", pred)
    t = _vec("true", true, p.shape[0])
    n = p.shape[0]
    if n < 2:
        raise ValueError(f"kendall_tau needs >= 2 models, got {n}")
    i, j = np.triu_indices(n, k=1)
    sp, st = np.sign(p[i] - p[j]), np.sign(t[i] - t[j])
    s = float((sp * st).sum())
    if variant == "a":
        return s / (n * (n - 1) / 2)
    denom = np.sqrt(float(np.count_nonzero(sp)) * float(np.count_nonzero(st)))
    return s / denom if denom > 0 else float("nan")


def granulated_kendall(
    measure, gap, hparams: Mapping[str, object], variant: str = "a"
) -> tuple[float, dict[str, float]]:
    """Granulated Kendall coefficient Psi (Jiang et al. 2020, Fantastic..., Eq. 4).

    For each hyper-parameter axis i, models are grouped by the values of all *other* axes; within
    each group (only axis i varies, plus any repeated seeds) ``tau(measure, gap)`` is computed,
    and ``psi_i`` is its mean over groups. ``Psi = mean_i psi_i``.

    Groups with fewer than 2 models, and groups where tau is undefined (tau-b of a constant),
    are left out of the mean; an axis with no usable group gets ``psi_i = nan`` and is left out
    of ``Psi`` (``nan`` if no axis is usable).

    Returns:
        ``(Psi, {axis: psi_i})``.
    """
    m = _vec("measure", measure)
    g = _vec("gap", gap, m.shape[0])
    codes = _hparams(hparams, m.shape[0])
    per_axis: dict[str, float] = {}
    for axis in codes:
        others = [codes[h] for h in codes if h != axis]
        keys = np.stack(others, axis=1) if others else np.zeros((m.shape[0], 1), dtype=np.int64)
        _, group = np.unique(keys, axis=0, return_inverse=True)
        taus = []
        for gid in np.unique(group):
            sel = group.reshape(-1) == gid
            if sel.sum() < 2:
                continue
            tau = kendall_tau(m[sel], g[sel], variant=variant)
            if np.isfinite(tau):
                taus.append(tau)
        per_axis[axis] = float(np.mean(taus)) if taus else float("nan")
    usable = [v for v in per_axis.values() if np.isfinite(v)]
    return (float(np.mean(usable)) if usable else float("nan")), per_axis


def _entropy(counts: np.ndarray) -> np.ndarray:
    """Entropy in bits of each row of non-negative counts ``(U, k)`` -> ``(U,)``."""
    tot = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, tot, out=np.zeros_like(counts, dtype=np.float64), where=tot > 0)
    logp = np.log2(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=1)


def pgdl_conditional_mi(
    measure,
    gap,
    hparams: Mapping[str, object],
    include_self_pairs: bool = True,
    weighting: str = "uniform",
) -> dict[tuple[str, ...], float]:
    """Normalised conditional mutual information ``I(V_m; V_g | U_S) / H(V_g | U_S)`` per
    conditioning set S (see ``pgdl_score`` for the definition); ``nan`` where ``H = 0``.

    ``weighting="uniform"`` (the organisers'): per-cell MI and entropy averaged uniformly over all
    ``|Theta_S|^2`` cells, empty cells adding 0; ``"pairs"``: weighted by each cell's share of pairs."""
    if weighting not in ("uniform", "pairs"):
        raise ValueError(f"weighting={weighting!r}: allowed 'uniform', 'pairs'")
    m = _vec("measure", measure)
    g = _vec("gap", gap, m.shape[0])
    codes = _hparams(hparams, m.shape[0])
    n = m.shape[0]
    if n < 2:
        raise ValueError(f"pgdl_score needs >= 2 models, got {n}")
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = np.ones((n, n), bool) if include_self_pairs else ~np.eye(n, dtype=bool)
    i, j = i[keep], j[keep]  # ordered model pairs
    v_g = (g[i] > g[j]).astype(np.int64)  # 1 = '+gap'; ties count as '-' (as the organisers)
    v_m = (m[i] > m[j]).astype(np.int64)
    names = list(codes)
    sets = list(itertools.combinations(names, 2)) if len(names) >= 2 else [tuple(names)]
    out = {}
    for s in sets:
        cell = np.zeros(i.shape[0], dtype=np.int64)  # U_S = (theta_S of model i, of model j)
        for h in s:
            k = int(codes[h].max()) + 1
            cell = (cell * k + codes[h][i]) * k + codes[h][j]
        _, cell = np.unique(cell, return_inverse=True)
        tab = np.zeros((int(cell.max()) + 1, 4))
        np.add.at(tab, (cell, 2 * v_g + v_m), 1.0)  # (U, 4): counts of (V_g, V_m) per cell
        p_u = tab.sum(axis=1) / tab.sum()
        joint = tab.reshape(-1, 2, 2)  # (U, V_g, V_m)
        h_g = _entropy(joint.sum(axis=2))
        h_m = _entropy(joint.sum(axis=1))
        h_gm = _entropy(tab)
        mi = h_g + h_m - h_gm  # I(V_m; V_g | U = u) per cell
        # uniform: mean over the |Theta_S|^2 cells with empty cells adding 0 to both averages, so the
        # ratio of the averages is the ratio of the sums over the non-empty cells
        w = p_u if weighting == "pairs" else np.ones_like(p_u)
        denom = float((w * h_g).sum())
        out[s] = float((w * mi).sum() / denom) if denom > 0 else float("nan")
    return out


def pgdl_score(measure, gap, hparams: Mapping[str, object]) -> float:
    """PGDL competition score (NeurIPS 2020; Jiang et al., Fantastic..., Sec. 6), in [0, 100], as the
    organisers' ``scoring_program/mutual_information.py`` computes it, so it is comparable with the
    leaderboard (the winner scored 22.92 as the mean of 4 final tasks).

    Over *all* ordered pairs of models ``(a, b)``, self-pairs ``a == b`` included:
    ``V_g = [gap_a > gap_b]``, ``V_m = [measure_a > measure_b]`` (ties count as "not greater").
    For a conditioning set S of two hyper-parameters, a cell is ``U_S = (theta_S(a), theta_S(b))``.
    Per cell, the mutual information ``I(V_m; V_g | U_S = u)`` and the entropy ``H(V_g | U_S = u)``;
    both are averaged uniformly over all ``|Theta_S|^2`` cells (empty cells add 0); the score is
    ``100 * min_S mean_u I / mean_u H`` over pairs S of distinct hyper-parameters (with one
    hyper-parameter, S is that one). Sets where the gap never changes order carry no information and
    are skipped; all skipped -> nan.

    The self-pairs always land in the "-gap, -measure" corner, which makes the score notice the
    direction of a measure: a measure that ranks models exactly backwards scores less than one that
    ranks them right (without them, mutual information is sign-blind). Report the signed
    ``kendall_tau`` beside it anyway. ``gap`` is the generalization gap ``train_acc - test_acc``
    (= ``test_err - train_err``) on each model's own training data.
    """
    return _min_score(pgdl_conditional_mi(measure, gap, hparams, include_self_pairs=True, weighting="uniform"))


def pgdl_score_pair_weighted(measure, gap, hparams: Mapping[str, object]) -> float:
    """A variant of :func:`pgdl_score` (not the competition's number): self-pairs dropped and cells
    weighted by their share of pairs, ``sum_u p(u) I_u / sum_u p(u) H_u``. It coincides with the
    official score only on complete grids with equal replicates *and* self-pairs; without self-pairs
    it is exactly blind to the sign of the measure."""
    return _min_score(pgdl_conditional_mi(measure, gap, hparams, include_self_pairs=False, weighting="pairs"))


def _min_score(per_set: dict[tuple[str, ...], float]) -> float:
    vals = [v for v in per_set.values() if np.isfinite(v)]
    return 100.0 * min(vals) if vals else float("nan")
