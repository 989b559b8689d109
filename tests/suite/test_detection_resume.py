"""kill -9 of `normbench run` in the middle of a detection trial, then a rerun: the trial
resumes from its checkpoint (only the epochs after the stored ones are trained again), every
epoch is stored once, and the resumed epochs' box AP equals that of an uninterrupted trial
of the same spec (the checkpoint carries the model, optimiser, schedule and RNG states)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume_kill import _kill_group, _lines, _start, _wait_gone

pytestmark = pytest.mark.slow
EPOCHS = 3
SUITE = f"""
version: 1
name: killdet
task: {{name: detection, options: {{layout: small, width: 16}}}}
dataset: {{name: digits_coco, image_size: 40, n_train: 16, n_test: 4, max_per_image: 3,
          min_side: 8, max_side: 18, val_fraction: 0.25}}
backbones: [imagenet_resnet18]
variants: [bn]
batch_sizes: [2]
seeds: [0]
train: {{epochs: {EPOCHS}, lr: 0.02, weight_decay: 1.0e-4, schedule: constant, probe: false,
        device: cpu, limit_batches: 3, eval_batch_size: 4}}
resources: {{cpus: 1, gpus: 0}}
"""


def _kill_after_an_epoch(proc: subprocess.Popen, run: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if _lines(run / "epochs.jsonl"):
            return _kill_group(proc)
        if time.monotonic() > deadline:
            _kill_group(proc)
            pytest.fail("the run never stored an epoch")
        time.sleep(0.05)
    pytest.fail(f"the run ended (exit {proc.returncode}) before its first epoch was stored")


def test_killed_detection_trial_resumes(tmp_path: Path, env: dict[str, str]) -> None:
    from normbench.engine.loop import run_trial
    from normbench.spec import TrialSpec

    suite, run = tmp_path / "suite.yaml", tmp_path / "run"
    suite.write_text(SUITE)
    cmd = [sys.executable, "-m", "normbench", "run", str(suite), "--output", str(run)]
    _kill_after_an_epoch(_start(cmd, env, tmp_path / "first.log"), run)
    assert not _wait_gone(env["NB_TEST_MARKER"], 30), "Ray processes survived the kill"
    stored = max(e["epoch"] for e in _lines(run / "epochs.jsonl"))
    assert stored < EPOCHS and not (run / "trials.jsonl").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    (trial,) = _lines(run / "trials.jsonl")
    assert trial["status"] == "completed"
    epochs = _lines(run / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    logged = [int(x.split(" epoch ")[1].split("/")[0]) for x in second.stdout.splitlines()
              if " epoch " in x]  # fmt: skip
    assert logged and min(logged) > stored  # resumed, not restarted
    spec = TrialSpec.from_dict(trial["spec"])
    straight = list(run_trial(spec.replace(num_threads=epochs[0]["environment"]["num_threads"])))
    assert [r["test_box_AP"] for r in straight] == [e["test_box_AP"] for e in epochs]
    assert [r["train_loss"] for r in straight] == pytest.approx([e["train_loss"] for e in epochs])
    json.dumps(epochs)  # strict JSON throughout
