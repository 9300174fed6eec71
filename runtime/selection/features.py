"""Per-candidate features for the learned selector (Entropy-Judger style), computed without any label.

The paper behind the idea ("When Does Multi-Agent Collaboration Help? An Entropy Perspective") found
peak entropy hurts, stable entropy helps and the first round decides most. Its public code fed the base
model's correctness in as a feature; nothing here knows whether an answer is right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core import entropy as E
from runtime.gates.types import TokenStream

FEATURE_NAMES: tuple[str, ...] = (
    "has_tokens",
    "ent_mean",
    "ent_max",
    "ent_std",
    "ent_q10",
    "ent_q50",
    "ent_q90",
    "ent_first_k",
    "ent_window_max",
    "ent_slope",
    "ent_peaks",
    "span_ent_mean",
    "surprisal_mean",
    "min_p",
    "first_round_mean",
    "first_round_max",
    "log_tokens",
    "log_words",
    "cluster_size",
    "cluster_share",
    "in_largest_cluster",
    # Relative to the other candidates of the same set: what a per-set argmax can actually use.
    "ent_mean_rel",
    "ent_max_rel",
)

_PARAMS = E.AggregationParams(q=0.5, window=5, d_min=0, level=1.0, first_k=8)


def token_stats(stream: TokenStream | None, span: tuple[int, int] | None = None) -> dict[str, float]:
    """Entropy statistics of one candidate's tokens (missing-mass variant); NaN-free zeros when absent."""
    if stream is None or len(stream) == 0:
        return {}
    per = E.token_signals(stream.top, stream.sampled, variants=("missing_mass", "surprisal", "one_minus_p"))
    h = per["missing_mass"][None, :]
    q = np.quantile(h[0], [0.1, 0.5, 0.9])
    span_params = E.AggregationParams(span=span)
    return {
        "ent_mean": float(h.mean()),
        "ent_max": float(h.max()),
        "ent_std": float(h.std()),
        "ent_q10": float(q[0]),
        "ent_q50": float(q[1]),
        "ent_q90": float(q[2]),
        "ent_first_k": float(E.aggregate_rows(h, "first_k", _PARAMS)[0]),
        "ent_window_max": float(E.aggregate_rows(h, "window_max", _PARAMS)[0]),
        "ent_slope": float(E.aggregate_rows(h, "slope", _PARAMS)[0]),
        "ent_peaks": float(E.aggregate_rows(h, "peaks", _PARAMS)[0]),
        "span_ent_mean": float(E.aggregate_rows(h, "span_mean", span_params)[0]),
        "surprisal_mean": float(per["surprisal"].mean()),
        "min_p": float(1.0 - per["one_minus_p"].max()),
    }


def candidate_features(
    answers: Sequence[str],
    streams: Sequence[TokenStream | None],
    first_rounds: Sequence[TokenStream | None],
    spans: Sequence[tuple[int, int] | None],
    clusters: Sequence[Sequence[int]],
) -> tuple[np.ndarray, list[float]]:
    """Feature matrix ``(n_candidates, len(FEATURE_NAMES))`` and each candidate's mean token entropy."""
    n = len(answers)
    cluster_of = {i: c for c in clusters for i in c}
    largest = len(clusters[0]) if clusters else 0
    rows: list[dict[str, float]] = []
    for i in range(n):
        stats = token_stats(streams[i], spans[i])
        first = token_stats(first_rounds[i]) or stats
        size = len(cluster_of.get(i, [i]))
        row = {name: 0.0 for name in FEATURE_NAMES}
        row.update(stats)
        row["has_tokens"] = 1.0 if stats else 0.0
        row["first_round_mean"] = first.get("ent_mean", 0.0)
        row["first_round_max"] = first.get("ent_max", 0.0)
        stream = streams[i]
        row["log_tokens"] = math.log1p(len(stream) if stream is not None else 0)
        row["log_words"] = math.log1p(len(answers[i].split()))
        row["cluster_size"] = float(size)
        row["cluster_share"] = size / n
        row["in_largest_cluster"] = 1.0 if size == largest else 0.0
        rows.append(row)
    mean_entropy = [r["ent_mean"] if r["has_tokens"] else math.nan for r in rows]
    with_tokens = [r for r in rows if r["has_tokens"]]
    if with_tokens:
        m_mean = float(np.mean([r["ent_mean"] for r in with_tokens]))
        m_max = float(np.mean([r["ent_max"] for r in with_tokens]))
        for r in with_tokens:
            r["ent_mean_rel"] = r["ent_mean"] - m_mean
            r["ent_max_rel"] = r["ent_max"] - m_max
    matrix = np.array([[r[name] for name in FEATURE_NAMES] for r in rows], dtype=np.float64)
    return matrix, mean_entropy
