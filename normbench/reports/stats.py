"""The statistics a leaderboard row shows, as small pure functions of per-seed numbers.

- mean and sample std (ddof=1; undefined for one seed),
- a 95% confidence interval of the mean over seeds: Student's t-interval
  (scipy.stats.ttest_1samp(...).confidence_interval) below `BOOTSTRAP_MIN_N` seeds, where
  suites live (3 seeds); a percentile bootstrap (scipy.stats.bootstrap, fixed RNG seed) only
  from `BOOTSTRAP_MIN_N` seeds on, labelled "bootstrap". With 3 seeds a percentile bootstrap
  cannot leave [min, max] of the seeds and covers the mean about 75% of the time;
  `tests/reports/test_report_stats.py` checks the shipped interval's coverage by simulation,
- a paired t-test against the baseline row (bn by default) over the seeds both variants
  finished (scipy.stats.ttest_rel) with the t-interval of the mean paired difference (the
  effect size); fewer than `MIN_PAIRS` pairs give no p-value, only a note,
- Holm's adjustment of a table's paired p-values (statsmodels' `multipletests`),
- epochs and training time until a trial first reaches a target (in the metric's direction).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BOOTSTRAP_MIN_N = 10  # below this many seeds the interval is Student's t
CONFIDENCE = 0.95
MIN_PAIRS = 3  # below this a paired test says nothing worth printing
TOO_FEW = "too few seeds for any claim"
T_METHOD, BOOTSTRAP_METHOD = "t", "bootstrap"


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values."""
    return float(np.mean(values)) if len(values) else math.nan


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); NaN below two values (undefined, shown as "—")."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


@dataclass(frozen=True)
class Interval:
    """A confidence interval and how it was computed ("t" or "bootstrap")."""

    low: float
    high: float
    method: str


def t_interval(
    data: np.ndarray, *, axis: int = -1, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Student's t-interval of the mean along `axis` (vectorized; NaN below two values).

    mean ± t_{(1+confidence)/2, n-1} · s/√n, from scipy.stats.ttest_1samp's
    `confidence_interval`; identical values give a zero-width interval.
    """
    from scipy import stats

    data = np.asarray(data, dtype=float)
    if data.shape[axis] < 2:
        shape = np.delete(np.array(data.shape), axis if axis >= 0 else data.ndim + axis)
        nan = np.full(tuple(shape), math.nan)
        return nan, nan
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance, handled below
        ci = stats.ttest_1samp(data, 0.0, axis=axis).confidence_interval(confidence)
    m = data.mean(axis=axis)
    flat = np.all(data == np.take(data, [0], axis=axis), axis=axis)  # zero variance
    return np.where(flat, m, ci.low), np.where(flat, m, ci.high)


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Interval:
    """95% CI of the mean over seeds: t below `BOOTSTRAP_MIN_N` values, else bootstrap."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return Interval(math.nan, math.nan, T_METHOD)
    if data.size < BOOTSTRAP_MIN_N:
        t_low, t_high = t_interval(data, confidence=confidence)
        return Interval(float(t_low), float(t_high), T_METHOD)
    low, high = bootstrap_ci(data, confidence=confidence)
    return Interval(low, high, BOOTSTRAP_METHOD)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean; (NaN, NaN) below two values.

    Only for `BOOTSTRAP_MIN_N` values or more (see `mean_ci`): below that it undercovers.
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
    diff_low: float = math.nan  # t-interval of the mean difference (NaN below 2 pairs)
    diff_high: float = math.nan


def paired_test(variant: Mapping[int, float], baseline: Mapping[int, float]) -> PairedResult:
    """Two-sided paired t-test (scipy.stats.ttest_rel) on the seeds present in both, and the
    t-interval of the mean paired difference."""
    seeds = sorted(set(variant) & set(baseline))
    a = np.array([variant[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    if not seeds:
        return PairedResult(0, math.nan, None, "no common seeds")
    d = a - b
    diff = float(np.mean(d))
    low, high = (float(v) for v in t_interval(d))
    if len(seeds) < MIN_PAIRS:
        return PairedResult(len(seeds), diff, None, TOO_FEW, low, high)
    if np.all(d == d[0]):  # zero variance of the differences: t is undefined
        return PairedResult(len(seeds), diff, None, "identical differences, no test", low, high)
    from scipy import stats

    p = float(stats.ttest_rel(a, b).pvalue)
    return PairedResult(len(seeds), diff, p, None, low, high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels `multipletests(method="holm")`) of the finite
    entries, family = the finite entries; NaN entries stay NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        from statsmodels.stats.multitest import multipletests

        out[ok] = multipletests(p[ok], method="holm")[1]
    return [float(x) for x in out]


@dataclass(frozen=True)
class TargetHit:
    """When one trial first reached the target: epoch (1-based) and training seconds."""

    epoch: int | None  # None: never reached
    train_time_s: float | None  # training seconds (train_time_s summed), None: not recorded


def time_to_target(
    epochs: pd.DataFrame,
    target: float,
    metric: str = "test_top1",
    *,
    higher_is_better: bool = True,
) -> TargetHit:
    """First epoch whose `metric` is at least as good as the target (>= it, or <= it when
    lower is better), and the *training* time until then: the sum of `train_time_s` over
    epochs 1..that epoch (evaluation and probes excluded; UBN Table 8).

    `epochs` holds one trial's records; rows without the metric (a diverged epoch) never count.
    """
    if metric not in epochs or epochs.empty:
        return TargetHit(None, None)
    rows = epochs.sort_values("epoch")
    values = pd.to_numeric(rows[metric], errors="coerce")
    hit = rows[values >= target] if higher_is_better else rows[values <= target]
    if hit.empty:
        return TargetHit(None, None)
    first = hit.iloc[0]
    if "train_time_s" not in rows:
        return TargetHit(int(first["epoch"]), None)
    upto = pd.to_numeric(rows["train_time_s"], errors="coerce")[rows["epoch"] <= first["epoch"]]
    seconds = None if upto.isna().any() else float(upto.sum())
    return TargetHit(int(first["epoch"]), seconds)
