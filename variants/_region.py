"""The per-(n, c) coefficient math of `_fused.fused_instance_affine` as one compiled region.

Between the moments and the affine pass every per-instance layer computes its coefficients
(A, Y) (N, C) from the moments with ordinary torch ops: block statistics, gates, the running
statistics' update, UBN's similarity and decision. Run eagerly on a GPU that is one kernel per
op and as many again in backward (66-120 per training step, BN needs 5), each a launch of a few
microseconds on tensors of a few KiB: launch-bound. Here the coefficient function runs as a
regional `torch.compile` (Inductor): its forward is a few fused kernels, and so is the backward
AOTAutograd derives from it (docs/variants.md#kernel-launches).

Mode (`NORMBENCH_COEFFICIENTS`, or `coefficient_mode`): "auto" (the default) compiles on
CUDA, where the Triton kernels run, and keeps the CPU's eager coefficients (the CPU pays no
launch, and a compile costs seconds); "compiled" compiles wherever the autograd Functions run,
the CPU included (how the tests run this path without a GPU); "eager" never compiles.

Compiled once per coefficient function and reused by every layer of that class:
* `dynamic=True`: widths, batch sizes and spatial sizes are symbols, so one graph serves every
  layer of a network (module buffers too: `force_parameter_static_shapes` off while tracing).
* Dynamo keeps its cache and its recompile limit per code object. Every coefficient function
  gets its own copy of the region's body (`_runner`), so IEBN's graphs never count against
  UBN's limit, and a layer's graphs (training, eval, a momentum of None) stay a handful.
* A layer's coefficients are a bound method or a `functools.partial` of one (never a closure
  made per call, whose fresh cells Dynamo would guard on): unbound here, the module and the
  partial's arguments become inputs of the compiled function, guarded by type and options.
* Inside a model compiled as a whole (`compile: true`) or a `torch.func` transform the
  composite path runs (`_fused._backend`) and this region is not used: the outer graph holds
  the coefficient math.

The region's outputs are (N, C) contiguous, and Y is returned as Y + (m̄ − m)·A with m̄ the
mean detached, numerically Y: the gradient −A·Σ_hw g that the affine pass owes the mean is
then part of the compiled backward instead of two more launches and an accumulation.

NOTE: AOTAutograd's compiled backward is not differentiable: a double backward (a gradient
penalty) through a layer on this path raises; `coefficient_mode("eager")` (or
NORMBENCH_COEFFICIENTS=eager) restores the eager coefficients, differentiable to any order.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

MODES = ("auto", "compiled", "eager")
_state: dict[str, Any] = {
    "mode": os.environ.get("NORMBENCH_COEFFICIENTS", "auto"),
    "backend": "inductor",
    "intercept": None,
}
Region = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"NORMBENCH_COEFFICIENTS / coefficient_mode must be one of {', '.join(MODES)}, "
            f"but got {mode!r}"
        )
    return mode


def active_on(device_type: str) -> bool:
    """Whether coefficients run compiled on this device type (where the Functions run)."""
    mode = _check_mode(_state["mode"])
    return mode == "compiled" or (mode == "auto" and device_type == "cuda")


def active(x: torch.Tensor) -> bool:
    """Whether the coefficients of `x`'s layer run compiled (the autograd Functions run)."""
    return active_on(x.device.type)


def forced() -> bool:
    """Mode "compiled": the accelerator path on every device, the CPU included."""
    return _check_mode(_state["mode"]) == "compiled"


@contextlib.contextmanager
def coefficient_mode(mode: str) -> Iterator[None]:
    """Run the coefficients "auto", "compiled" or "eager" inside this context."""
    previous, _state["mode"] = _state["mode"], _check_mode(mode)
    try:
        yield
    finally:
        _state["mode"] = previous


@contextlib.contextmanager
def compiled_with(backend: Any) -> Iterator[None]:
    """Compile regions with `backend` (a `torch.compile` backend) inside this context:
    `normbench.traffic` counts Inductor's kernels with its own."""
    previous, _state["backend"] = _state["backend"], backend
    try:
        yield
    finally:
        _state["backend"] = previous


@contextlib.contextmanager
def intercepted(run: Callable[[Region, tuple[Any, ...]], Any]) -> Iterator[None]:
    """Call `run(region, args)` instead of the compiled region (`normbench.traffic` runs it
    eagerly on FakeTensors, where nothing can be compiled, and counts it its own way)."""
    previous, _state["intercept"] = _state["intercept"], run
    try:
        yield
    finally:
        _state["intercept"] = previous


def compilable(coefficients: Callable[..., Any]) -> bool:
    """Whether `coefficients` is a plain function, a bound method or a partial of one (a
    closure made per call would compile anew every call: it runs eagerly)."""
    func = _unbind(coefficients)[0]
    return isinstance(func, types.FunctionType) and func.__closure__ is None


def _unbind(fn: Callable[..., Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict]:
    """(function, leading arguments, keywords) of a bound method or a partial of one."""
    bound: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    if isinstance(fn, functools.partial):
        bound, keywords, fn = fn.args, dict(fn.keywords), fn.func
    if inspect.ismethod(fn):
        bound, fn = (fn.__self__, *bound), fn.__func__
    return fn, bound, keywords


def _body(
    func: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    bound: tuple[Any, ...],
    keywords: dict[str, Any],
    mean: torch.Tensor,
    var: torch.Tensor,
    params: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The region: (A, Y + (m̄ − m)·A) as (N, C) contiguous tensors (see the module doc)."""
    scale, at_mean = func(*bound, mean, var, *params, **keywords)
    scale = scale.expand(mean.shape)
    shifted = at_mean + (mean.detach() - mean) * scale
    return scale.contiguous(), shifted.expand(mean.shape).contiguous()


@functools.cache
def _runner(func: Callable[..., Any]) -> Region:
    """`_body` with a code object of its own for `func` (Dynamo's cache is per code object)."""
    name = "coefficients_of_" + func.__qualname__.replace(".", "_").replace("<", "").replace(
        ">", ""
    )
    code = _body.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, _body.__globals__, name)


@functools.cache
def _compiled(func: Callable[..., Any], backend: Any) -> Callable[..., Any]:
    return torch.compile(func, backend=backend, dynamic=True, fullgraph=True)


def _call_compiled(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """`func(*args)` compiled with the region's backend, or through the intercept the count
    installs (`normbench.simulate`); what `run` and `call` share."""
    intercept = _state["intercept"]
    if intercept is not None:
        return intercept(func, args)
    with torch._dynamo.config.patch(force_parameter_static_shapes=False):
        return _compiled(func, _state["backend"])(*args)


def call(statistics: Callable[..., Any], *args: Any) -> Any:
    """`statistics(*args)` as a compiled region whose outputs are whatever it returns: the
    per-(n, c) math of the element-wise layers with statistics (`_elementwise`: FRN, EvoNorm)
    and SaAuxBN's folded branch affine, which are not an affine (A, Y). `statistics` is a
    module-level function or a bound method of one (its own code object, hence its own Dynamo
    cache); callers run it eagerly where the region is not `active` (`_fused.regions_on`)."""
    func, bound, keywords = _unbind(statistics)
    assert not keywords and compilable(statistics), "a bound method or a plain function"
    return _call_compiled(func, (*bound, *args))


def run(
    coefficients: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    mean: torch.Tensor,
    var: torch.Tensor,
    params: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Y') = the compiled region of `coefficients(mean, var, *params)`; Y' = Y + (m̄ − m)·A
    (numerically Y; the affine pass takes m̄ and owes the mean no gradient)."""
    func, bound, keywords = _unbind(coefficients)
    return _call_compiled(_runner(func), (func, bound, keywords, mean, var, params))  # type: ignore[no-any-return]
