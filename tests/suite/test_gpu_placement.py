"""Where a trial's work lands on a GPU cluster, proved on this CPU machine: a local Ray that
declares 2 GPUs (`num_gpus=2`, none real) places the workers, and a mocked CUDA runtime inside
each Ray worker (monkeypatched `torch.cuda`) stands for what a GPU node's process sees. Each
process decides its own device and threads from its own grant; the refusals come before Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from normbench.cli import main
from normbench.spec import TrialSpec

pytestmark = pytest.mark.slow

SPEC = TrialSpec(variant="bn", backbone="resnet20", dataset="synthetic", epochs=1, devices=2)


@pytest.fixture(scope="module")
def ray_with_two_gpus() -> Iterator[Any]:
    """Local Ray on 127.0.0.1 with 4 CPUs and 2 declared GPUs, in this module's temp dir."""
    ray = pytest.importorskip("ray")
    from normbench.suite import ray_adapter

    undo = ray_adapter._loopback_only()
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    # this test module is not importable in Ray's workers: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray
    finally:
        ray.shutdown()
        undo()


def _fit(spec: dict[str, Any], cuda_visible: bool, rank: bool) -> tuple[str, int, list[str]]:
    """In a Ray worker that sees CUDA or not (mocked): the spec as `_fit_to_worker` fits it."""
    import ray
    import ray.train.torch
    import torch

    from normbench.spec import TrialSpec
    from normbench.suite import ray_adapter

    torch.cuda.is_available = lambda: cuda_visible  # type: ignore[assignment]
    ids = ray.get_gpu_ids()
    ray.train.torch.get_device = lambda: torch.device("cuda", int(ids[0]))  # type: ignore
    fitted = ray_adapter._fit_to_worker(TrialSpec.from_dict(spec), rank_device=rank)
    return fitted.device, int(fitted.num_threads or 0), [str(g) for g in ids]


def test_each_process_takes_device_and_threads_from_its_own_grant(ray_with_two_gpus) -> None:
    ray = ray_with_two_gpus
    fit = ray.remote(_fit)
    spec = SPEC.to_dict()
    # a trial that asked for no GPU, on a node where Ray >= 2.60 leaves the GPUs visible
    no_gpu = fit.options(num_cpus=2, num_gpus=0).remote(spec, True, False)
    assert ray.get(no_gpu) == ("cpu", 2, [])
    # a trial given one GPU
    device, threads, ids = ray.get(fit.options(num_cpus=1, num_gpus=1).remote(spec, True, False))
    assert (device, threads, len(ids)) == ("cuda", 1, 1)
    # the two DDP ranks of a trial, placed as Ray Train places them (one bundle each): one GPU
    # each, the device of the local rank
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"CPU": 2, "GPU": 1}] * 2)
    ray.get(group.ready())
    ranks = [
        fit.options(
            num_cpus=2,
            num_gpus=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, i),
        ).remote(spec, True, True)
        for i in range(2)
    ]
    got = ray.get(ranks)
    remove_placement_group(group)
    assert sorted(g[0] for g in got) == ["cuda:0", "cuda:1"] and {g[1] for g in got} == {2}


def test_the_tune_trial_of_a_ddp_run_leaves_the_device_to_its_workers(
    ray_with_two_gpus, tmp_path: Path
) -> None:
    """The function that drives Ray Train asks for no CPU or GPU and may see no CUDA: it hands
    the spec on as written (device auto, threads unset), for each worker to fit."""
    ray = ray_with_two_gpus

    def drive(config: dict[str, Any]) -> dict[str, Any]:
        import torch

        from normbench.suite import ray_adapter

        torch.cuda.is_available = lambda: False  # type: ignore[assignment]
        handed: dict[str, Any] = {}

        def capture(task: Any, spec: TrialSpec, *args: Any) -> None:
            handed.update(spec.to_dict())

        ray_adapter._run_data_parallel = capture  # type: ignore[assignment]
        ray_adapter._train(config, (2.0, 1.0))
        return handed

    task = {"spec": SPEC.to_dict(), "checkpoint_root": str(tmp_path), "stored_epochs": {},
            "remote_refs": {}}  # fmt: skip
    handed = ray.get(ray.remote(drive).options(num_cpus=0).remote({"task": task}))
    assert handed["device"] == "auto" and handed["num_threads"] is None


def test_fractional_gpus_for_ddp_ranks_are_refused_before_ray(tmp_path: Path, capsys) -> None:
    """Two DDP ranks on half a GPU each would share one GPU, which NCCL refuses."""
    suite = tmp_path / "s.yaml"
    text = (
        "version: 1\nname: half\ndataset: {name: synthetic}\nbackbones: [resnet20]\n"
        "variants: [bn]\nbatch_sizes: [8]\ntrain: {epochs: 1, devices: 2}\n"
        "resources: {cpus: 1, gpus: 0.5}\n"
    )
    suite.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--output", str(tmp_path / "out"), "--dry-run"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "gpus: 0.5 is per device" in line and "`train.parallel: virtual`" in line
    assert not (tmp_path / "out").exists()
    from normbench.suite.loader import load_suite

    suite.write_text(text.replace("devices: 2", "devices: 2, parallel: virtual"))
    assert load_suite(suite).resources.gpus == 0.5  # one process on a shared GPU is fine


def test_actor_reuse_is_off_when_a_trial_may_run_ddp() -> None:
    """Tune reuses a stopped trial's actor before its TorchTrainer returned (Ray issue 54305):
    a search of DDP trials under ASHA hung after its first trial (tests/suite/test_ddp_run.py
    runs one to the end)."""
    from types import SimpleNamespace

    from normbench.suite.ray_adapter import Plan, Task, _reuse_actors

    plan = Plan(cpus=1, gpus=0, max_concurrent=None, retries=0, storage_path="", name="x")
    one, ddp = SPEC.replace(devices=1), SPEC
    assert _reuse_actors([Task(one, None)], plan)
    assert not _reuse_actors([Task(one, None), Task(ddp, None)], plan)
    searched = SimpleNamespace(search=SimpleNamespace(space={"devices": {}}))
    assert not _reuse_actors([Task(one, None)], plan.__class__(**{**plan.__dict__,
                             "searcher": searched}))  # fmt: skip
