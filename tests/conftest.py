"""Settings for the whole test suite, which CI runs two tests at a time (`pytest -n 2`, the
README's command; pytest-xdist with `--dist loadgroup`, set in pyproject.toml).

- Every test gets its own Ray temp dir (`RAY_TMPDIR`, short: Ray's socket paths are
  length-limited), so whatever Ray it starts, in this process or in a subprocess, keeps its
  sessions, sockets and `ray_current_cluster` file there: a local `ray.init()` never finds and
  joins a cluster another test (or another user of the machine) started.
- Ray's memory monitor is off in every Ray the tests start (`RAY_memory_monitor_refresh_ms=0`,
  unless set): it kills a worker when the machine's memory use passes 95%, whoever uses it,
  and on a machine shared with other Ray runs it failed a trial of test_resume_kill
  ("RayError: ... out of memory"; the rerun then completed it: two summary lines).
- The tests of a module that shares a module- or session-scoped fixture defined here (a Ray
  cluster, a set of DDP runs, a finished run directory) run on one worker, in one go, so the
  fixture is built once instead of once per worker (`xdist_group`, named after the module).
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")  # inherited by every Ray


@pytest.fixture(autouse=True)
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's Ray temp dir, as `RAY_TMPDIR` (inherited by the processes it starts);
    removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="nbt", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture of this test tree that outlives one test."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for defs in info.name2fixturedefs.values():
        fixture = defs[-1]  # the definition that applies to this test
        if fixture.scope == "function":
            continue
        try:
            source = Path(inspect.getsourcefile(fixture.func) or "").resolve()
        except TypeError:
            continue
        if source.is_relative_to(TESTS):
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks (it renames grouped tests)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    shared = {item.nodeid.split("::")[0] for item in items if _shares_a_fixture(item)}
    for item in items:
        module = item.nodeid.split("::")[0]
        if module in shared:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.hookimpl(trylast=True)  # after xdist's own hook
def pytest_collection_finish(session: pytest.Session) -> None:
    """Say so when this pytest and pytest-xdist ignore the groups (pytest 9.2 with xdist 3.8:
    pytest-dev/pytest-xdist#1386): the tests still pass, but each worker builds the shared
    fixtures again (a second Ray cluster, a second set of DDP runs)."""
    if not getattr(session.config.option, "loadgroup", False):  # xdist workers, loadgroup only
        return
    grouped = [i for i in session.items if i.get_closest_marker("xdist_group") is not None]
    if grouped and "@" not in grouped[0].nodeid:
        grouped[0].warn(
            pytest.PytestWarning(
                f"pytest {pytest.__version__} with this pytest-xdist ignores xdist_group "
                "(pytest-dev/pytest-xdist#1386): shared module fixtures are built once per "
                "worker; install the dev extra's pytest (<9.2) to group them"
            )
        )
