"""Fixtures shared by the suite tests that start Ray."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short Ray temp dir (socket paths are length-limited), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="nbt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
