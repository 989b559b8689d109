"""Running a layer on a device this machine does not have: FakeTensors of that device.

FakeTensors take the device's code path (device checks, autocast's rules for that device,
normbench's Triton operators through their fake implementations) and compute shapes only, so
`normbench bench traffic` and the conformance kit's accelerator check count a CUDA step's
operators on a CPU machine. Two pieces the dispatcher alone does not give: autocast on a missing
device (`autocast_to`) and the backward pass (`backward_here`: the autograd engine runs CUDA
nodes on a device thread that needs a real GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


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
