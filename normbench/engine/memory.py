"""Peak memory of one trial, measured so that it describes the trial, not the worker process.

- CUDA: `torch.cuda.reset_peak_memory_stats` after the trial's first training step (in this
  process), then `torch.cuda.max_memory_allocated`: everything torch allocated on the device
  for this trial (model, optimiser state, activations, and the data set when it is
  device-resident) from its second step on. The first step is left out because cuDNN's
  autotuning (`cudnn.benchmark`) tries convolution algorithms with workspaces no later step
  uses; until a second step has run (an epoch of one step) the peak is None.
- CPU: torch has no allocator statistics for host memory, and a process's peak RSS
  (`getrusage`) is the lifetime peak of a reused Ray worker, so it grows with trial order.
  Instead the first `PROFILED_STEPS` training steps of the trial are run under torch's
  profiler with `profile_memory=True`: the profiler reports every allocation and
  free of torch's CPU allocator in that window, and the peak of their running sum is the
  memory a training step needs above what was alive when the window opened (activations,
  gradients, a first optimiser step's state). Added to it: the bytes of the parameters,
  buffers, gradients and optimiser state alive at that moment. The data set itself is not
  counted on a CPU. The window costs milliseconds once per trial (per process:
  a resumed trial measures again); `training_seconds` takes that cost out of the epoch's
  training time by counting each profiled step at the mean duration of the epoch's others.

Both are in MiB (2**20 bytes) and named by `method` in the record (`peak_mem_method`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

PROFILED_STEPS = 2  # the second step sees the optimiser state the first one created
CUDA_METHOD = "cuda_max_allocated"
CPU_METHOD = "cpu_profiler_step_peak"
_MIB = 2**20


class PeakMemory:
    """Per-trial peak memory. Call `start()` once before training, wrap each training step in
    `step()`, and read `mb()` (MiB, None before anything was measured) after each epoch."""

    def __init__(self, device: torch.device, tensors: Any) -> None:
        """`tensors()` returns the long-lived tensors (parameters, buffers, gradients,
        optimiser state) whose bytes count on a CPU besides the profiled window."""
        self.device = device
        self.method = CUDA_METHOD if device.type == "cuda" else CPU_METHOD
        self._tensors = tensors
        self._steps = 0
        self._peak_bytes: int | None = None
        self._profiled: list[float] = []  # wall seconds of profiled steps not yet accounted
        self._epoch_steps = 0  # steps since the last `training_seconds`
        self._window: _Window | None = None
        self._static = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Profile the first `PROFILED_STEPS` steps (one window); later steps run as they are.
        On CUDA: start counting after the first step (its autotuning done)."""
        self._epoch_steps += 1
        if self.device.type == "cuda":
            yield
            self._steps += 1
            if self._steps == 1:  # one wait per trial, so the reset follows the step's work
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self._steps >= PROFILED_STEPS:
            yield
            return
        self._steps += 1
        started = time.perf_counter()
        if self._steps == 1:
            static = storage_bytes(self._tensors())
            self._window = _Window()
            self._window.__enter__()
            self._static = static
        try:
            yield
        finally:
            if self._steps == PROFILED_STEPS:
                self._close()
            self._profiled.append(time.perf_counter() - started)

    def training_seconds(self, seconds: float) -> float:
        """An epoch's training time (its steps took `seconds`) with each profiled step counted
        at the mean duration of the epoch's unprofiled steps (as measured when there are none)."""
        profiled, self._profiled = self._profiled, []
        rest, self._epoch_steps = self._epoch_steps - len(profiled), 0
        if not profiled or rest <= 0:
            return seconds
        other = seconds - sum(profiled)
        return other + len(profiled) * other / rest

    def mb(self) -> float | None:
        """Peak so far in MiB (CPU: closes a window shorter than PROFILED_STEPS steps)."""
        if self.device.type == "cuda":
            if self._steps < 2:  # nothing after the autotuned first step yet
                return None
            return torch.cuda.max_memory_allocated(self.device) / _MIB
        if self._peak_bytes is None and self._steps > 0:
            self._close()
        return None if self._peak_bytes is None else self._peak_bytes / _MIB

    def _close(self) -> None:
        window = self._window
        if window is None:
            return
        self._window = None
        window.__exit__(None, None, None)
        self._peak_bytes = self._static + window.peak_bytes()
        self._steps = PROFILED_STEPS


class _Window:
    """A CPU profiling window that records allocator events.

    `torch.autograd.profiler.profile` (kineto, CPU only), the layer `torch.profiler.profile`
    wraps: the wrapper's first use imports `torch._inductor`, seconds of CPU per process.
    """

    def __enter__(self) -> _Window:
        from torch.autograd.profiler import profile

        os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet, where kineto is not yet loaded
        self._prof = profile(use_kineto=True, use_cpu=True, profile_memory=True)
        primer = torch.empty(16)  # allocated before the window: its free is "unknown"
        with quiet_native_stderr():  # only the profiler's own start, never the step
            self._prof.__enter__()
            # NOTE: c10's CPU allocator logs "Memory block of unknown size was allocated
            # before the profiling started" from C++ on the first such free and then once in
            # 1000 (CPUAllocator.cpp): spend that first line here, silenced, not in the step.
            del primer
        return self

    def __exit__(self, *exc: Any) -> None:
        with quiet_native_stderr():
            self._prof.__exit__(*exc)

    def peak_bytes(self) -> int:
        """Highest running sum of allocation (+) and free (-) sizes, in time order."""
        results = getattr(self._prof, "kineto_results", None)
        if results is None:
            return 0
        events = _cpu_memory_events(results)
        return max(itertools.accumulate(n for _, n in events), default=0)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for the block: libkineto logs profiler start/stop lines there
    from C++ (`USDT: ... profiler_start`), which KINETO_LOG_LEVEL does not switch off. Keep
    the block to the profiler's own calls: anything else written to stderr meanwhile is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_memory_events(results: Any) -> list[tuple[int, int]]:
    from torch.autograd import DeviceType

    return sorted(
        (e.start_ns(), e.nbytes())
        for e in results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared tensors count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def trial_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[Any]:
    """Parameters, their gradients, buffers and optimiser state tensors of a trial."""
    for p in model.parameters():
        yield p
        if p.grad is not None:
            yield p.grad
    yield from model.buffers()
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))
