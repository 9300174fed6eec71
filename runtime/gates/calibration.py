"""Threshold fitting from recorded outcomes. Pure functions over numpy arrays (scikit-learn for logistic).

Labels are "the action was needed" (1) vs not (0); scores are oriented so that higher = more uncertain,
and a gate fires on ``score > threshold``.
"""

from __future__ import annotations

import math

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks (``scipy.stats.rankdata``'s
    default). Written out because importing ``scipy.stats`` for this one function was 0.8 s of every
    sidecar start (a third of the import time of ``runtime.server``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    ordered = v[order]
    # Each run of equal values gets the mean of the positions it covers: (first + last) / 2, 1-based.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], v.size]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann–Whitney U, ties ½); NaN if one class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fire_rate_threshold(scores: np.ndarray, rate: float) -> float:
    """Threshold t such that about ``rate`` of ``scores`` are > t (the (1 − rate) quantile)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    # Index of the largest score that must NOT fire; everything above it fires.
    keep = math.ceil((1.0 - rate) * s.size) - 1
    if keep < 0:
        return float(np.nextafter(s[0], -np.inf))
    return float(s[min(keep, s.size - 1)])


def conformal_recall_threshold(positive_scores: np.ndarray, alpha: float) -> float | None:
    """Class-conditional LAC threshold: fire on ≥ 1 − α of future needed cases (exchangeable data).

    With the needed cases' scores sorted s₍₁₎ ≤ … ≤ s₍ₙ₎ and k = ⌊α(n + 1)⌋, a new needed case falls
    below s₍ₖ₎ with probability k/(n + 1) ≤ α, so t = the float just below s₍ₖ₎ misses at most α of them.
    Returns None when k = 0 (too few needed cases to promise 1 − α: need n ≥ 1/α − 1).
    """
    s = np.sort(np.asarray(positive_scores, dtype=np.float64))
    k = math.floor(alpha * (s.size + 1))
    if k < 1:
        return None
    return float(np.nextafter(s[k - 1], -np.inf))


def logistic_fit(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Fit P(needed | s) = σ(a + b·s) by (lightly regularised) maximum likelihood; returns (a, b)."""
    from sklearn.linear_model import LogisticRegression

    s = np.asarray(scores, dtype=np.float64)
    mu = float(s.mean())
    sd = float(s.std()) or 1.0
    model = LogisticRegression(C=100.0)
    model.fit(((s - mu) / sd)[:, None], np.asarray(labels, dtype=int))
    b_std = float(model.coef_[0, 0])
    a_std = float(model.intercept_[0])
    # Undo the standardisation: a + b·s = a_std + b_std·(s − μ)/σ.
    b = b_std / sd
    return a_std - b * mu, b


def logistic_threshold(a: float, b: float, cutoff: float) -> float | None:
    """The signal value where σ(a + b·s) = cutoff; None when b ≤ 0 (the signal does not predict need)."""
    if b <= 0 or not math.isfinite(b):
        return None
    return (math.log(cutoff / (1.0 - cutoff)) - a) / b
