"""Property tests of core/entropy.py over random top-k logprob matrices (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core import entropy as E

# Rows of k logprobs whose probabilities sum to at most 1 (as an API's top-k do).
rows = st.integers(1, 8).flatmap(
    lambda n: st.integers(1, 20).flatmap(
        lambda k: st.tuples(
            arrays(np.float64, (n, k), elements=st.floats(0.01, 1.0)),
            st.floats(0.05, 1.0),
        )
    )
)


def to_top(raw: np.ndarray, mass: float) -> np.ndarray:
    p = raw / raw.sum(axis=1, keepdims=True) * mass
    return -np.sort(-np.log(p), axis=1)


@settings(max_examples=150, deadline=None)
@given(rows)
def test_variant_bounds(data: tuple[np.ndarray, float]) -> None:
    top = to_top(*data)
    k = top.shape[1]
    sig = E.token_signals(top, top[:, 0])
    assert np.all(sig["renorm"] >= -1e-12) and np.all(sig["renorm"] <= math.log(k) + 1e-9)
    # The missing-mass bucket only adds to EPR, and k + 1 outcomes hold at most ln(k + 1) nats.
    assert np.all(sig["missing_mass"] >= sig["epr"] - 1e-12)
    assert np.all(sig["missing_mass"] <= math.log(k + 1) + 1e-9)
    for name in ("one_minus_p", "margin"):
        assert np.all((sig[name] >= -1e-12) & (sig[name] <= 1 + 1e-12))
    assert np.all(sig["surprisal"] >= 0)


@settings(max_examples=100, deadline=None)
@given(rows, st.floats(0.1, 0.9))
def test_renorm_ignores_total_mass(data: tuple[np.ndarray, float], scale: float) -> None:
    raw, mass = data
    a = E.renormalized_topk_entropy(to_top(raw, mass))
    b = E.renormalized_topk_entropy(to_top(raw, mass * scale))
    assert np.allclose(a, b, atol=1e-9)


@settings(max_examples=150, deadline=None)
@given(arrays(np.float64, st.integers(1, 60), elements=st.floats(0, 5)), st.integers(1, 8), st.integers(0, 10))
def test_aggregation_bounds(x: np.ndarray, window: int, d_min: int) -> None:
    p = E.AggregationParams(window=window, d_min=d_min, q=0.75, level=2.5)
    lo, hi = x.min() - 1e-9, x.max() + 1e-9
    for how in ("mean", "quantile", "first_k", "span_mean"):
        assert lo <= E.aggregate(x, how, p) <= hi, how
    w = E.aggregate(x, "window_max", p)
    assert w == 0.0 or lo <= w <= hi
    assert 0 <= E.aggregate(x, "peaks", p) <= math.ceil(x.size / 2)
    # The vectorised rows path matches the scalar one for every aggregation.
    m = np.stack([x, x[::-1]])
    for how in E.DEFAULT_SIGNAL_AGGREGATIONS:
        assert np.isclose(E.aggregate_rows(m, how, p)[1], E.aggregate(x[::-1], how, p)), how
    assert np.isclose(E.aggregate(x, "quantile", p), np.quantile(x, 0.75))
