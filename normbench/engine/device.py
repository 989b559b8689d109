"""Where and how a trial computes: device, CPU threads, bf16 autocast, channels_last, compile.

Defaults favour speed on a GPU and exactness on a CPU: bf16 autocast and channels_last are on
for CUDA only unless the spec asks, since CPU bf16 is slow on most CPUs and would change the
numbers the CPU tests compare.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from normbench.errors import UserError

# Set by a scheduler adapter that knows how many CPUs a trial was given.
THREADS_ENV = "NORMBENCH_NUM_THREADS"


class DeviceError(UserError, ValueError):
    """A device the spec names that this machine does not have."""


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings of one trial."""

    device: torch.device
    amp: bool  # bf16 autocast
    channels_last: bool
    compile: bool
    num_threads: int

    def environment(self) -> dict[str, Any]:
        """What can change a number without changing the experiment: stored in every epoch
        record and checkpoint (a trial never resumes in a different one; see
        `environment_difference`). Bit-exactness per setting: docs/reproducibility.md."""
        cuda = self.device.type == "cuda"
        return {
            "device_type": self.device.type,
            "device_name": torch.cuda.get_device_name(self.device) if cuda else _cpu_name(),
            "num_threads": self.num_threads,
            "dtype": "bfloat16-autocast" if self.amp else "float32",
            "channels_last": self.channels_last,
            "compile": self.compile,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda) if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        }

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device when amp is on, else a no-op context."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move the model to the device and memory format; compile it when asked.

        Returns the module to call; the original stays the one to inspect and checkpoint.
        """
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # torch.compile is typed as returning a Callable; given a Module it returns a Module.
        return cast(nn.Module, torch.compile(model)) if self.compile else model


def environment_difference(saved: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """'num_threads=2 vs 1, torch=...' for the keys two environments disagree on, else None
    (also None for a checkpoint written before environments were recorded)."""
    if not saved:
        return None
    diffs = [
        f"{k}={saved.get(k)!r} then, {current[k]!r} now"
        for k in current
        if k in saved and saved[k] != current[k]
    ]
    return ", ".join(diffs) or None


@functools.cache
def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else platform.processor(), else 'cpu'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; other names are checked against the machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"device {name!r} is not a torch device name: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} was asked for, but MPS is not available here")
    return device


def available_cpus() -> int:
    """CPUs this process may use: the scheduler's grant, else the affinity mask.

    Ray sets OMP_NUM_THREADS=1 inside trials whatever they were granted, so that variable is
    not consulted; the adapter's NORMBENCH_NUM_THREADS or Ray's assigned resources are.
    """
    env = os.environ.get(THREADS_ENV)
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    ray_cpus = _ray_assigned_cpus()
    if ray_cpus:
        return ray_cpus
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def _ray_assigned_cpus() -> int | None:
    """CPUs Ray assigned to this worker, when running inside an initialised Ray."""
    ray = sys.modules.get("ray")  # never import Ray just to ask
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # the driver process, or an API change: fall back to the affinity mask
        return None
    return max(int(cpus), 1) if cpus else None


def build_runtime(
    device: str,
    *,
    amp: bool | None,
    channels_last: bool | None,
    compile: bool,
    num_threads: int | None,
) -> Runtime:
    """Resolve a spec's device settings and set torch's intra-op thread count."""
    dev = resolve_device(device)
    on_cuda = dev.type == "cuda"
    threads = num_threads if num_threads else available_cpus()
    torch.set_num_threads(threads)
    return Runtime(
        device=dev,
        amp=on_cuda if amp is None else bool(amp),
        channels_last=on_cuda if channels_last is None else bool(channels_last),
        compile=bool(compile),
        num_threads=threads,
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
