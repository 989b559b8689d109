"""`print_summary`: the top of each leaderboard in the terminal (rich), and where the full
report is."""

from __future__ import annotations

from rich.console import Console

from normbench.reports import stats
from normbench.reports.leaderboard import DIFF
from normbench.reports.render import holm_text, metric_text, p_text, versus
from normbench.reports.report import Report
from normbench.tables import print_table

TOP = 5  # rows per leaderboard in the terminal


def print_summary(report: Report, console: Console | None = None, top: int = TOP) -> None:
    """Print each leaderboard's best `top` variants, the unfinished trials and the report path."""
    console = console or Console()
    for t in report.tables:
        h = t.headline
        columns = (
            *("variant", "n", f"{h.label} (final)", "std", f"Δ vs {versus(t)}", "p", "p (Holm)"),
            "diverged",
        )
        rows = [
            (
                str(r["variant"]),
                str(r["n"]),
                metric_text(r[f"{h.name}_mean"], h),
                metric_text(r[f"{h.name}_std"], h),
                metric_text(r[DIFF], h, signed=True),
                "n<3 pairs" if r["test_note"] == stats.TOO_FEW else p_text(r),
                holm_text(r),
                str(r["diverged"]),
            )
            for _, r in t.rows.head(top).iterrows()
        ]
        more = len(t.rows) - top
        caption = f"{more} more variants in the full report" if more > 0 else None
        print_table(
            columns, rows, title=t.title, caption=caption, right=columns[1:], console=console
        )
    if not report.tables:
        console.print(f"{report.suite_name}: no trials stored yet.")
    if not report.did_not_finish.empty:
        counts = report.did_not_finish["status"].value_counts().to_dict()
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        console.print(f"[yellow]Did not finish: {text} (reasons in the report)[/yellow]")
    for line in report.results.left_out:
        console.print(f"Left out: {line}", style="yellow", markup=False, soft_wrap=True)
    console.print(f"Full report: {report.markdown}", soft_wrap=True)  # a path never wraps
