"""Bootstrap intervals: hand-checked cases, pairing, determinism."""

from __future__ import annotations

import math

import pytest

from headatlas.stats import bootstrap_ci, mean_and_spread, paired_bootstrap_ci, stable_seed


def test_two_items_zero_and_one():
    # resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles are 0 and 1
    assert bootstrap_ci([0.0, 1.0], n_resamples=20000, seed=3) == (0.5, 0.0, 1.0)


def test_one_success_in_four():
    # resampled mean = k/4, k ~ Binomial(4, 1/4): P(k <= 2) = 0.949 < 0.975 <= P(k <= 3) = 0.996, P(k = 0) = 0.316
    # so the 95 % percentile interval is [0, 0.75] around the mean 0.25
    assert bootstrap_ci([0.0, 0.0, 1.0, 0.0], n_resamples=20000, seed=0) == (0.25, 0.0, 0.75)


def test_constant_scores_collapse():
    assert bootstrap_ci([0.7] * 5) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([1.0]) == (1.0, 1.0, 1.0)


def test_paired_interval_of_a_constant_shift_is_the_shift():
    ref = [0.0, 0.25, 0.5, 1.0]
    mean, low, high = paired_bootstrap_ci(ref, [x + 0.125 for x in ref])  # exact in binary floating point
    assert (mean, low, high) == (0.125, 0.125, 0.125)


def test_paired_is_tighter_than_unpaired_for_correlated_items():
    ref = [0.0, 1.0] * 20
    treated = [0.0, 1.0] * 19 + [0.0, 0.0]  # one item lost
    _, plow, phigh = paired_bootstrap_ci(ref, treated, seed=1)
    _, low, high = bootstrap_ci(treated, seed=1)
    assert phigh - plow < high - low
    assert plow <= -1 / 40 <= phigh


def test_deterministic_given_seed():
    xs = [0.1, 0.9, 0.3, 0.4, 0.0, 1.0]
    assert bootstrap_ci(xs, seed=5) == bootstrap_ci(xs, seed=5)
    assert bootstrap_ci(xs, seed=5) != bootstrap_ci(xs, seed=6)
    assert stable_seed("a", 1) == stable_seed("a", 1) != stable_seed("a", 2)


def test_bad_inputs():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([0.0, math.nan])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0.0, 1.0], [1.0])
    with pytest.raises(ValueError):
        bootstrap_ci([0.0, 1.0], confidence=1.0)


def test_spread_over_seeds():
    s = mean_and_spread([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["n"]) == (0.5, 0.7, 3)
    assert mean_and_spread([0.4])["sd"] == 0.0
