"""A search whose trials each train on 2 DDP ranks (Ray Train, gloo on CPU) under ASHA, through
`normbench run`, finishes: ASHA stops every trial at its last epoch, or earlier, while the
trial's `TorchTrainer.fit()` is still running. Before, Tune reused that trial's actor and
dropped the next trial (Ray issue 54305), or, without reuse, the stopped trial's ranks kept
their placement group and the next trial never got its CPUs. The search also runs in
deterministic mode, which every rank sets before it builds anything.

Local Ray with num_cpus=2, bound to 127.0.0.1 (as `normbench run` starts it), in the test's
own Ray temp dir (tests/conftest.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from normbench.suite.runner import RunRequest, execute

pytestmark = pytest.mark.slow

SUITE = """
version: 1
name: ddpsearch
dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 32, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [8]
train: {epochs: 2, lr: 0.05, schedule: constant, probe: false, devices: 2, limit_batches: 2,
        deterministic: true}
resources: {cpus: 1, gpus: 0}
max_concurrent: 1
search:
  metric: val_top1
  mode: max
  num_samples: 2
  scheduler: asha
  grace_period: 1
  reduction_factor: 2
  space:
    recipe.lr: {type: float, low: 0.001, high: 0.5, log: true}
"""


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_a_ddp_search_under_asha_runs_every_sample(tmp_path: Path) -> None:
    suite, run = tmp_path / "s.yaml", tmp_path / "run"
    suite.write_text(SUITE)
    assert execute(RunRequest(suite, output=run, num_cpus=2), stream=io.StringIO()) == 0
    trials = _lines(run / "trials.jsonl")
    assert len(trials) == 2 and {t["status"] for t in trials} <= {"completed", "pruned"}
    epochs = _lines(run / "epochs.jsonl")
    assert {e["trial_id"] for e in epochs} == {t["trial_id"] for t in trials}
    for e in epochs:  # rank 0's records: each rank fitted device and threads to its grant
        assert (e["devices"], e["device"], e["environment"]["num_threads"]) == (2, "cpu", 1)
        env = e["environment"]
        assert env["deterministic_algorithms"] and env["cublas_workspace_config"] == ":4096:8"
