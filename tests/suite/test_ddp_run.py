"""A 2-worker data-parallel suite through `normbench run`: Ray Train's TorchTrainer inside the
Tune trial (gloo on CPU), `stats_scope: global`. The run is killed (SIGKILL of its whole
process group) once an epoch is stored, then rerun: the trial resumes from rank 0's checkpoint
and its records equal an uninterrupted trial's (the same trial as virtual devices in this
process, which the engine tests prove equal to DDP step by step). Then a planted pickle in place
of rank 0's checkpoint: it never runs, and the trial restarts with a note in its summary.

Local Ray with num_cpus=2, bound to 127.0.0.1 (as `normbench run` always starts it), in the
`env` fixture's own temp dir; every process it started is killed afterwards.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume_kill import _kill_group, _lines, _start, _wait_gone

from normbench.contract import METRIC_KEYS
from normbench.engine import checkpoint as ckpt
from normbench.engine.loop import TIMING_KEYS, run_trial
from normbench.suite.loader import load_suite

pytestmark = pytest.mark.slow
EPOCHS = 4

SUITE = f"""
version: 1
name: ddp2
dataset: {{name: synthetic, image_size: 8, n_train: 64, n_test: 32, num_classes: 4}}
backbones: [{{name: resnet20, options: {{width: 4}}}}]
variants: [{{name: ubn, options: {{tau: 0.3}}}}]
batch_sizes: [8]
seeds: [0]
train: {{epochs: {EPOCHS}, lr: 0.05, schedule: constant, probe: false, device: cpu,
        devices: 2, stats_scope: global}}
resources: {{cpus: 1, gpus: 0}}
"""

RUN = (
    "import sys; from pathlib import Path; from normbench.suite.runner import RunRequest, execute;"
    "sys.exit(execute(RunRequest(suite=Path(sys.argv[1]), output=Path(sys.argv[2]), num_cpus=2)))"
)


def _kill_after_first_epoch(proc: subprocess.Popen, run: Path, timeout: float = 480) -> None:
    """SIGKILL the group once the trial has stored an epoch (so rank 0 has checkpointed it)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if _lines(run / "epochs.jsonl"):
            return _kill_group(proc)
        if time.monotonic() > deadline:
            _kill_group(proc)
            break
        time.sleep(0.05)
    log = (run.parent / "first.log").read_text()[-3000:]
    pytest.fail(f"the run never stored an epoch (or ended first); its log ends:\n{log}")


def test_killed_ddp_suite_resumes_to_the_uninterrupted_records(
    tmp_path: Path, env: dict[str, str]
) -> None:
    suite, run = tmp_path / "suite.yaml", tmp_path / "run"
    suite.write_text(SUITE)
    cmd = [sys.executable, "-c", RUN, str(suite), str(run)]
    _kill_after_first_epoch(_start(cmd, env, tmp_path / "first.log"), run)
    assert not _wait_gone(env["NB_TEST_MARKER"], 30), "Ray processes survived the kill"
    stored = [e["epoch"] for e in _lines(run / "epochs.jsonl")]
    assert stored and max(stored) < EPOCHS and not _lines(run / "trials.jsonl")

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert not _wait_gone(env["NB_TEST_MARKER"], 30)

    (trial,) = _lines(run / "trials.jsonl")
    assert trial["status"] == "completed"
    records = _lines(run / "epochs.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    logged = [int(line.split(" epoch ")[1].split("/")[0]) for line in second.stdout.splitlines()
              if " epoch " in line and "/" in line.split(" epoch ")[1]]  # fmt: skip
    assert logged and min(logged) > max(stored)  # resumed, not restarted

    spec = load_suite(suite).trials()[0].spec.replace(parallel="virtual", num_threads=1)
    whole = list(run_trial(spec))
    for got, want in zip(records, whole, strict=True):
        assert (got["devices"], got["optimizer_batch_size"]) == (2, 16)
        for key in METRIC_KEYS:
            value = want.get(key)
            if key in TIMING_KEYS or not isinstance(value, float):
                continue
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (got["epoch"], key)

    # A checkpoint that is not normbench's (a planted pickle) never runs on any rank: the
    # driver's check moves it aside, the 2-worker trial restarts from scratch with the note
    # in its summary, and its records are the same lines (same seed, same data order).
    epochs_before = (run / "epochs.jsonl").read_bytes()
    marker = tmp_path / "pwned"
    with open(run / "checkpoints" / trial["trial_id"] / "checkpoint.pt", "wb") as f:
        pickle.dump({"format_version": ckpt.FORMAT_VERSION, "x": _Payload(marker)}, f)
    (run / "trials.jsonl").unlink()  # as if the driver died before the summary line
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert not _wait_gone(env["NB_TEST_MARKER"], 30)
    assert not marker.exists()
    (summary,) = _lines(run / "trials.jsonl")
    assert summary["status"] == "completed" and summary["epochs"] == EPOCHS
    (note,) = summary["notes"]
    assert "is not a valid normbench checkpoint" in note and "restarted the trial" in note
    assert (run / "epochs.jsonl").read_bytes() == epochs_before


class _Payload:
    """Unpickling it would create `marker`: proof that a planted checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))
