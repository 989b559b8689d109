"""normbench.reports.stats against independent numpy/scipy computations from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from normbench.reports import stats


def test_mean_and_sample_std_match_the_formulas() -> None:
    x = [71.2, 73.9, 72.4, 70.8]
    m = sum(x) / len(x)
    s = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))  # ddof=1 by hand
    assert stats.mean(x) == pytest.approx(m) and stats.sample_std(x) == pytest.approx(s)
    assert math.isnan(stats.sample_std([70.0])) and math.isnan(stats.mean([]))


def test_mean_ci_is_the_t_interval_below_ten_seeds_and_bootstrap_from_ten() -> None:
    x = [61.3, 83.8, 68.8]
    m, s = np.mean(x), np.std(x, ddof=1)
    half = sps.t.ppf(0.975, df=2) * s / math.sqrt(3)  # the formula, by hand
    ci = stats.mean_ci(x)
    assert ci.method == "t" and (ci.low, ci.high) == (
        pytest.approx(m - half),
        pytest.approx(m + half),
    )
    assert ci.low < min(x) and ci.high > max(x)  # wider than the seeds' range at n=3
    assert stats.mean_ci([70.0, 70.0, 70.0]) == stats.Interval(70.0, 70.0, "t")
    assert math.isnan(stats.mean_ci([70.0]).low)
    y = np.random.default_rng(1).normal(72.0, 1.0, size=12)
    big = stats.mean_ci(y)
    ref = sps.bootstrap(
        (y,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(0)
    ).confidence_interval
    assert big.method == "bootstrap" and (big.low, big.high) == (
        pytest.approx(ref.low),
        pytest.approx(ref.high),
    )


@pytest.mark.parametrize("n", [3, 5])
def test_shipped_interval_covers_the_mean_95_percent_of_the_time(n: int) -> None:
    """Coverage by simulation: 20000 normal samples of n seeds, vectorized and seeded. The
    shipped interval (t below 10 seeds) must cover the true mean 95% +- 1 point (the Monte Carlo
    standard error is 0.15 point); a percentile bootstrap of 3 seeds would give about 75%."""
    rng = np.random.default_rng(12345)
    samples = rng.normal(70.0, 3.0, size=(20_000, n))
    low, high = stats.t_interval(samples, axis=1)
    coverage = np.mean((low <= 70.0) & (70.0 <= high))
    assert abs(coverage - 0.95) < 0.01, coverage
    one = stats.mean_ci(samples[0])  # the row function is the same interval
    assert (one.low, one.high) == (pytest.approx(low[0]), pytest.approx(high[0]))


def test_holm_adjustment_matches_the_step_down_formula() -> None:
    p = [0.04, math.nan, 0.01, 0.03, 0.2]
    finite = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    m, running, expected = len(finite), 0.0, {}
    for k, (v, i) in enumerate(finite):  # Holm by hand: (m - k) p_(k), running max, cap 1
        running = max(running, min(1.0, (m - k) * v))
        expected[i] = running
    got = stats.holm(p)
    assert math.isnan(got[1])
    assert [got[i] for i in sorted(expected)] == pytest.approx(
        [expected[i] for i in sorted(expected)]
    )


def test_paired_test_uses_only_common_seeds_and_needs_three_pairs() -> None:
    ubn = {0: 78.1, 1: 78.9, 2: 77.6, 5: 99.0}  # seed 5 has no BN partner
    bn = {0: 77.0, 1: 77.5, 2: 77.4, 3: 10.0}
    d = np.array([78.1 - 77.0, 78.9 - 77.5, 77.6 - 77.4])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))  # paired t by hand
    p = 2 * sps.t.sf(abs(t), df=len(d) - 1)
    r = stats.paired_test(ubn, bn)
    assert (r.n_pairs, r.note) == (3, None)
    assert r.mean_diff == pytest.approx(d.mean()) and r.p_value == pytest.approx(p)
    half = sps.t.ppf(0.975, df=2) * d.std(ddof=1) / math.sqrt(3)
    assert (r.diff_low, r.diff_high) == (
        pytest.approx(d.mean() - half),
        pytest.approx(d.mean() + half),
    )
    few = stats.paired_test({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.0, 2: 3.0})
    assert few.p_value is None and few.note == stats.TOO_FEW and few.n_pairs == 2
    assert few.mean_diff == pytest.approx(0.75)
    assert stats.paired_test({0: 1.0}, {1: 1.0}).n_pairs == 0


def test_time_to_target_is_the_first_epoch_at_or_above_target_in_training_time() -> None:
    ep = pd.DataFrame(
        {
            "epoch": [3, 1, 2, 4],  # unsorted on purpose
            "test_top1": [61.0, 40.0, None, 58.0],
            "elapsed_s": [30.0, 10.0, 20.0, 40.0],  # with evaluation: not used
            "train_time_s": [7.0, 8.0, 9.0, 6.0],
        }
    )
    hit = stats.time_to_target(ep, 60.0)
    assert (hit.epoch, hit.train_time_s) == (3, 8.0 + 9.0 + 7.0)
    assert stats.time_to_target(ep, 61.0).epoch == 3  # >= counts
    assert stats.time_to_target(ep, 70.0) == stats.TargetHit(None, None)
    assert stats.time_to_target(ep.drop(columns="train_time_s"), 60.0).train_time_s is None
