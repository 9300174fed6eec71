"""Entropy math shared by the memory router, the guard memory, the gates and answer selection.

Pure numpy, no imports of ours. Every entropy here is in nats unless a name says otherwise.

Three layers:

* distributions — :func:`entropy` (:func:`row_entropies` for many at once), :func:`normalized_entropy`,
  :func:`softmax`;
* per token, from the top-k logprobs an LLM API returns — one value per generated token, vectorised
  over a padded ``(n_tokens, k)`` matrix of natural-log probabilities sorted in descending order
  (``-inf`` pads rows with fewer than k alternatives; a row of only ``-inf`` is a token the client sent
  without alternatives); see :data:`TOKEN_VARIANTS`;
* over a span of tokens — :func:`aggregate` turns a per-token series into one number; see
  :data:`AGGREGATIONS`. :func:`span_signals` computes every (variant, aggregation) pair at once.

Every per-token variant is oriented so that *higher means more uncertain*, so a gate always fires on
``score > threshold``. Thresholds do not transfer between variants (a renormalised top-20 entropy is
bounded by ln 20 ≈ 3.0 nats, a full-vocabulary entropy is not; EAD publishes bits), so a threshold is
only meaningful next to its variant, its k and its aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ArrayLike = Sequence[float] | np.ndarray

LN2 = math.log(2.0)

#: Per-token uncertainty variants, each "higher = more uncertain":
#:   renorm        entropy of the top-k probabilities renormalised to sum to 1 (≤ ln k)
#:   missing_mass  entropy of the top-k plus one extra bucket holding the missing mass 1 − Σp
#:   epr           raw −Σ p ln p over the top-k, not renormalised (artefactual's "EPR")
#:   full          full-vocabulary entropy computed by the client (vLLM, llama.cpp); absent otherwise
#:   surprisal     −ln p(sampled token)
#:   one_minus_p   1 − p(sampled token); its max over a span is FLARE's rule (fire when any p < θ)
#:   margin        1 − (p₁ − p₂), one minus the top-1/top-2 probability margin
#:
#: A token without alternatives (its row all −inf) has no distribution to take an entropy of. Its
#: ``missing_mass`` and ``epr`` are then its surprisal −ln p: for a sampled token E[−ln p(x)] = H, so the
#: surprisal is an unbiased one-sample estimate of the entropy (the sampled token as the only alternative
#: made both near 0 for p → 1 *and* p → 0, so a very unlikely token read as confident). ``renorm`` is 0
#: there (one known outcome renormalises to certainty: it carries no information for such tokens), and
#: ``margin`` takes p₁ = p(sampled), p₂ = 0.
TOKEN_VARIANTS: tuple[str, ...] = (
    "renorm",
    "missing_mass",
    "epr",
    "full",
    "surprisal",
    "one_minus_p",
    "margin",
)

#: Span aggregations of a per-token series (see :func:`aggregate` for each formula).
AGGREGATIONS: tuple[str, ...] = (
    "mean",
    "max",
    "min",
    "std",
    "quantile",
    "window_max",
    "peaks",
    "slope",
    "first_k",
    "span_mean",
    "sum",
)


# --------------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------------


def entropy(p: ArrayLike) -> float:
    """Shannon entropy −Σ p ln p of a distribution (renormalised if it does not sum to 1; zeros ignored)."""
    arr = np.asarray(p, dtype=np.float64)
    total = float(arr.sum())
    if arr.size == 0 or total <= 0.0:
        return 0.0
    arr = arr[arr > 0] / total
    return float(-(arr * np.log(arr)).sum())


def row_entropies(rows: np.ndarray) -> np.ndarray:
    """:func:`entropy` of every row of a 2-D array of distributions at once (zeros ignored, each row
    renormalised; an all-zero row has entropy 0)."""
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"row_entropies expects a 2-D array, got shape {arr.shape}")
    totals = arr.sum(axis=1, keepdims=True)
    norm = np.divide(arr, totals, out=np.zeros_like(arr), where=totals > 0)
    logs = np.log(norm, out=np.zeros_like(norm), where=norm > 0)
    return np.asarray(-(norm * logs).sum(axis=1))


def normalized_entropy(p: ArrayLike) -> float:
    """Entropy divided by ln N, in [0, 1]; 0 for N ≤ 1 (one outcome is never uncertain).

    MemGAS's public code skips this and uses raw nats in ``1 − H``, which flips sign once H > 1 nat.
    """
    n = len(p)
    if n <= 1:
        return 0.0
    return min(1.0, max(0.0, entropy(p) / math.log(n)))


def softmax(scores: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax(scores / temperature)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    arr = np.asarray(scores, dtype=np.float64) / temperature
    if arr.size == 0:
        return arr
    arr = arr - arr.max()
    exp = np.exp(arr)
    return exp / exp.sum()


def discrete_entropy(counts: ArrayLike) -> float:
    """Entropy of the empirical distribution given by counts (e.g. cluster sizes → semantic entropy)."""
    return entropy(counts)


def nats_to_bits(x: float) -> float:
    """Convert nats to bits (EAD publishes its thresholds in bits)."""
    return x / LN2


def bits_to_nats(x: float) -> float:
    """Convert bits to nats."""
    return x * LN2


# --------------------------------------------------------------------------------------------------
# Per token
# --------------------------------------------------------------------------------------------------


def pad_top_logprobs(rows: Sequence[Sequence[float]], k: int | None = None) -> np.ndarray:
    """Stack ragged top-k logprob lists into an ``(n, k)`` matrix sorted descending, padded with −inf.

    ``k`` truncates to the k most likely alternatives (None: the longest row). Values are not validated
    here; callers reject NaN/inf first so they can name the offending field.
    """
    n = len(rows)
    width = max((len(r) for r in rows), default=0)
    if k is not None:
        width = min(width, k) if width else 0
    out = np.full((n, max(width, 1)), -np.inf)
    for i, row in enumerate(rows):
        if len(row):
            vals = np.sort(np.asarray(row, dtype=np.float64))[::-1][: out.shape[1]]
            out[i, : len(vals)] = vals
    return out


def truncate_top_k(top_logprobs: np.ndarray, k: int | None) -> np.ndarray:
    """Keep the first ``k`` columns of a descending-sorted matrix (no copy when nothing is cut)."""
    if k is None or k <= 0 or k >= top_logprobs.shape[1]:
        return top_logprobs
    return top_logprobs[:, :k]


def _probs(top_logprobs: np.ndarray) -> np.ndarray:
    # Clamp at 0: APIs round, and a logprob of +1e-7 must not become p > 1.
    return np.exp(np.minimum(top_logprobs, 0.0))


def _plogp(p: np.ndarray) -> np.ndarray:
    """Elementwise −p ln p with 0 at p = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -p * np.log(p)
    return np.where(p > 0, out, 0.0)


def renormalized_topk_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """Per token, entropy of the top-k probabilities renormalised to 1. Uniform top-k → ln k; one-hot → 0."""
    p = _probs(top_logprobs)
    total = p.sum(axis=1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    return _plogp(q).sum(axis=1)


def missing_mass_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """Per token, entropy of the top-k plus one bucket for the missing mass m = max(0, 1 − Σp).

    The bucket lumps the unseen tail into one outcome, so this is a lower bound of the true entropy
    that corrects most of what renormalising throws away (a flat top-20 covering 30% of the mass is far
    more uncertain than its renormalised ln 20 suggests).
    """
    p = _probs(top_logprobs)
    m = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    return _plogp(p).sum(axis=1) + _plogp(m)


def epr(top_logprobs: np.ndarray) -> np.ndarray:
    """Per token, raw −Σ p ln p over the top-k, not renormalised (artefactual's entropy-production rate)."""
    return _plogp(_probs(top_logprobs)).sum(axis=1)


def sampled_probability(logprobs: ArrayLike) -> np.ndarray:
    """Per token, probability of the sampled token, exp(logprob) clamped to [0, 1]."""
    return np.exp(np.minimum(np.asarray(logprobs, dtype=np.float64), 0.0))


def top_margin(top_logprobs: np.ndarray) -> np.ndarray:
    """Per token, p₁ − p₂ of the two most likely alternatives (p₁ when only one is known)."""
    p = _probs(top_logprobs)
    if p.shape[1] < 2:
        return p[:, 0].copy() if p.shape[1] else np.zeros(p.shape[0])
    return p[:, 0] - p[:, 1]


def token_signals(
    top_logprobs: np.ndarray,
    sampled_logprobs: ArrayLike,
    full_entropy: ArrayLike | None = None,
    *,
    k: int | None = None,
    variants: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every per-token variant (see :data:`TOKEN_VARIANTS`) as a mapping name → array of shape (n,).

    ``full`` is present only when ``full_entropy`` is given with no NaN. ``k`` truncates the top-k first.
    ``variants`` restricts the computation to those names (unknown names raise ValueError). A row of only
    −inf (a token without alternatives) is scored as described under :data:`TOKEN_VARIANTS`.
    """
    wanted = TOKEN_VARIANTS if variants is None else tuple(variants)
    unknown = [v for v in wanted if v not in TOKEN_VARIANTS]
    if unknown:
        raise ValueError(f"unknown token variant(s) {unknown}; choose from {list(TOKEN_VARIANTS)}")
    top = truncate_top_k(np.asarray(top_logprobs, dtype=np.float64), k)
    sampled = np.asarray(sampled_logprobs, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    need_p = {"renorm", "missing_mass", "epr", "margin"} & set(wanted)
    p = np.zeros((0, 0))
    surprisal = -np.minimum(sampled, 0.0)
    # Tokens sent without alternatives: sorted descending, so an unknown first entry means an empty row.
    bare = ~np.isfinite(top[:, 0]) if top.shape[1] else np.ones(sampled.shape[0], dtype=bool)
    if need_p:
        # One exp for everything; −p ln p straight from the logprobs (no log call). −inf pads become
        # −1000, whose exp is exactly 0, so padding contributes 0 instead of 0·∞ = NaN.
        logp = np.clip(top, -1000.0, 0.0)
        p = np.exp(logp)
        raw = -(p * logp).sum(axis=1)
        if "epr" in wanted:
            out["epr"] = np.where(bare, surprisal, raw)
        if "missing_mass" in wanted or "renorm" in wanted:
            total = p.sum(axis=1)
        if "missing_mass" in wanted:
            out["missing_mass"] = np.where(bare, surprisal, raw + _plogp(np.clip(1.0 - total, 0.0, 1.0)))
        if "renorm" in wanted:
            # H(p/S) = (−Σ p ln p)/S + ln S  for S = Σp.
            safe = np.where(total > 0, total, 1.0)
            out["renorm"] = np.maximum(np.where(total > 0, raw / safe + np.log(safe), 0.0), 0.0)
    if "full" in wanted and full_entropy is not None:
        full = np.asarray(full_entropy, dtype=np.float64)
        if full.size == sampled.size and not np.isnan(full).any():
            out["full"] = full
    if "surprisal" in wanted:
        out["surprisal"] = surprisal
    if "one_minus_p" in wanted:
        out["one_minus_p"] = 1.0 - sampled_probability(sampled)
    if "margin" in wanted:
        p1 = np.where(bare, sampled_probability(sampled), p[:, 0])
        out["margin"] = 1.0 - (p1 - p[:, 1] if p.shape[1] > 1 else p1)
    return out


# --------------------------------------------------------------------------------------------------
# Span aggregation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregationParams:
    """Parameters of the span aggregations; each is used only by the aggregation named beside it."""

    #: ``quantile``: which quantile, in [0, 1].
    q: float = 0.9
    #: ``window_max``: rolling-window length w (EAD uses 5).
    window: int = 5
    #: ``window_max``: windows ending before this many tokens are ignored (EAD's d_min).
    d_min: int = 0
    #: ``peaks``: level a run of tokens must exceed to count as one peak.
    level: float = 1.0
    #: ``first_k``: how many leading tokens are averaged.
    first_k: int = 8
    #: ``span_mean``: [start, end) token indices of the answer span; None = the whole span.
    span: tuple[int, int] | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter."""
        if not 0.0 <= self.q <= 1.0 or math.isnan(self.q):
            raise ValueError(f"q must be in [0, 1], got {self.q}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.d_min < 0:
            raise ValueError(f"d_min must be >= 0, got {self.d_min}")
        if self.first_k < 1:
            raise ValueError(f"first_k must be >= 1, got {self.first_k}")
        if not math.isfinite(self.level):
            raise ValueError(f"level must be finite, got {self.level}")
        if self.span is not None and not (0 <= self.span[0] <= self.span[1]):
            raise ValueError(f"span must satisfy 0 <= start <= end, got {self.span}")


DEFAULT_PARAMS = AggregationParams()


def rolling_mean(values: ArrayLike, window: int) -> np.ndarray:
    """Means of every full window of length ``window`` (length n − w + 1; one partial window if n < w)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        return _rolling_mean_2d(x[None, :], window)[0]
    return _rolling_mean_2d(x, window)


def _rolling_mean_2d(x: np.ndarray, window: int) -> np.ndarray:
    n = x.shape[1]
    if n == 0:
        return np.zeros((x.shape[0], 0))
    if n < window:
        return x.mean(axis=1, keepdims=True)
    c = np.cumsum(x, axis=1)
    out = np.empty((x.shape[0], n - window + 1))
    out[:, 0] = c[:, window - 1]
    np.subtract(c[:, window:], c[:, :-window], out=out[:, 1:])
    out /= window
    return out


def _quantile_rows(x: np.ndarray, q: float) -> np.ndarray:
    """np.quantile(x, q, axis=1) (linear interpolation) via one partial sort: several times faster."""
    n = x.shape[1]
    h = q * (n - 1)
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    part = np.partition(x, [lo, hi], axis=1)
    return part[:, lo] + (h - lo) * (part[:, hi] - part[:, lo])


def aggregate(values: ArrayLike, how: str, params: AggregationParams = DEFAULT_PARAMS) -> float:
    """Aggregate a per-token series into one number.

    ``mean``, ``max``, ``min``, ``std`` (population), ``sum``; ``quantile`` (linear, at ``q``);
    ``window_max`` — max over rolling means of ``window`` tokens, counting only windows that end at or
    after token ``d_min`` (Entropy-Adaptive Decoding switches on it; ARES's high-window-entropy tokens);
    0 when fewer than ``d_min`` tokens exist; ``peaks`` — number of maximal runs of tokens above
    ``level``; ``slope`` — least-squares slope per token (positive: uncertainty grows along the span);
    ``first_k`` — mean of the first ``first_k`` tokens; ``span_mean`` — mean over ``span``.
    An empty series aggregates to 0.
    """
    x = np.asarray(values, dtype=np.float64)
    return float(aggregate_rows(x[None, :], how, params)[0])


def aggregate_rows(x: np.ndarray, how: str, params: AggregationParams = DEFAULT_PARAMS) -> np.ndarray:
    """:func:`aggregate` applied to each row of a ``(V, n)`` matrix at once; returns shape (V,)."""
    v, n = x.shape
    if n == 0:
        return np.zeros(v)
    if how == "mean":
        return x.mean(axis=1)
    if how == "max":
        return x.max(axis=1)
    if how == "min":
        return x.min(axis=1)
    if how == "std":
        return x.std(axis=1)
    if how == "sum":
        return x.sum(axis=1)
    if how == "quantile":
        return _quantile_rows(x, params.q)
    if how == "window_max":
        means = _rolling_mean_2d(x, params.window)
        # Window j ends after j + w tokens; only windows with j + w >= d_min count.
        first = max(0, params.d_min - min(params.window, n))
        if first >= means.shape[1]:
            return np.zeros(v)
        return means[:, first:].max(axis=1)
    if how == "peaks":
        above = x > params.level
        starts = above[:, 1:] & ~above[:, :-1]
        return (above[:, 0].astype(np.float64) + starts.sum(axis=1)).astype(np.float64)
    if how == "slope":
        if n < 2:
            return np.zeros(v)
        t = np.arange(n, dtype=np.float64)
        t -= t.mean()
        return (x - x.mean(axis=1, keepdims=True)) @ t / float(t @ t)
    if how == "first_k":
        return x[:, : params.first_k].mean(axis=1)
    if how == "span_mean":
        if params.span is None:
            return x.mean(axis=1)
        start, end = params.span
        seg = x[:, min(start, n) : min(end, n)]
        return seg.mean(axis=1) if seg.shape[1] else np.zeros(v)
    raise ValueError(f"unknown aggregation {how!r}; choose from {list(AGGREGATIONS)}")


#: The aggregations :func:`span_signals` computes for every variant by default.
DEFAULT_SIGNAL_AGGREGATIONS: tuple[str, ...] = (
    "mean",
    "max",
    "std",
    "quantile",
    "window_max",
    "peaks",
    "slope",
    "first_k",
)


def signal_name(variant: str, aggregation: str) -> str:
    """The key of one span signal, ``"<variant>.<aggregation>"`` (e.g. ``"renorm.window_max"``)."""
    return f"{variant}.{aggregation}"


def span_signals(
    per_token: Mapping[str, np.ndarray],
    aggregations: Sequence[str] = DEFAULT_SIGNAL_AGGREGATIONS,
    params: AggregationParams = DEFAULT_PARAMS,
) -> dict[str, float]:
    """Every (variant, aggregation) pair as ``{"variant.aggregation": value}``, vectorised over variants."""
    names = list(per_token)
    if not names:
        return {}
    matrix = np.stack([np.asarray(per_token[name], dtype=np.float64) for name in names])
    out: dict[str, float] = {}
    for how in aggregations:
        values = aggregate_rows(matrix, how, params)
        for name, value in zip(names, values.tolist(), strict=True):
            out[signal_name(name, how)] = value
    return out


def flare_fires(sampled_logprobs: ArrayLike, theta: float = 0.8) -> bool:
    """FLARE's rule: retrieve when any (upcoming) token has probability below θ (0.8 in its configs).

    Equivalent to the gate signal ``one_minus_p.max > 1 − θ``.
    """
    p = sampled_probability(sampled_logprobs)
    return bool(p.size and (p < theta).any())
