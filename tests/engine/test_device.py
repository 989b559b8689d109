"""Device resolution and the CPU-thread rule."""

from __future__ import annotations

import os

import pytest
import torch

from normbench.engine import device as dev


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cpu_defaults_are_exact_and_threads_follow_the_spec() -> None:
    rt = dev.build_runtime("cpu", amp=None, channels_last=None, compile=False, num_threads=1)
    assert rt.device == torch.device("cpu") and not rt.amp and not rt.channels_last
    assert torch.get_num_threads() == 1


def test_threads_from_env_then_affinity_not_omp(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets inside every trial
    monkeypatch.setenv(dev.THREADS_ENV, "2")
    assert dev.available_cpus() == 2
    monkeypatch.delenv(dev.THREADS_ENV)
    assert dev.available_cpus() == len(os.sched_getaffinity(0))


def test_unavailable_device_is_a_user_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(dev.DeviceError, match="CUDA is not available"):
        dev.resolve_device("cuda")
    with pytest.raises(dev.DeviceError, match="not a torch device"):
        dev.resolve_device("gpu0")
    assert dev.resolve_device("auto") == torch.device("cpu")
