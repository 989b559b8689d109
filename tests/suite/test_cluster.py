"""`normbench run --address` on a real two-node Ray cluster simulated on this machine:
trials spread over both nodes, a failing trial is retried then recorded as failed without
stopping the suite (keeping the note about a checkpoint set aside, although no record carried
it), and logical GPUs are scheduled (two 0.5-GPU trials share one GPU) while
the trials themselves run on the CPU. The cluster (tests/suite/conftest.py) is the one the
suite smoke tests join too."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from normbench.results import load_results  # noqa: E402
from normbench.suite.runner import RunRequest, execute  # noqa: E402

BOOM = """
from torch import nn
from normbench import register_variant


@register_variant("boom")
class Boom(nn.BatchNorm2d):
    paper = "A failing test plugin (nowhere 2026)"
    batch_dependent = True

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)

    def forward(self, x):
        # real feature maps only: the contract check and suite validation run 5x5 and 4x4 ones
        if self.training and x.shape[-1] > 5:
            import ray

            with open(ATTEMPTS_LOG, "a") as f:
                f.write(f"attempt {ray.get_runtime_context().get_node_id()}\\n")
            raise RuntimeError("boom: this variant always fails in training")
        return super().forward(x)
"""


def _suite(variants: str, resources: str, device: str, retries: int = 0) -> str:
    return f"""
version: 1
name: cluster
dataset: {{name: synthetic, image_size: 16, n_train: 192, n_test: 32, num_classes: 4}}
backbones: [{{name: resnet20, options: {{width: 4}}}}]
variants: {variants}
batch_sizes: [32]
seeds: [0, 1]
train: {{epochs: 2, lr: 0.05, schedule: constant, probe: false, device: {device}}}
resources: {resources}
retries: {retries}
"""


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "epochs.jsonl").read_text().splitlines()]


def _plant(suite: Path, plugin: Path, run: Path, variant: str, seed: int) -> Path:
    """An invalid checkpoint where the trial (variant, seed) of `suite` will look for its own,
    to be set aside when it starts; returns the trial's checkpoint folder."""
    from normbench.suite.loader import load_suite

    loaded = load_suite(suite, overrides=[f"plugins={json.dumps([str(plugin)])}"])
    (tid,) = [t.spec.trial_id for t in loaded.trials()
              if t.spec.variant == variant and t.spec.seed == seed]  # fmt: skip
    folder = run / "checkpoints" / tid
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return folder


def _notes(run: Path) -> dict[str, list[str] | None]:
    lines = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    return {t["trial_id"]: t.get("notes") for t in lines}


def _set_aside(folder: Path, tmp_path: Path) -> str:
    """The note `load_or_quarantine` writes for the planted checkpoint (asked of a copy)."""
    from normbench.engine.checkpoint import load_or_quarantine

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _, note = load_or_quarantine(copy, trial_id="x")
    assert note is not None
    return note.replace(str(copy), str(folder))


def test_trials_spread_over_nodes_and_failures_are_recorded(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    """... and a checkpoint set aside keeps its note although the trial fails before its
    first record, in an attempt Tune retries (the retry has no checkpoint to set aside)."""
    log = tmp_path / "attempts.log"  # each training attempt of `boom` adds its node's id
    (tmp_path / "boom.py").write_text(BOOM.replace("ATTEMPTS_LOG", repr(str(log))))
    suite = tmp_path / "s.yaml"
    suite.write_text(_suite("[bn, boom]", "{cpus: 1, gpus: 0}", "cpu", retries=1))
    run, out = tmp_path / "run", io.StringIO()
    planted = _plant(suite, tmp_path / "boom.py", run, "boom", 0)
    req = RunRequest(
        suite, output=run, address=ray_cluster.address, plugins=(str(tmp_path / "boom.py"),)
    )
    assert execute(req, stream=out) == 1  # a failed trial: exit status 1, suite finished
    notes = _notes(run)
    assert notes.pop(planted.name) == [_set_aside(planted, tmp_path)]
    assert set(notes.values()) == {None}
    df = load_results(run).set_index("variant")
    assert sorted(df.loc["bn"].status) == ["completed", "completed"]
    failed = df.loc["boom"]
    assert sorted(failed.status) == ["failed", "failed"]
    assert all("boom: this variant always fails" in r for r in failed.reason)
    attempts = log.read_text().split()[1::2]
    assert len(attempts) == 4  # two boom trials, each tried 1 + retries(1) times
    # Two 1-CPU nodes: the first two trials start together, one on each node.
    nodes = {r["ray_node_id"] for r in _records(run)} | set(attempts)
    assert len(nodes) == 2


def test_a_set_aside_checkpoint_keeps_its_note_when_the_trial_fails_first(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    """The note about a checkpoint set aside rides on the trial's first record; a trial that
    fails before it (no retry) carries the note to its summary line with the failure: a rerun
    finds no checkpoint and could not say it again."""
    from normbench import registry

    registry._reset_all()  # `boom` from the test above's file
    (tmp_path / "boom.py").write_text(BOOM.replace("ATTEMPTS_LOG", repr(str(tmp_path / "log"))))
    suite = tmp_path / "s.yaml"
    suite.write_text(_suite("[boom]", "{cpus: 1, gpus: 0}", "cpu").replace("[0, 1]", "[0]"))
    run, out = tmp_path / "run", io.StringIO()
    planted = _plant(suite, tmp_path / "boom.py", run, "boom", 0)
    req = RunRequest(
        suite, output=run, address=ray_cluster.address, plugins=(str(tmp_path / "boom.py"),)
    )
    try:
        assert execute(req, stream=out) == 1
    finally:
        registry._reset_all()
    assert _notes(run) == {planted.name: [_set_aside(planted, tmp_path)]}
    assert (planted / "checkpoint.pt.invalid").read_bytes() == b"not a checkpoint"
    assert not (run / "epochs.jsonl").exists()  # it failed before its first record
    assert "is not a valid normbench checkpoint" in out.getvalue()


def test_fractional_logical_gpus_are_scheduled_and_trials_run_on_cpu(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    suite = tmp_path / "g.yaml"
    suite.write_text(_suite("[bn]", "{cpus: 0.5, gpus: 0.5}", "auto"))
    run = tmp_path / "run"
    req = RunRequest(suite, output=run, address=ray_cluster.address)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(execute, req, stream=io.StringIO())
        free_gpu = _min_free_gpu_while(future)
        assert future.result() == 0
    # The cluster has one logical GPU; two 0.5-GPU trials held all of it at the same time.
    assert free_gpu == 0.0
    recs = _records(run)
    assert len({r["trial_id"] for r in recs}) == 2
    assert {r["device"] for r in recs} == {"cpu"}  # no CUDA here, although Ray gave a GPU
    assert {tuple(r["ray_gpu_ids"]) for r in recs} == {("0",)}


def _min_free_gpu_while(future: Future) -> float:
    """Lowest free GPU amount the cluster reported while the run was going."""
    lowest = 1.0
    while not future.done():
        if ray.is_initialized():
            try:
                lowest = min(lowest, ray.available_resources().get("GPU", 0.0))
            except Exception:  # Ray not fully connected yet, or shutting down
                pass
        time.sleep(0.05)
    return lowest
