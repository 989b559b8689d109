"""Checkpoints through Ray's Checkpoint API to a storage URI (file:// here; s3:// or gs://
work the same through pyarrow): a rerun downloads the noted checkpoint and recovers an epoch
the store lost without training it again."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from normbench.suite.runner import RunRequest, execute

pytestmark = pytest.mark.slow

SUITE = """
version: 1
name: remote
dataset: {name: synthetic, image_size: 16, n_train: 128, n_test: 32, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [32]
seeds: [0]
train: {epochs: 2, lr: 0.05, schedule: constant, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
"""


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_remote_checkpoint_restores_a_lost_epoch(
    tmp_path: Path, monkeypatch, ray_tmp: Path
) -> None:
    # The trials keep their node-local checkpoint copies under TMPDIR (tempfile.gettempdir()
    # in this test's own Ray workers): a folder of this test, not the machine's /tmp.
    node_tmp = ray_tmp / "node"
    node_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(node_tmp))
    suite, run, storage = tmp_path / "s.yaml", tmp_path / "run", tmp_path / "bucket"
    suite.write_text(SUITE)
    req = RunRequest(suite, output=run, storage=storage.as_uri(), num_cpus=2)
    assert execute(req, stream=io.StringIO()) == 0
    (tid,) = {e["trial_id"] for e in _lines(run / "epochs.jsonl")}
    assert not (run / "checkpoints").exists()  # remote mode: nothing beside the store
    refs = _lines(run / "remote_checkpoints.jsonl")
    assert [r["epoch"] for r in refs] == [1, 2]
    assert (Path(refs[-1]["ref"]) / "checkpoint.pt").is_file()
    assert str(refs[-1]["ref"]).startswith(str(storage))
    original = _lines(run / "epochs.jsonl")

    # A driver that died after the checkpoint of epoch 2 but before storing its record:
    (run / "epochs.jsonl").write_text(json.dumps(original[0]) + "\n")
    (run / "trials.jsonl").unlink()
    # The node-local copy was removed when the trial ended: the rerun must download it.
    assert (node_tmp / "normbench-checkpoints").is_dir()
    assert not (node_tmp / "normbench-checkpoints" / tid).exists()

    assert execute(req, stream=io.StringIO()) == 0
    again = _lines(run / "epochs.jsonl")
    assert [e["epoch"] for e in again] == [1, 2]
    # Same record, same measured time: replayed from the downloaded checkpoint, not retrained.
    assert again[1]["elapsed_s"] == original[1]["elapsed_s"]
    assert again[1]["val_top1"] == original[1]["val_top1"]
    assert [t["status"] for t in _lines(run / "trials.jsonl")] == ["completed"]
