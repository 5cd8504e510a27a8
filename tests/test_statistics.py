"""Intervals against cases with known answers: hand-computed Wilson bounds, identical methods (a paired
difference of exactly 0), a synthetic shift recovered, and the bootstrap's coverage of a known mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from yarn_jax.evaluation import statistics as st


def test_wilson_interval_by_hand():
    # p = 0.8, n = 10, z = 1.959964: centre = (0.8 + z²/20) / (1 + z²/10), half = z sqrt(0.016 + z²/400) / (1 + z²/10)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    iv = st.wilson_interval(0.8, 10)
    assert (iv.low, iv.high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (iv.low, iv.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook values
    top = st.wilson_interval(1.0, 10)  # 10/10 is not certainty
    assert top.low == pytest.approx(10 / (10 + z * z), abs=1e-12) and top.high == pytest.approx(1.0)


def _blocks(rng, docs, blocks, mean=2.0, spread=0.3, tokens=64):
    counts = np.full((docs, blocks), tokens, np.float64)
    return rng.normal(mean, spread, (docs, blocks)) * counts, counts


def test_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    a = _blocks(rng, 3, 16)
    delta, iv = st.paired_ppl_difference(a, a)
    assert delta == 0 and iv.low == iv.high == 0 and not iv.excludes_zero()
    trials = rng.integers(0, 2, 20)
    delta, iv = st.paired_mean_difference(trials, trials)
    assert delta == 0 and (iv.low, iv.high) == (0, 0)


def test_a_synthetic_shift_is_recovered_and_resolved():
    """B = A with every block's mean NLL raised by 0.05 nats plus noise: the paired interval of ppl(A) - ppl(B)
    holds the true difference and excludes 0; without the shift it contains 0."""
    rng = np.random.default_rng(1)
    sa, c = _blocks(rng, 1, 16)
    sb = sa + (0.05 + rng.normal(0, 0.01, sa.shape)) * c
    true = math.exp(np.mean(sa.sum(1) / c.sum(1))) - math.exp(np.mean(sb.sum(1) / c.sum(1)))
    delta, iv = st.paired_ppl_difference((sa, c), (sb, c), seed=3)
    assert delta == pytest.approx(true) and iv.low <= delta <= iv.high and iv.excludes_zero() and iv.high < 0
    noise = sa + rng.normal(0, 0.01, sa.shape) * c
    _, iv0 = st.paired_ppl_difference((sa, c), (noise, c), seed=3)
    assert iv0.low < 0 < iv0.high
    acc_a = (rng.random(200) < 0.9).astype(float)
    acc_b = acc_a * (rng.random(200) < 0.7)  # B loses ~30 % of A's hits
    d, ivt = st.paired_mean_difference(acc_a, acc_b)
    assert d == pytest.approx(acc_a.mean() - acc_b.mean()) and ivt.low > 0


def test_bootstrap_coverage_of_a_known_mean():
    """Blocks with a known expected NLL: the 95 % interval covers it in about 95 % of repetitions (binomial
    bounds for 200 repetitions: 88 % to 99 %)."""
    rng = np.random.default_rng(2)
    hits = 0
    for rep in range(200):
        s, c = _blocks(rng, 4, 16, mean=2.0)
        iv = st.nll_interval(s, c, seed=rep, n_boot=500)
        hits += iv.low <= 2.0 <= iv.high
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_single_document_interval_comes_from_its_blocks_and_empty_blocks_are_skipped():
    rng = np.random.default_rng(4)
    s, c = _blocks(rng, 1, 16)
    s[0, 0], c[0, 0] = 0.0, 0.0  # an empty bucket (e.g. no scored token there)
    iv = st.ppl_interval(s, c)
    point = math.exp(s.sum() / c.sum())
    assert iv.low < point < iv.high and iv.high - iv.low > 0
    assert np.isfinite([iv.low, iv.high]).all()


def test_rounding_level_differences_are_not_resolved():
    """Two computations of the same numbers (a shared prefix and a separate forward) differ by ~1e-7 in every
    block, consistently: the interval may exclude 0, but the difference is rounding, not a result."""
    rng = np.random.default_rng(5)
    s, c = _blocks(rng, 2, 16)
    delta, iv = st.paired_ppl_difference((s * (1 + 1e-7), c), (s, c))
    point = math.exp(np.mean(s.sum(1) / c.sum(1)))
    assert iv.excludes_zero() and not st.resolved(delta, iv, point)
    shifted = s + 0.02 * c  # 0.02 nats per token: a real difference
    delta, iv = st.paired_ppl_difference((shifted, c), (s, c))
    assert st.resolved(delta, iv, point)
