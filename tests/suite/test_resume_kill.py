"""kill -9 of the whole `normbench run` process group mid-suite, then a rerun: every trial ends
up stored exactly once, no finished epoch is lost, the interrupted trial resumes from its
checkpoint, and no Ray process outlives the killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EPOCHS = 4

SUITE = f"""
version: 1
name: killme
dataset: {{name: synthetic, image_size: 16, n_train: 256, n_test: 64, num_classes: 4}}
backbones: [{{name: resnet20, options: {{width: 4}}}}]
variants: [bn, {{name: gn, options: {{num_groups: 2}}}}, in]
batch_sizes: [32]
seeds: [0]
train: {{epochs: {EPOCHS}, lr: 0.05, schedule: constant, probe: false, device: cpu}}
resources: {{cpus: 1, gpus: 0}}
max_concurrent: 1
"""


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries this test's marker (driver, raylet, workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _wait_gone(marker: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _marked_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group (its own session: `_start`). Only while the driver
    has not been reaped: a reaped driver's pid, hence its group id, may be reused by any
    process, such as the test running beside this one."""
    assert proc.returncode is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _kill_mid_trial(proc: subprocess.Popen, run: Path, timeout: float = 300) -> None:
    """SIGKILL the group once one trial is finished and another has stored an epoch."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        done = {t["trial_id"] for t in _lines(run / "trials.jsonl")}
        started = {e["trial_id"] for e in _lines(run / "epochs.jsonl")}
        if done and started - done:
            return _kill_group(proc)
        if time.monotonic() > deadline:
            _kill_group(proc)
            pytest.fail("the run never reached the middle of a trial")
        time.sleep(0.05)
    pytest.fail(f"the run ended (exit {proc.returncode}) before the middle of a trial")


def test_kill_driver_mid_suite_then_resume(tmp_path: Path, env: dict[str, str]) -> None:
    suite, run = tmp_path / "suite.yaml", tmp_path / "run"
    suite.write_text(SUITE)
    cmd = [sys.executable, "-m", "normbench", "run", str(suite), "--output", str(run)]
    _kill_mid_trial(_start(cmd, env, tmp_path / "first.log"), run)
    assert not _wait_gone(env["NB_TEST_MARKER"], 30), "Ray processes survived the kill"

    done_before = {t["trial_id"] for t in _lines(run / "trials.jsonl")}
    stored_before: dict[str, int] = {}
    for e in _lines(run / "epochs.jsonl"):
        stored_before[e["trial_id"]] = max(stored_before.get(e["trial_id"], 0), e["epoch"])
    interrupted = set(stored_before) - done_before
    assert len(done_before) < 3 and len(interrupted) == 1
    (victim,) = interrupted

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert not _wait_gone(env["NB_TEST_MARKER"], 30)

    trials = _lines(run / "trials.jsonl")
    assert sorted(t["trial_id"] for t in trials) == sorted({t["trial_id"] for t in trials})
    assert len(trials) == 3 and {t["status"] for t in trials} == {"completed"}
    epochs: dict[str, list[int]] = {}
    for e in _lines(run / "epochs.jsonl"):
        epochs.setdefault(e["trial_id"], []).append(e["epoch"])
    assert epochs == {t["trial_id"]: list(range(1, EPOCHS + 1)) for t in trials}
    # The victim continued from its checkpoint: the rerun trained (and logged) only epochs
    # after those the first run had stored, not from epoch 1 again.
    logged = [int(line.split(" epoch ")[1].split("/")[0]) for line in second.stdout.splitlines()
              if f"[{victim}] epoch " in line]  # fmt: skip
    assert logged and min(logged) > stored_before[victim] >= 1
    # Trials finished before the kill were not run again.
    assert not any("start" in ln and any(t in ln for t in done_before)
                   for ln in second.stdout.splitlines())  # fmt: skip
