"""Fixtures shared by the suite tests that start Ray."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster


@pytest.fixture
def env(ray_tmp: Path) -> Iterator[dict[str, str]]:
    """Environment for a `normbench` subprocess: the test's own Ray temp dir (tests/conftest.py)
    and a marker that finds every process it starts (driver, raylet, workers), all killed
    afterwards. Only those: the test that runs beside this one (pytest -n 2) is never touched."""
    from test_resume_kill import _marked_pids

    marker = f"nbkill-{uuid.uuid4().hex[:8]}"
    yield {**os.environ, "RAY_TMPDIR": str(ray_tmp), "NB_TEST_MARKER": marker}
    for pid in _marked_pids(marker):  # never leave our Ray behind, even when the test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # exited since it was listed
            pass


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """A Ray cluster on this machine for the tests of one module that join a cluster by
    address (`--address`, as a user joins theirs): two nodes of 1 CPU each, the head with one
    logical GPU (trials still run on the CPU), each with its own short temp dir. Tests that
    need a fresh local Ray start their own.

    NOTE: per module, not per session: a session-wide cluster, started by the first module
    that used it, refused every actor ("SchedulingCancelled") by the time the smoke module
    ran in a full CI run, after the kill and DDP tests in between; alone, both modules pass.

    The nodes take the machine's address, not 127.0.0.1: Ray's driver rewrites 127.0.0.1 to
    the node's own address, so a loopback-only node could not be joined by address.
    RAY_TMPDIR is set only while the nodes start (they and their workers keep it), so the
    cluster's address file stays in its own folder and a later local `ray.init()` never finds
    and joins this cluster by mistake.
    """
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="nbq", dir="/tmp")  # short: Ray's socket paths are limited
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False},
        )
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
        except BaseException:
            cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
