"""An overall ranking of variants across a report's leaderboards (cells = data set x backbone x
batch size x length), by rank-based statistics for comparing methods over several data sets
(Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 2006):

- each cell ranks the variants present in *every* cell by its headline metric (mean final
  test top-1 for classification), in the metric's direction (1 = best, ties share the average
  rank); the mean rank over cells orders the variants. Cells of tasks scored by different
  metrics rank together: a rank says only which variant was better in its cell;
- Friedman's test (scipy.stats.friedmanchisquare; 3 variants or more, not all tied in every
  cell) asks whether the ranks differ more than chance would make them (it is given the scores
  oriented so that higher is better in every cell: a lower-is-better metric negated);
- Nemenyi's post-hoc test (scikit-posthocs' `posthoc_nemenyi_friedman`) gives the pairwise
  p-values behind the critical-difference diagram (scikit-posthocs'
  `critical_difference_diagram`): variants joined by a bar are not told apart at 0.05.

With few cells these tests have little power; the ranking says so rather than hiding it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from normbench.reports.leaderboard import Table
from normbench.reports.numbers import number

ALPHA = 0.05


@dataclass(frozen=True)
class Ranking:
    """Cells x variants scores, the mean ranks and the tests on them."""

    scores: pd.DataFrame  # index: cell title, columns: variant, values: mean final headline
    mean_rank: pd.Series  # variant -> mean rank (1 = best), ascending
    friedman_stat: float
    friedman_p: float  # NaN with fewer than 3 variants, or every cell tied (`untested`)
    nemenyi: pd.DataFrame | None  # pairwise p-values (variants x variants)
    ranks: pd.DataFrame | None = None  # like `scores`: each cell's ranks, in its direction
    # cell title -> its headline's label and whether higher is better (classification: top-1)
    higher: dict[str, bool] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def overall_ranking(tables: list[Table]) -> Ranking | None:
    """The ranking of the variants common to every table; None below 2 tables or 2 variants."""
    if len(tables) < 2:
        return None
    rows, higher, labels = {}, {}, {}
    for t in tables:
        h = t.headline
        done = t.rows[t.rows["n"] > 0].set_index("variant")[f"{h.name}_mean"]
        rows[t.title] = done[~done.index.duplicated()]
        higher[t.title], labels[t.title] = h.higher_is_better, h.label
    scores = pd.DataFrame(rows).T.dropna(axis=1)  # variants with a number in every cell
    if scores.shape[1] < 2:
        return None
    sign = pd.Series({title: 1.0 if up else -1.0 for title, up in higher.items()})
    oriented = scores.mul(sign, axis=0)  # higher is better in every cell
    ranks = oriented.rank(axis=1, ascending=False, method="average")
    mean_rank = ranks.mean().sort_values(kind="stable")
    stat = p = math.nan
    nemenyi = None
    if untested(oriented) is None:
        import scikit_posthocs as sp
        from scipy import stats

        res = stats.friedmanchisquare(*(oriented[c].to_numpy() for c in oriented.columns))
        stat, p = float(res.statistic), float(res.pvalue)
        nemenyi = sp.posthoc_nemenyi_friedman(oriented.to_numpy())
        nemenyi.index = nemenyi.columns = list(scores.columns)
    return Ranking(scores, mean_rank, stat, p, nemenyi, ranks, higher, labels)


def untested(scores: pd.DataFrame) -> str | None:
    """Why Friedman's and Nemenyi's tests say nothing on these cells x variants scores, or
    None when they apply. With every variant tied in every cell, the ties correction of the
    Friedman statistic is 0 and the statistic 0/0 (undefined, scipy warns and gives NaN);
    Nemenyi's p-values would all be 1."""
    if scores.shape[1] < 3:
        return "needs at least 3 variants common to every leaderboard"
    if bool((scores.nunique(axis=1) == 1).all()):
        return "every variant ties in every leaderboard: the Friedman statistic is undefined"
    return None


def _by(r: Ranking) -> str:
    """What the cells rank by: one headline's mean final test value, or each cell's own."""
    labels = set(r.labels.values()) or {"top-1"}
    if len(labels) > 1:
        return "their task's headline metric (mean final test value), each in its direction"
    (label,) = labels
    way = "" if all(r.higher.values()) else " (lower is better)"
    return f"mean final test {label}{way}"


def ranking_markdown(r: Ranking) -> list[str]:
    """The ranking section of the report."""
    cells = len(r.scores)
    out = [
        f"## Overall ranking across {cells} leaderboards",
        "",
        f"Each leaderboard ranks the variants present in all of them by {_by(r)} "
        "(1 = best; ties share the average rank). Variants missing from a leaderboard are left "
        "out of this ranking.",
        "",
        "| variant | mean rank | "
        + " | ".join(f"rank in [{i}]" for i in range(1, cells + 1))
        + " |",
        "|---|---|" + "---|" * cells,
    ]
    ranks = r.ranks if r.ranks is not None else r.scores.rank(axis=1, ascending=False)
    for variant, mean in r.mean_rank.items():
        per_cell = " | ".join(f"{v:g}" for v in ranks[variant])
        out.append(f"| {variant} | {number(mean, '.2f')} | {per_cell} |")
    out += [""] + [f"[{i}] {title}  " for i, title in enumerate(r.scores.index, 1)]
    out[-1] = out[-1].rstrip()
    out.append("")
    reason = untested(r.scores)
    if reason is not None:
        out += [f"Friedman test: {reason}.", ""]
    else:
        verdict = (
            "the ranks differ more than chance explains"
            if r.friedman_p < ALPHA
            else "no evidence that the ranks differ"
        )
        out += [
            f"Friedman test (scipy.stats.friedmanchisquare) over {cells} leaderboards: "
            f"χ² = {number(r.friedman_stat, '.2f')}, p = {r.friedman_p:.3g} "
            f"({verdict} at {ALPHA}). "
            "The diagram below joins variants that Nemenyi's post-hoc test (scikit-posthocs) "
            f"does not separate at {ALPHA}.",
            "",
        ]
    return out
