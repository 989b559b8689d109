"""Run directories: the append-only store written by the driver and the pandas readers."""

from __future__ import annotations

from normbench.results.frames import load_epochs, load_results
from normbench.results.store import RunStore

__all__ = ["RunStore", "load_epochs", "load_results"]
