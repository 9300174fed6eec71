"""The calibration module's rank statistics agree with scipy's (which the module no longer imports)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from runtime.gates.calibration import auroc, average_ranks


@pytest.mark.parametrize("seed", range(5))
def test_average_ranks_match_scipy_rankdata_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for values in (
        rng.normal(size=200),  # no ties
        rng.integers(0, 7, size=300).astype(float),  # many ties
        np.round(rng.normal(size=100), 1),
        np.array([3.0]),
        np.array([2.0, 2.0, 2.0]),
        np.array([-np.inf, 0.0, np.inf, 0.0]),
    ):
        np.testing.assert_array_equal(average_ranks(values), rankdata(values))


def test_auroc_is_the_mann_whitney_statistic_with_half_counted_ties() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1, 0.8])
    labels = np.array([1, 1, 0, 0, 0, 1])
    # Pairs (pos, neg): 3 x 3 = 9; pos 0.9 beats all 3, each 0.8 beats 0.3 and 0.1 and ties the 0.8 (½).
    assert auroc(scores, labels) == pytest.approx((3 + 2.5 + 2.5) / 9)
    assert auroc(scores, np.zeros(6)) != auroc(scores, np.zeros(6))  # NaN: one class only
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=500), rng.integers(0, 2, size=500)
    pairs = (s[y == 1][:, None] > s[y == 0][None, :]).mean() + 0.5 * (s[y == 1][:, None] == s[y == 0][None, :]).mean()
    assert auroc(s, y) == pytest.approx(pairs)
