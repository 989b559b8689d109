"""Reports: leaderboards, statistics and plots, pure functions of stored results.

Reads run directories through `normbench.results`; imports pandas, scipy, matplotlib and (for a
search) optuna, never torch.
"""

from __future__ import annotations

from normbench.reports.data import ReportError
from normbench.reports.report import Report, build_report
from normbench.reports.summary import print_summary

__all__ = ["Report", "ReportError", "build_report", "print_summary"]
