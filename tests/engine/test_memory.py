"""Per-trial peak memory on a CPU: the profiled window against allocations of known size, and
independence from what the process did before (the reason `getrusage` was dropped)."""

from __future__ import annotations

import torch

from normbench.engine import memory
from normbench.engine.loop import run_trial
from normbench.spec import Recipe, TrialSpec

MIB = 2**20


def _meter(static: list[torch.Tensor]) -> memory.PeakMemory:
    m = memory.PeakMemory(torch.device("cpu"), lambda: static)
    m.start()
    return m


def _known_step() -> None:
    a = torch.ones(4 * MIB // 4)  # 4 MiB of float32
    b = torch.ones(8 * MIB // 4)  # 8 MiB while a is alive: the peak is 12 MiB
    del a, b
    c = torch.ones(2 * MIB // 4)  # 2 MiB after both were freed
    del c


def test_cpu_peak_is_static_bytes_plus_the_window_peak() -> None:
    weights = torch.zeros(MIB // 4)  # 1 MiB alive before the window
    meter = _meter([weights, weights[:10]])  # a view counts once
    for _ in range(memory.PROFILED_STEPS):
        with meter.step():
            _known_step()
    assert abs(meter.mb() - 13.0) < 0.05
    assert meter.method == memory.CPU_METHOD


def test_cpu_peak_does_not_grow_with_earlier_allocations() -> None:
    first = _meter([])
    with first.step():
        _known_step()
    before = first.mb()  # closes the window (fewer steps than PROFILED_STEPS)
    big = torch.ones(200 * MIB // 4)  # the process's RSS peak rises by 200 MiB
    del big
    second = _meter([])
    with second.step():
        _known_step()
    assert abs(before - second.mb()) < 0.05 and abs(before - 12.0) < 0.05


def test_training_seconds_counts_profiled_steps_at_the_others_mean_duration() -> None:
    meter = _meter([])
    for _ in range(4):
        with meter.step():
            pass
    meter._profiled = [0.5, 0.5]  # two slow profiled steps; the two others took 0.1 s each
    assert abs(meter.training_seconds(1.2) - 0.4) < 1e-9
    assert meter.training_seconds(1.0) == 1.0  # nothing profiled in a later epoch


def test_run_trial_records_the_trials_own_peak_and_method() -> None:
    spec = TrialSpec(
        variant="bn",
        backbone="resnet20",
        dataset="synthetic",
        epochs=2,
        batch_size=16,
        dataset_options={"image_size": 8, "n_train": 64, "n_test": 32},
        recipe=Recipe(lr=0.05, warmup_epochs=0),
        device="cpu",
        limit_batches=3,
        probe=False,
        num_threads=1,
    )
    recs = list(run_trial(spec))
    peaks = {r["peak_mem_mb"] for r in recs}
    assert len(peaks) == 1 and {r["peak_mem_method"] for r in recs} == {memory.CPU_METHOD}
    params_mb = recs[0]["params"] * 4 / MIB
    # parameters + momentum + gradients + activations: above 3x the parameters, far below RSS
    assert 3 * params_mb < peaks.pop() < 200
