"""Pins the entropy math of core/entropy.py: per-token variants and span aggregations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import entropy as E


def test_distribution_entropy_basics() -> None:
    assert E.entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert E.entropy([1.0, 0.0, 0.0]) == 0.0
    assert E.entropy([2.0, 2.0]) == pytest.approx(math.log(2))  # renormalised
    assert E.normalized_entropy([0.5, 0.5]) == pytest.approx(1.0)
    assert E.normalized_entropy([1.0]) == 0.0
    assert E.softmax([0.0, 0.0]).tolist() == [0.5, 0.5]
    assert E.discrete_entropy([3, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert E.bits_to_nats(E.nats_to_bits(1.3)) == pytest.approx(1.3)


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_uniform_top_k_renormalised_is_ln_k(k: int) -> None:
    # A uniform top-k covering only part of the mass still renormalises to ln k.
    top = np.full((3, k), math.log(0.5 / k))
    assert E.renormalized_topk_entropy(top) == pytest.approx([math.log(k)] * 3)
    sig = E.token_signals(top, top[:, 0])
    assert sig["renorm"] == pytest.approx([math.log(k)] * 3)


def test_one_hot_is_zero_in_every_entropy_variant() -> None:
    top = np.array([[0.0, -np.inf, -np.inf]])
    sig = E.token_signals(top, [0.0])
    for name in ("renorm", "missing_mass", "epr", "surprisal", "one_minus_p", "margin"):
        assert sig[name] == pytest.approx([0.0]), name


def test_missing_mass_bucket() -> None:
    # Two alternatives of 0.3 each; 0.4 is unseen and becomes one extra bucket.
    top = np.log(np.array([[0.3, 0.3]]))
    expected = -(2 * 0.3 * math.log(0.3) + 0.4 * math.log(0.4))
    assert E.missing_mass_entropy(top) == pytest.approx([expected])
    assert E.epr(top) == pytest.approx([-2 * 0.3 * math.log(0.3)])
    assert E.renormalized_topk_entropy(top) == pytest.approx([math.log(2)])
    sig = E.token_signals(top, top[:, 0])
    assert sig["missing_mass"] == pytest.approx([expected])
    assert sig["epr"] == pytest.approx([-2 * 0.3 * math.log(0.3)])
    # Ordering the three corrections: raw EPR <= missing-mass bucket, and the bucket here exceeds ln 2.
    assert sig["epr"][0] < sig["missing_mass"][0]
    assert sig["missing_mass"][0] > sig["renorm"][0]


def test_mass_over_one_from_api_rounding_has_no_negative_bucket() -> None:
    top = np.log(np.array([[0.6, 0.41]]))
    assert E.missing_mass_entropy(top) == pytest.approx(E.epr(top))


def test_sampled_probability_margin_and_full_entropy() -> None:
    top = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]))
    sig = E.token_signals(top, np.log([0.7, 0.4]), full_entropy=[1.5, 2.5])
    assert sig["one_minus_p"] == pytest.approx([0.3, 0.6])
    assert sig["surprisal"] == pytest.approx([-math.log(0.7), -math.log(0.4)])
    assert sig["margin"] == pytest.approx([1 - 0.5, 1 - 0.0])
    assert sig["full"] == pytest.approx([1.5, 2.5])
    assert E.top_margin(top) == pytest.approx([0.5, 0.0])
    # A missing full entropy on any token drops the variant instead of mixing units.
    assert "full" not in E.token_signals(top, [0.0, 0.0], full_entropy=[1.0, np.nan])


def test_top_k_truncation_and_padding() -> None:
    rows = [[-0.1, -3.0, -2.5], [-0.05]]
    top = E.pad_top_logprobs(rows)
    assert top.shape == (2, 3)
    assert top[0].tolist() == [-0.1, -2.5, -3.0]  # sorted descending
    assert np.isneginf(top[1, 1:]).all()
    k2 = E.token_signals(top, [-0.1, -0.05], k=2)
    p = np.exp([-0.1, -2.5])
    assert k2["epr"][0] == pytest.approx(float(-(p * np.log(p)).sum()))
    with pytest.raises(ValueError, match="unknown token variant"):
        E.token_signals(top, [0, 0], variants=["bogus"])


def test_window_aggregation_with_d_min() -> None:
    x = [0.0, 0.0, 0.0, 3.0, 3.0, 0.0, 0.0]
    p = E.AggregationParams(window=2)
    assert E.rolling_mean(x, 2).tolist() == [0.0, 0.0, 1.5, 3.0, 1.5, 0.0]
    assert E.aggregate(x, "window_max", p) == pytest.approx(3.0)
    # Windows ending before token d_min are ignored (EAD switches only after d_min tokens).
    assert E.aggregate(x, "window_max", E.AggregationParams(window=2, d_min=6)) == pytest.approx(1.5)
    assert E.aggregate(x, "window_max", E.AggregationParams(window=2, d_min=99)) == 0.0
    # Shorter than the window: one partial window.
    assert E.aggregate([1.0, 2.0], "window_max", E.AggregationParams(window=5)) == pytest.approx(1.5)


def test_span_aggregations() -> None:
    x = np.array([0.1, 2.0, 0.2, 0.3, 1.5, 1.6, 0.1, 0.0])
    p = E.AggregationParams(q=0.5, level=1.0, first_k=2, span=(4, 6))
    assert E.aggregate(x, "mean") == pytest.approx(x.mean())
    assert E.aggregate(x, "max") == pytest.approx(2.0)
    assert E.aggregate(x, "min") == pytest.approx(0.0)
    assert E.aggregate(x, "std") == pytest.approx(x.std())
    assert E.aggregate(x, "sum") == pytest.approx(x.sum())
    assert E.aggregate(x, "quantile", p) == pytest.approx(np.quantile(x, 0.5))
    assert E.aggregate(x, "peaks", p) == 2.0  # runs above 1.0: [2.0] and [1.5, 1.6]
    assert E.aggregate(x, "first_k", p) == pytest.approx(1.05)
    assert E.aggregate(x, "span_mean", p) == pytest.approx(1.55)
    assert E.aggregate(np.arange(5.0) * 0.5, "slope") == pytest.approx(0.5)
    assert E.aggregate([], "mean") == 0.0
    with pytest.raises(ValueError, match="unknown aggregation"):
        E.aggregate(x, "median")


def test_span_signals_match_scalar_aggregation() -> None:
    rng = np.random.default_rng(1)
    top = np.log(rng.dirichlet(np.ones(20), size=64))
    top = -np.sort(-top, axis=1)
    per = E.token_signals(top, top[:, 0])
    sig = E.span_signals(per)
    assert len(sig) == len(per) * len(E.DEFAULT_SIGNAL_AGGREGATIONS)
    for name, values in per.items():
        for how in E.DEFAULT_SIGNAL_AGGREGATIONS:
            assert sig[E.signal_name(name, how)] == pytest.approx(E.aggregate(values, how)), (name, how)


def test_flare_rule() -> None:
    assert E.flare_fires(np.log([0.95, 0.9, 0.79]), theta=0.8)
    assert not E.flare_fires(np.log([0.95, 0.9, 0.81]), theta=0.8)
    assert not E.flare_fires([], theta=0.8)


def test_aggregation_params_validate() -> None:
    with pytest.raises(ValueError, match="window"):
        E.AggregationParams(window=0).validate()
    with pytest.raises(ValueError, match="q must"):
        E.AggregationParams(q=1.5).validate()


def test_a_token_without_alternatives_is_estimated_by_its_surprisal() -> None:
    # Row 0 has alternatives; row 1 (all −inf) had none sent: its entropy estimate is −ln p.
    top = np.array([[math.log(0.5), math.log(0.5)], [-np.inf, -np.inf]])
    sig = E.token_signals(top, [math.log(0.5), math.log(1e-6)])
    assert sig["missing_mass"] == pytest.approx([math.log(2), -math.log(1e-6)])
    assert sig["epr"] == pytest.approx([math.log(2), -math.log(1e-6)])
    assert sig["renorm"] == pytest.approx([math.log(2), 0.0])
    assert sig["margin"] == pytest.approx([1.0, 1.0 - 1e-6])
    assert sig["margin"][1] == pytest.approx(sig["one_minus_p"][1])
