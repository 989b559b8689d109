"""Fixtures shared by the suite tests that start Ray."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short Ray temp dir (socket paths are length-limited), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="nbt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """Environment for a `normbench` subprocess: its own short Ray temp dir and a marker that
    finds every process it starts (driver, raylet, workers), all killed afterwards."""
    from test_resume_kill import _marked_pids

    marker = f"nbkill-{uuid.uuid4().hex[:8]}"
    ray_tmp = tempfile.mkdtemp(prefix="nbr", dir="/tmp")  # short: Ray's socket paths are limited
    yield {**os.environ, "RAY_TMPDIR": ray_tmp, "NB_TEST_MARKER": marker}
    for pid in _marked_pids(marker):  # never leave our Ray behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(ray_tmp, ignore_errors=True)
