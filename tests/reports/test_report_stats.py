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


def test_bootstrap_ci_is_the_seeded_percentile_bootstrap_of_the_mean() -> None:
    x = np.array([71.2, 73.9, 72.4, 70.8, 72.0])
    # Independent: resample by hand with scipy's draw order (rng.integers over (B, n) indices)
    # and take the 2.5/97.5 percentiles of the resampled means.
    rng = np.random.default_rng(stats.BOOTSTRAP_SEED)
    idx = rng.integers(0, len(x), size=(stats.BOOTSTRAP_RESAMPLES, len(x)))
    means = x[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    got = stats.bootstrap_ci(x)
    assert got == pytest.approx((lo, hi), abs=0.02)
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(0)
    ).confidence_interval
    assert got == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert x.min() < got[0] < x.mean() < got[1] < x.max()
    assert all(math.isnan(v) for v in stats.bootstrap_ci([70.0]))
    assert stats.bootstrap_ci([70.0, 70.0]) == (70.0, 70.0)


def test_paired_test_uses_only_common_seeds_and_needs_three_pairs() -> None:
    ubn = {0: 78.1, 1: 78.9, 2: 77.6, 5: 99.0}  # seed 5 has no BN partner
    bn = {0: 77.0, 1: 77.5, 2: 77.4, 3: 10.0}
    d = np.array([78.1 - 77.0, 78.9 - 77.5, 77.6 - 77.4])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))  # paired t by hand
    p = 2 * sps.t.sf(abs(t), df=len(d) - 1)
    r = stats.paired_test(ubn, bn)
    assert (r.n_pairs, r.note) == (3, None)
    assert r.mean_diff == pytest.approx(d.mean()) and r.p_value == pytest.approx(p)
    few = stats.paired_test({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.0, 2: 3.0})
    assert few.p_value is None and few.note == stats.TOO_FEW and few.n_pairs == 2
    assert few.mean_diff == pytest.approx(0.75)
    assert stats.paired_test({0: 1.0}, {1: 1.0}).n_pairs == 0


def test_time_to_target_is_the_first_epoch_at_or_above_target() -> None:
    ep = pd.DataFrame(
        {
            "epoch": [3, 1, 2, 4],  # unsorted on purpose
            "test_top1": [61.0, 40.0, None, 58.0],
            "elapsed_s": [30.0, 10.0, 20.0, 40.0],
        }
    )
    hit = stats.time_to_target(ep, 60.0)
    assert (hit.epoch, hit.elapsed_s) == (3, 30.0)
    assert stats.time_to_target(ep, 61.0).epoch == 3  # >= counts
    assert stats.time_to_target(ep, 70.0) == stats.TargetHit(None, None)
