"""Reports: leaderboards, statistics and plots, pure functions of stored results.

Reads run directories through `normbench.results`; imports pandas, scipy, matplotlib and (for a
search) optuna, never torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy (PEP 562), like `normbench` itself: `normbench report`'s command module lives in this
# package, and every `normbench` start imports it; pandas and matplotlib load only when a
# report is built.
_EXPORTS = {
    "Report": "normbench.reports.report",
    "build_report": "normbench.reports.report",
    "ReportError": "normbench.reports.data",
    "print_summary": "normbench.reports.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'normbench.reports' has no attribute {name!r}")
