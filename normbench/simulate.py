"""Running a layer on a device this machine does not have: FakeTensors of that device.

FakeTensors take the device's code path (device checks, autocast's rules for that device,
normbench's Triton operators through their fake implementations) and compute shapes only, so
`normbench bench traffic` and the conformance kit's accelerator check count a CUDA step's
operators on a CPU machine. Two pieces the dispatcher alone does not give: autocast on a missing
device (`autocast_to`) and the backward pass (`backward_here`: the autograd engine runs CUDA
nodes on a device thread that needs a real GPU).

A third: the kernels Inductor generates for a compiled region (the layers' coefficient math on
CUDA, `variants/_region.py`). Nothing can be compiled for a missing GPU, and Inductor's CPU
backend fuses differently (one C++ loop nest where Triton needs a kernel per reduction), so
`InductorKernels` is a `torch.compile` backend that runs Inductor's own lowering and its Triton
scheduler (the one CUDA uses) on the CPU, stops after fusion, before any code is generated, and
counts the fused kernels and the bytes they access (`torch._inductor.metrics`' measure); the
graph itself then runs eagerly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_flatten


def _available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    module = getattr(torch, device.type, None)
    return bool(module is not None and module.is_available())


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[bool]:
    """Run on `device`; FakeTensors of it when it is not here. Yields whether simulated."""
    if _available(device):
        yield False
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield True


@contextlib.contextmanager
def autocast_to(device: torch.device, dtype: torch.dtype, simulated: bool) -> Iterator[None]:
    """Autocast to `dtype` (fp16/bf16) on `device`; none for fp32/fp64 or a device without
    autocast (meta).

    On FakeTensors of a missing CUDA device, `torch.autocast` would disable itself (it checks
    the device), so the autocast state is set directly: the dispatcher applies CUDA's rules.
    """
    if dtype not in (torch.float16, torch.bfloat16) or not torch.amp.is_autocast_available(
        device.type
    ):
        yield
        return
    if not simulated:
        with torch.autocast(device.type, dtype=dtype):
            yield
        return
    enabled, previous = (
        torch.is_autocast_enabled(device.type),
        torch.get_autocast_dtype(device.type),
    )
    torch.set_autocast_enabled(device.type, True)
    torch.set_autocast_dtype(device.type, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device.type, enabled)
        torch.set_autocast_dtype(device.type, previous)


def backward_here(y: torch.Tensor, g: torch.Tensor) -> None:
    """`y.backward(g)`, node by node in this thread, with the same kernels (gradient sums and
    the leaves' layout copies included).

    NOTE: the autograd engine runs a CUDA tensor's nodes on a device thread, which sets the
    device and so needs a real GPU; FakeTensors of a missing GPU are stepped through here.
    """
    root = y.grad_fn
    if root is None:
        return
    deps: dict[Any, int] = {}
    stack, seen = [root], {root}
    while stack:  # edges into each node
        for nxt, _ in stack.pop().next_functions:
            if nxt is not None:
                deps[nxt] = deps.get(nxt, 0) + 1
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    buffers: dict[Any, list[Any]] = {root: [g]}
    ready = [root]
    with torch.no_grad():
        while ready:
            node = ready.pop()
            grads = buffers.pop(node)
            if type(node).__name__ == "AccumulateGrad":
                _accumulate(node.variable, grads[0])  # type: ignore[attr-defined]
                continue
            outs = _call(node, grads)
            for (nxt, slot), grad in zip(node.next_functions, _as_tuple(outs), strict=False):
                if nxt is None:
                    continue
                buf = buffers.setdefault(nxt, [None] * len(nxt._input_metadata))
                if grad is not None:
                    grad = _validate(grad, nxt._input_metadata[slot])
                    buf[slot] = grad if buf[slot] is None else buf[slot] + grad
                deps[nxt] -= 1
                if deps[nxt] == 0:
                    ready.append(nxt)


def _call(node: Any, grads: list[Any]) -> Any:
    """Run one backward node; a custom Function's gets zeros for missing gradients, as the
    engine materialises them."""
    if callable(node):
        return node(*grads)
    full = [
        g if g is not None else torch.zeros(m.shape, dtype=m.dtype, device=m.device)
        for g, m in zip(grads, node._input_metadata, strict=True)
    ]
    return node.apply(*full)


def _validate(grad: torch.Tensor, meta: Any) -> torch.Tensor:
    """The engine's check of a gradient: summed to a broadcast input's shape, cast to its
    dtype."""
    if tuple(grad.shape) != tuple(meta.shape):
        grad = grad.sum_to_size(tuple(meta.shape))
    return grad if grad.dtype == meta.dtype else grad.to(meta.dtype)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _accumulate(leaf: torch.Tensor, grad: torch.Tensor | None) -> None:
    """AccumulateGrad: keep the gradient, copied to the leaf's layout if it differs."""
    if grad is None:
        return
    if grad.stride() != leaf.stride():
        grad = grad.new_empty_strided(leaf.shape, leaf.stride()).copy_(grad)
    leaf.grad = grad if leaf.grad is None else leaf.grad + grad


@dataclasses.dataclass
class KernelCount:
    """Kernels launched and bytes they access (read + written), summed over graph runs."""

    kernels: int = 0
    bytes: int = 0


class _Scheduled(Exception):
    """Raised by the post-fusion hook: Inductor's schedule is known, no code is wanted."""


def _launches(node: Any) -> bool:
    """Whether a fused scheduler node is a kernel launch counted here: not a no-op (views,
    aliases) and not a `normbench::` operator, which the dispatcher counts where it runs."""
    from torch._inductor.scheduler import NopKernelSchedulerNode

    if isinstance(node, NopKernelSchedulerNode):
        return False
    op = getattr(getattr(node, "node", None), "op_overload", None)
    return not (node.is_extern() and op is not None and op.namespace == "normbench")


def inductor_schedule(gm: torch.fx.GraphModule, example_inputs: Any, **kwargs: Any) -> KernelCount:
    """The kernels and bytes of one AOT graph as Inductor's Triton backend fuses it (on the
    CPU, before code generation; see the module docstring). `kwargs`: `compile_fx_inner`'s."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx_inner

    found: list[KernelCount] = []

    def grab(nodes: list[Any]) -> list[Any]:  # runs inside Inductor's graph context
        kernels = [n for n in nodes if _launches(n)]
        sizes = sum(n.get_read_write_buffers_sizes() for n in kernels)  # at the size hints
        found.append(KernelCount(len(kernels), int(sizes)))
        raise _Scheduled

    patches = {"cpu_backend": "triton", "_post_fusion_custom_pass": grab, "fx_graph_cache": False}
    with config.patch(patches):
        try:  # NOTE: Inductor's passes rewrite the graph in place: a copy is scheduled
            compile_fx_inner(copy.deepcopy(gm), example_inputs, **kwargs)
        except Exception:
            if not found:
                raise
    return found[0]


class InductorKernels:
    """A `torch.compile` backend: Inductor's own graph preparation (decompositions, joint
    graph passes, partitioner), then each forward and backward graph is counted by
    `inductor_schedule` and runs eagerly; every run adds its count to `self.count`.

    Keep one instance per process: Dynamo caches compiled code per backend."""

    def __init__(self) -> None:
        self.count = KernelCount()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, inner_compile=self._inner)

    def _inner(self, gm: torch.fx.GraphModule, example_inputs: Any, **kwargs: Any) -> Any:
        counted = inductor_schedule(gm, example_inputs, **kwargs)

        def run(args: list[Any]) -> Any:
            self.count.kernels += counted.kernels
            self.count.bytes += counted.bytes
            return gm(*args)

        run._boxed_call = True  # type: ignore[attr-defined]
        return run


class _Quiet(torch.autograd.Function):
    """A region's outputs whose backward hands zeros to the inputs the region differentiates
    (a count does not use the values), inside `quiet()`: the rest of the step runs as it
    would, and the region's own backward is not run op by op."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> Any:
        ctx.quiet, outs = inputs[-1]
        ctx.save_for_backward(*inputs[:-1])
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        with ctx.quiet():
            zeros = [torch.zeros_like(t) for t in ctx.saved_tensors]
        return (*zeros, None)


def run_quietly(region: Callable[..., Any], args: tuple[Any, ...], quiet: Callable[[], Any]) -> Any:
    """`region(*args)` run eagerly inside `quiet()` (a context in which a counter counts only
    what a compiled region would still launch), its backward too (`_Quiet`)."""
    with quiet():
        outs = region(*args)  # the graph is recorded only to see what it differentiates
    single = isinstance(outs, torch.Tensor)  # a region of one output (`_region.call`)
    outs = (outs,) if single else outs
    inputs = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
    used = _differentiated(outs, [t for t in inputs if t.requires_grad])
    # tensors first: the simulated backward pairs gradients with edges in order
    found = _Quiet.apply(*used, (quiet, outs))
    return found[0] if single else found


def _differentiated(outs: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The `inputs` that `outs`' autograd graph reaches (a leaf through its AccumulateGrad, an
    intermediate through its grad_fn, where the walk stops): those a compiled region's
    backward gives a gradient."""
    stops = {t.grad_fn: t for t in inputs if t.grad_fn is not None}
    leaves = {id(t): t for t in inputs if t.grad_fn is None}
    stack = [o.grad_fn for o in tree_flatten(outs)[0] if getattr(o, "grad_fn", None)]
    seen: set[Any] = set()
    reached: set[int] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in stops:
            reached.update(id(t) for t in inputs if t.grad_fn is node)
            continue
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in leaves:
            reached.add(id(variable))
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return [t for t in inputs if id(t) in reached]
