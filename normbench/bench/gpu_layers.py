"""The per-layer measurements of `normbench bench gpu` (`normbench.bench.gpu`), each on one
training step (forward + backward, training mode) of every built-in layer at its default
options, on the setting a CUDA trial trains in: bf16 autocast and channels_last.

- `host_syncs`: synchronizing CUDA calls a step makes, counted by torch's sync debug mode
  (`torch.cuda.set_sync_debug_mode("warn")`, one warning per sync). CUDA only.
- `device_ms`: device time of a step from torch's profiler (the sum of the self device time
  of every op, so launch gaps and host time do not count), eager and compiled. CUDA only.
- `keeps_channels_last`: the output and the input gradient of a channels_last input are
  channels_last (the next convolution would convert back otherwise). Any device.
- `compiled_matches_eager`: the layer compiled (`fullgraph=True`) under bf16 autocast against
  the same layer eager in fp32: largest output, input-gradient and buffer differences relative
  to |reference| + 1. Any device (the tests use a cheap backend on the CPU).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# bf16 has 8 significant bits: a difference within a few bf16 steps of |ref| + 1 is rounding.
TOLERANCE = 0.05

Step = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Case:
    """One layer on one input: the module, a channels_last bf16-ready input and a gradient."""

    name: str
    layer: nn.Module
    x: torch.Tensor  # (N, C, H, W) channels_last
    grad: torch.Tensor

    @classmethod
    def build(cls, name: str, shape: tuple[int, int, int, int], device: torch.device) -> Case:
        from normbench.variants_api import create_norm

        torch.manual_seed(0)
        layer = create_norm(name, shape[1]).to(device).train()
        layer = layer.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(0)
        # values bf16 can hold, so the fp32 reference and the bf16 candidate see one input
        x = torch.randn(shape, generator=gen).relu_().bfloat16().float().to(device)
        grad = torch.randn(shape, generator=gen).to(device)
        cl = torch.channels_last
        return cls(name, layer, x.contiguous(memory_format=cl), grad.contiguous(memory_format=cl))

    def step(self, module: nn.Module | None = None, *, amp: bool = True) -> Step:
        """A training step of `module` (default: the layer) on this case's input."""
        module = self.layer if module is None else module
        device = self.x.device.type

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            x = self.x.detach().clone().requires_grad_()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                y = module(x)
            y.backward(self.grad.to(y.dtype))
            assert x.grad is not None
            return y, x.grad

        return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keeps_channels_last(case: Case) -> bool:
    y, grad = case.step()()
    cl = torch.channels_last
    return y.is_contiguous(memory_format=cl) and grad.is_contiguous(memory_format=cl)


def host_syncs(case: Case) -> int:
    """Synchronizing CUDA calls of one step after a warm-up step (CUDA only)."""
    step = case.step()
    step()
    sync(case.x.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def device_ms(step: Step, *, repeats: int = 5) -> float:
    """Device milliseconds per call of `step` from the profiler (CUDA only), after 2 warm-ups."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / repeats / 1e3


def compiled(module: nn.Module, backend: str) -> nn.Module:
    """`torch.compile(fullgraph=True)` from a fresh Dynamo state: every layer's forward is one
    function (variants/_core.py), and Dynamo caches at most `recompile_limit` (8) versions of
    it per process."""
    from normbench.engine.device import reset_compiler

    reset_compiler()
    return torch.compile(module, backend=backend, fullgraph=True)  # type: ignore[return-value]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b).abs() / (b.abs() + 1)).max()) if a.numel() else 0.0


def compiled_matches_eager(case: Case, backend: str) -> float:
    """The largest of the output, input-gradient and buffer differences (see module doc)."""
    reference = copy.deepcopy(case.layer).to(memory_format=torch.contiguous_format)
    candidate = copy.deepcopy(case.layer)
    y_c, grad_c = case.step(compiled(candidate, backend))()
    plain = Case(case.name, reference, case.x.contiguous(), case.grad.contiguous())
    y_e, grad_e = plain.step(amp=False)()
    buffers = [
        _rel(bc, be)
        for be, bc in zip(reference.buffers(), candidate.buffers(), strict=True)
        if be.is_floating_point()
    ]
    return max(_rel(y_c, y_e), _rel(grad_c, grad_e), *buffers)


def depthwise_reference(layer: nn.Module, channels: int) -> nn.Module | None:
    """The depthwise convolution a layer carries (BNET's and UBN's `weight` of shape
    (C, 1, k, k)), as a plain `nn.Conv2d`, or None: their time is judged against BN plus it."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        return None
    k = int(weight.shape[-1])
    conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False)
    return conv.to(weight.device).to(memory_format=torch.channels_last)
