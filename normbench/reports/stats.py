"""The statistics a leaderboard row shows, as small pure functions of per-seed numbers.

- mean and sample std (ddof=1; undefined for one seed),
- a 95% percentile-bootstrap confidence interval of the mean (scipy.stats.bootstrap with a
  fixed RNG seed, so a report is reproducible byte for byte),
- a paired t-test against the BN baseline over the seeds both variants finished
  (scipy.stats.ttest_rel); fewer than `MIN_PAIRS` pairs give no p-value, only a note,
- epochs and training wall time until a trial first reaches a target accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
MIN_PAIRS = 3  # below this a paired test says nothing worth printing
TOO_FEW = "too few seeds for any claim"


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values."""
    return float(np.mean(values)) if len(values) else math.nan


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); NaN below two values (undefined, shown as "—")."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def bootstrap_ci(
    values: Sequence[float],
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean; (NaN, NaN) below two values.

    The percentile method (not BCa) because BCa's jackknife is unstable for 2-5 seeds and
    fails on identical values; with so few seeds the interval is wide, and that is the point.
    """
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return math.nan, math.nan
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])  # every resample has the same mean
    from scipy import stats

    res = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class PairedResult:
    """Variant minus baseline over matching seeds."""

    n_pairs: int
    mean_diff: float  # NaN without pairs
    p_value: float | None  # None below MIN_PAIRS pairs (or when the test is undefined)
    note: str | None  # why there is no p-value


def paired_test(variant: Mapping[int, float], baseline: Mapping[int, float]) -> PairedResult:
    """Two-sided paired t-test (scipy.stats.ttest_rel) on the seeds present in both."""
    seeds = sorted(set(variant) & set(baseline))
    a = np.array([variant[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    if not seeds:
        return PairedResult(0, math.nan, None, "no common seeds")
    diff = float(np.mean(a - b))
    if len(seeds) < MIN_PAIRS:
        return PairedResult(len(seeds), diff, None, TOO_FEW)
    d = a - b
    if np.all(d == d[0]):  # zero variance of the differences: t is undefined
        return PairedResult(len(seeds), diff, None, "identical differences, no test")
    from scipy import stats

    p = float(stats.ttest_rel(a, b).pvalue)
    return PairedResult(len(seeds), diff, p, None)


@dataclass(frozen=True)
class TargetHit:
    """When one trial first reached the target: epoch (1-based) and training seconds."""

    epoch: int | None  # None: never reached
    elapsed_s: float | None


def time_to_target(epochs: pd.DataFrame, target: float, metric: str = "test_top1") -> TargetHit:
    """First epoch whose `metric` is >= target, and `elapsed_s` (training wall time) then.

    `epochs` holds one trial's records; rows without the metric (a diverged epoch) never count.
    """
    if metric not in epochs or epochs.empty:
        return TargetHit(None, None)
    rows = epochs.sort_values("epoch")
    hit = rows[pd.to_numeric(rows[metric], errors="coerce") >= target]
    if hit.empty:
        return TargetHit(None, None)
    first = hit.iloc[0]
    elapsed = first.get("elapsed_s")
    ok = elapsed is not None and not pd.isna(elapsed)
    return TargetHit(int(first["epoch"]), float(elapsed) if ok else None)
