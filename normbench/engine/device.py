"""Where and how a trial computes: device, CPU threads, bf16 autocast, channels_last, compile,
determinism.

Defaults favour speed on a GPU and exactness on a CPU: channels_last is on for CUDA only, and
bf16 autocast only on a GPU that computes bf16 natively (`torch.cuda.is_bf16_supported(
including_emulation=False)`: Ampere and later; on older GPUs bf16 is emulated and slower than
fp32), unless the spec asks. CPU bf16 is slow on most CPUs and would change the numbers the CPU
tests compare.

Under a scheduler the device follows the trial's grant (`granted_device`): Ray >= 2.60 no longer
hides the GPUs from a process that asked for none (it leaves CUDA_VISIBLE_DEVICES alone unless
RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1), so "CUDA is visible" does not mean "this trial was given
a GPU".

Every trial sets torch's process-wide switches itself (`build_runtime`): deterministic
algorithms, cuDNN's deterministic and autotuning flags, and a fresh Dynamo state, so a trial in
a reused worker process (Ray Tune reuses actors) never inherits the previous trial's.
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
# cuBLAS is deterministic only with a fixed workspace, read from this variable when the process
# first uses cuBLAS (torch raises at the first matmul under deterministic algorithms without it).
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")  # the two settings NVIDIA documents
# Training steps between two host reads of the loop's device-side divergence flag
# (normbench.engine.loop). A read waits for the device's queue to drain; on a CPU there is no
# queue, so it reads every step and the optimiser keeps torch's plain SGD step.
CHECK_EVERY = {"cpu": 1}
ACCELERATOR_CHECK_EVERY = 32
# torch.compile's backend for `compile: true` (tests use a cheaper one on the CPU).
COMPILE_BACKEND = "inductor"


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
    deterministic: bool = False
    check_every: int = 1  # steps between host reads of the divergence flag (CHECK_EVERY)

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
            "bf16_native": _bf16_native(self.device) if cuda else None,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cublas_workspace_config": os.environ.get(CUBLAS_ENV),
            # float32 matmuls and convolutions may run in TF32 (10-bit mantissa) on Ampere+
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
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
        return compile_module(model) if self.compile else model


def compile_module(module: nn.Module) -> nn.Module:
    """`torch.compile(module)` with `COMPILE_BACKEND`. Hitting Dynamo's recompile limit raises
    (`FailOnRecompileLimitHit`) instead of running the rest of the trial eagerly while its
    records say compiled."""
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    # torch.compile is typed as returning a Callable; given a Module it returns a Module.
    return cast(nn.Module, torch.compile(module, backend=COMPILE_BACKEND))


def compile_counts() -> dict[str, int]:
    """Graphs Dynamo compiled and graph breaks it met since the last `reset_compiler()`."""
    from torch._dynamo.utils import counters

    return {
        "compile_graphs": int(counters["stats"]["unique_graphs"]),
        "compile_graph_breaks": int(sum(counters["graph_break"].values())),
    }


def reset_compiler() -> None:
    """Forget every compiled graph and count (a new trial in a reused process): Dynamo's
    caches are per code object and shared by all trials of a process, so without this the
    recompile limit (8) is reached after a few trials and later ones silently run eager.
    A process that never imported Dynamo has nothing to forget (and skips its import)."""
    if "torch._dynamo" not in sys.modules:
        return
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


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


def granted_device(name: str, gpus: float) -> str:
    """The device of a trial (or DDP rank) a scheduler granted `gpus` GPUs: 'auto' is 'cuda'
    only when the grant holds a GPU and CUDA is visible, else 'cpu' (a zero-GPU trial never
    trains on a GPU it was not given, even where Ray leaves every GPU visible). An explicit
    CUDA device without a GPU in the grant raises DeviceError (suite validation refuses it
    first)."""
    if name == "auto":
        return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and gpus <= 0:
        raise DeviceError(
            f"device {name!r} needs a GPU, but the scheduler gave this trial none "
            "(resources.gpus: 0); ask for one with resources.gpus"
        )
    return name


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
    deterministic: bool = False,
) -> Runtime:
    """Resolve a spec's device settings and set torch's process-wide switches for this trial:
    intra-op threads, determinism (`set_determinism`), a fresh Dynamo state."""
    if deterministic:  # before anything below can start CUDA
        _require_cublas_config()
    dev = resolve_device(device)
    on_cuda = dev.type == "cuda"
    threads = num_threads if num_threads else available_cpus()
    torch.set_num_threads(threads)
    set_determinism(dev, deterministic)
    reset_compiler()
    return Runtime(
        device=dev,
        amp=default_amp(dev) if amp is None else bool(amp),
        channels_last=on_cuda if channels_last is None else bool(channels_last),
        compile=bool(compile),
        num_threads=threads,
        deterministic=bool(deterministic),
        check_every=CHECK_EVERY.get(dev.type, ACCELERATOR_CHECK_EVERY),
    )


def default_amp(device: torch.device) -> bool:
    """bf16 autocast by default: only on a GPU that computes bf16 natively."""
    return device.type == "cuda" and _bf16_native(device)


def _bf16_native(device: torch.device) -> bool:
    """Whether the current CUDA device computes bf16 in hardware (emulation does not count)."""
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def set_determinism(device: torch.device, on: bool) -> None:
    """Deterministic algorithms and cuDNN settings on or off (both set every trial): on, torch
    raises at any op without a deterministic implementation, and cuDNN neither autotunes nor
    picks non-deterministic kernels; off, cuDNN autotunes its convolutions on CUDA
    (`cudnn.benchmark`)."""
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = device.type == "cuda" and not on


def _require_cublas_config() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS, or refuse a value that is not."""
    value = os.environ.setdefault(CUBLAS_ENV, DETERMINISTIC_CUBLAS[0])
    if value not in DETERMINISTIC_CUBLAS:
        raise DeviceError(
            f"deterministic: true needs {CUBLAS_ENV} to be one of "
            f"{', '.join(DETERMINISTIC_CUBLAS)}, but this process has {value!r}; unset it"
        )


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
