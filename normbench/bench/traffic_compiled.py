"""`normbench bench traffic --compile`: the memory traffic of each layer compiled whole by
Inductor, as Inductor itself measures it.

Inside a model trained with `compile: true` a layer is not on its eager path (the Triton
operators and the compiled coefficient regions, `normbench.traffic`): the whole model is one
graph, and Inductor generates every kernel. Each layer here is `torch.compile`d alone
(Inductor, `fullgraph=True`, a fresh Dynamo state, no FX graph cache) and runs one training
step (input 64x64x16x16, bf16 under bf16 autocast on the device's own autocast; forward +
backward); the report gives Inductor's own count of the bytes its generated kernels access
(`torch._inductor.metrics.num_bytes_accessed`: every scheduler node's buffers read and
written, at the graph's sizes) and of its kernels (the fused scheduler nodes that launch,
extern kernels such as a convolution included), forward and backward graphs together, beside
BN's. On the CPU these are Inductor's C++ kernels (which fuse more than Triton's), on a GPU its
Triton kernels. Compiling costs 20-60 s per layer on a CPU (more on a busy one), so the
default run measures `DEFAULT_LAYERS`; `--layers` picks others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from normbench.simulate import autocast_to

DEFAULT_LAYERS = ("bn", "iebn", "gn")
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class CompiledTraffic:
    """One layer's training step compiled by Inductor: its kernels and the bytes they access."""

    name: str
    options: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str
    device: str
    kernels: int
    bytes_accessed: int
    compile_seconds: float


@contextlib.contextmanager
def _inductor_metrics() -> Iterator[None]:
    """Inductor computes `num_bytes_accessed` only while its metrics log is enabled; enabled
    here without a handler of its own (nothing is printed)."""
    from torch._inductor import config, metrics
    from torch._inductor.compile_fx import inductor_metrics_log

    level = inductor_metrics_log.level
    inductor_metrics_log.setLevel(logging.INFO)
    metrics.reset()
    try:
        with config.patch(fx_graph_cache=False):  # a cache hit would skip the measurement
            yield
    finally:
        inductor_metrics_log.setLevel(level)


def measure_compiled(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> CompiledTraffic:
    """Compile layer `name` (with `options`) alone with Inductor and count one training step.

    Raises UnknownName (a UserError) for an unregistered name."""
    from torch._inductor import metrics
    from torch._inductor.scheduler import NopKernelSchedulerNode

    from normbench.engine.device import reset_compiler
    from normbench.variants_api import create_norm

    device = torch.device(device)
    options = dict(options or {})
    torch.manual_seed(0)
    layer = create_norm(name, shape[1], **options).to(device).train()
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    reset_compiler()
    compiled = torch.compile(layer, backend="inductor", fullgraph=True)
    started = time.monotonic()
    with _inductor_metrics():
        with autocast_to(device, dtype, False):
            y = compiled(x)
        y.backward(torch.ones_like(y))
        kernels = sum(
            not isinstance(node, NopKernelSchedulerNode) for node, _ in metrics.nodes_num_elem
        )
        accessed = int(metrics.num_bytes_accessed)
    return CompiledTraffic(
        name=name,
        options=options,
        shape=tuple(shape),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        kernels=kernels,
        bytes_accessed=accessed,
        compile_seconds=time.monotonic() - started,
    )


COLUMNS = ("layer", "Inductor kernels", "bytes accessed MiB", "bytes / BN", "compile + step s")


def table(results: list[CompiledTraffic]) -> list[list[str]]:
    """`results` as rows under `COLUMNS` (bytes against BN's, when BN is among them)."""
    bn = next((r for r in results if r.name == "bn" and not r.options), None)
    rows = []
    for r in results:
        label = r.name + "".join(f" {k}={v}" for k, v in r.options.items())
        ratio = f"{r.bytes_accessed / bn.bytes_accessed:.2f}" if bn else "-"
        mib = f"{r.bytes_accessed / MIB:.1f}"
        rows.append([label, str(r.kernels), mib, ratio, f"{r.compile_seconds:.0f}"])
    return rows


def report_rows(results: list[CompiledTraffic]) -> list[str]:
    """The Markdown table of `results` (`table`)."""
    head = ["| " + " | ".join(COLUMNS) + " |", "|---|---:|---:|---:|---:|"]
    return head + ["| " + " | ".join(row) + " |" for row in table(results)]
