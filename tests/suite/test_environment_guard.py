"""`normbench run` refuses, before Ray starts, to resume a trial in another environment: the
thread count is part of it, so `--set resources.cpus=...` on a run made with another count is
one line and exit 2, with nothing new on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normbench.cli import main
from normbench.suite.loader import load_suite

SUITE = """
version: 1
name: envguard
dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 32, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [32]
train: {epochs: 3, schedule: constant, probe: false, device: cpu}
resources: {cpus: 2, gpus: 0}
"""


def test_resume_with_another_thread_count_is_refused(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    (trial,) = load_suite(suite).trials()
    run = tmp_path / "run"
    run.mkdir()
    # A run made with 2 CPUs per trial, killed after its first epoch.
    env = {"device_type": "cpu", "num_threads": 2}
    line = {"trial_id": trial.trial_id, "epoch": 1, "status": "ok", "environment": env,
            "spec": trial.spec.to_dict(), "cell": trial.cell}  # fmt: skip
    (run / "epochs.jsonl").write_text(json.dumps(line) + "\n")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--output", str(run), "--set", "resources.cpus=1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"normbench: error: trial {trial.trial_id} in {run} ran in another environment "
        "(num_threads=2 then, 1 now); it cannot resume there: rerun with the original "
        "resources.cpus / train.num_threads / train.device, or use another --output"
    ]
    assert "ray" not in {p.name for p in run.iterdir()}
    assert set(before) <= {p.name for p in run.iterdir()}
