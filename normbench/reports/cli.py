"""`normbench report RUN_DIR [RUN_DIR ...] [--output DIR] [--baseline NAME]`: (re)build a
run's report."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    run_dirs: list[Path] = typer.Argument(
        ..., metavar="RUN_DIR...", help="Run directories (several merge into one)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Report folder (default: RUN_DIR/report for one run)."
    ),
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        help="Row every other is compared with: a label as the tables show it "
        "(gn(num_groups=8)), the suite's label or the variant's name (default: the suite's "
        "`baseline`, else bn).",
    ),
) -> int:
    """Write leaderboard.md, CSV tables and plots from stored results (never retrains)."""
    from normbench.reports import build_report, print_summary

    print_summary(build_report(list(run_dirs), output, baseline=baseline))
    return 0


def register(app: typer.Typer) -> None:
    app.command("report")(report)
