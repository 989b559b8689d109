"""Memory traffic and host syncs of one norm layer's training step on the accelerator path.

Norm layers are bandwidth-bound: on a GPU their time follows the bytes they move. This
module counts those bytes at the dispatcher, the way a GPU runs eager code: every operator
call is one kernel that reads its tensor arguments and writes its results
(`TorchDispatchMode`; views, allocations and metadata move nothing, an in-place or `out=`
argument counts as written). A fused kernel, torch's own (`native_batch_norm`) or normbench's
(`normbench::instance_affine`), therefore counts each tensor it touches once, whatever it does
inside. Host syncs are the calls that make the host wait for the device: a scalar read
(`.item()`, `float(t)`, `bool(t)`), a copy to the host, an operator whose output size depends
on the data (`nonzero`); host copies are tensors built from host data on the device (e.g.
`torch.tensor(list, device=...)`).

`measure_layer` runs one layer on the device it is given; without that device (a CUDA
measurement on a CPU machine) it runs on FakeTensors of that device (`simulate`), which take
the code path the device would take (device checks, autocast's CUDA rules, normbench's Triton
operators) and compute only shapes. The step measured is the second training step (the first may
initialise state, e.g. UBN's similarity): `y = layer(x)` under autocast in the input's dtype
(bf16 or fp16; none for fp32/fp64), then `y.backward(g)`.

Kernels: on a GPU each operator call is a launch of a few microseconds whatever its size, so a
layer whose per-(n, c) coefficient math ran as dozens of tiny kernels would be launch-bound. The
layers run that math as a compiled region on CUDA (`variants/_region.py`); a region's kernels
are the ones Inductor's Triton backend generates for its forward and backward graphs, counted
by compiling the same layer's regions on the CPU (`simulate.InductorKernels`: Inductor's
scheduler, stopped before code generation), while the device's step runs the regions eagerly
and counts only the `normbench::` operators inside them (which Inductor calls as they are).

The bound a layer is checked against (docs/variants.md#memory-traffic): at most twice BN's
bytes (read + written) and twice BN's bytes written, for the same input, plus whatever its own
convolutions move (BNET's and UBN's depthwise k x k affine); at most `KERNEL_FACTOR` times BN's
kernels plus its convolutions'; and no host sync or host copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from normbench.simulate import (
    InductorKernels,
    KernelCount,
    autocast_to,
    backward_here,
    on_device,
    run_quietly,
)

DEFAULT_SHAPE = (64, 64, 16, 16)  # the measurement: 1 Mi elements, 2 MiB in bf16
BOUND_FACTOR = 2.0
KERNEL_FACTOR = 4  # kernels per step: at most 4x BN's (5: 20), plus the layer's convolutions
REFERENCE = "bn"
# Operators that read and write nothing: allocations, metadata, aliasing.
_FREE = {
    "aten.empty.memory_format",
    "aten.empty_strided.default",
    "aten.empty_like.default",
    "aten.new_empty.default",
    "aten.new_empty_strided.default",
    "aten.detach.default",
    "aten.alias.default",
    "aten.lift_fresh.default",
    "prim.device.default",
}
_SCALAR_READS = {
    "aten._local_scalar_dense.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
}
# Output size depends on the data: the host waits for the device to know it.
_DATA_DEPENDENT = ("aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique")
_CONV = ("aten.convolution", "aten.convolution_backward", "aten.cudnn_convolution")


@dataclasses.dataclass(frozen=True)
class LayerTraffic:
    """One layer's training step: bytes moved, host syncs and the bound it is checked against.

    Bytes are per forward+backward step. `read_bytes`/`written_bytes` count every tensor;
    `activation_*` only tensors of the input's size (x, y, g, dx and full-size temporaries):
    the bound is on those, as the per-(n, c) statistics are a 1/(H·W) fraction (their cost on
    a GPU is the launch of each small kernel: `kernels`). `conv_activation_*` is the part moved
    by convolution operators (allowed on top of the bound); `bound_bytes`/`bound_written` =
    2 x BN's activation bytes (read + written) and activation bytes written, same input.
    `channels_last_kept` says whether a channels_last input gave a channels_last output and
    input gradient (None: not measured).
    """

    name: str
    options: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str
    device: str
    simulated: bool  # FakeTensors of `device` (no such device here)
    read_bytes: int
    written_bytes: int
    activation_read: int
    activation_written: int
    conv_activation_bytes: int
    conv_activation_written: int
    kernels: int
    host_syncs: int
    host_copies: int
    bound_bytes: int
    bound_written: int
    channels_last_kept: bool | None = None
    compiled_kernels: int = 0  # of `kernels`: Inductor's, in compiled regions
    compiled_bytes: int = 0  # bytes those access (not in read_bytes/written_bytes)
    conv_kernels: int = 0  # of `kernels`: the layer's convolutions
    bound_kernels: int = 0  # KERNEL_FACTOR x BN's kernels + conv_kernels

    @property
    def norm_bytes(self) -> int:
        """Activation bytes read and written outside the layer's convolutions."""
        return self.activation_read + self.activation_written - self.conv_activation_bytes

    @property
    def norm_written(self) -> int:
        """Activation bytes written outside the layer's convolutions."""
        return self.activation_written - self.conv_activation_written

    @property
    def within_traffic_bound(self) -> bool:
        """Activation bytes and bytes written within the bound, no host sync or host copy."""
        written_ok = self.norm_written <= self.bound_written
        syncs_ok = self.host_syncs == 0 and self.host_copies == 0
        return self.norm_bytes <= self.bound_bytes and written_ok and syncs_ok

    @property
    def within_bound(self) -> bool:
        """Within the traffic bound and at most `bound_kernels` kernels."""
        return self.within_traffic_bound and self.kernels <= self.bound_kernels


@dataclasses.dataclass
class _Tally:
    read: int = 0
    written: int = 0
    act_read: int = 0
    act_written: int = 0
    conv: int = 0
    conv_written: int = 0
    kernels: int = 0
    conv_kernels: int = 0
    compiled: KernelCount = dataclasses.field(default_factory=KernelCount)
    syncs: int = 0
    copies: int = 0
    log: list[str] = dataclasses.field(default_factory=list)


def _nbytes(t: torch.Tensor) -> int:
    """Bytes an operator touches in `t`: its elements, at most its storage (an expanded
    per-channel tensor is read once per element of its storage, not per broadcast element)."""
    size = t.numel() * t.element_size()
    with contextlib.suppress(Exception):  # tensors without storage (e.g. some subclasses)
        size = min(size, t.untyped_storage().nbytes())
    return size


class TrafficCounter(TorchDispatchMode):
    """Counts bytes read/written on `device_type`, host syncs and host copies per operator."""

    def __init__(self, device_type: str, activation_numel: int = -1) -> None:
        super().__init__()
        self.device_type = device_type
        self.activation_numel = activation_numel
        self.tally = _Tally()
        self.in_region = False

    def run_region(self, region: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """A compiled region (`variants/_region.intercepted`), run eagerly: only its
        `normbench::` operators are counted here, in forward and backward; Inductor's kernels
        come from the CPU pass (`compiled_regions`)."""
        return run_quietly(region, args, self.region)

    @contextlib.contextmanager
    def region(self) -> Any:
        self.in_region = True
        try:
            yield
        finally:
            self.in_region = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        if name in _SCALAR_READS:
            self.tally.syncs += 1
            self.tally.log.append(name)
            return _scalar_stand_in(func, args, kwargs)
        if name.startswith(_DATA_DEPENDENT):
            self.tally.syncs += 1
            self.tally.log.append(name)
        out = func(*args, **kwargs)
        # in a region only normbench's operators launch as themselves (Inductor calls them)
        ours = getattr(func, "namespace", None) == "normbench"
        if name not in _FREE and (ours or not self.in_region):
            self._count(func, name, args, kwargs, out)
        return out

    def _count(self, func: Any, name: str, args: Any, kwargs: Any, out: Any) -> None:
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if self._transfer(name, inputs, outputs):
            return
        schema = func._schema
        if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
            return  # a view: no data moves
        written_args = _mutated(schema, args, kwargs)
        on = [t for t in inputs if t.device.type == self.device_type]
        read_t = [t for t in on if not any(t is w for w in written_args)]
        read_t += [t for t in written_args if not _is_out(schema, t, kwargs)]
        fresh = [t for t in outputs if not any(t is w for w in written_args)]
        written_t = [t for t in fresh + written_args if t.device.type == self.device_type]
        read, written = sum(map(_nbytes, read_t)), sum(map(_nbytes, written_t))
        if not (read or written):
            return
        act_read = sum(_nbytes(t) for t in read_t if t.numel() == self.activation_numel)
        act_written = sum(_nbytes(t) for t in written_t if t.numel() == self.activation_numel)
        self.tally.kernels += 1
        self.tally.read += read
        self.tally.written += written
        self.tally.act_read += act_read
        self.tally.act_written += act_written
        if name.startswith(_CONV):
            self.tally.conv += act_read + act_written
            self.tally.conv_written += act_written
            self.tally.conv_kernels += 1

    def _transfer(self, name: str, inputs: list, outputs: list) -> bool:
        """A copy between the host and the device: a host sync (to the host) or a host copy."""
        devices = {t.device.type for t in inputs + outputs}
        if "copy" not in name or self.device_type == "cpu":
            return False  # NOTE: other operators take a 0-d host tensor as a value argument
        if devices != {"cpu", self.device_type}:
            return False
        to_host = any(t.device.type == "cpu" for t in outputs) and any(
            t.device.type == self.device_type for t in inputs
        )
        if to_host:
            self.tally.syncs += 1
        else:
            self.tally.copies += 1
        self.tally.log.append(f"{name} ({'to' if to_host else 'from'} the host)")
        return True


def _mutated(schema: Any, args: Any, kwargs: Any) -> list[torch.Tensor]:
    """The tensor arguments an operator writes (in-place self, `out=`)."""
    found = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        found += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return found


def _is_out(schema: Any, t: torch.Tensor, kwargs: Any) -> bool:
    """Whether `t` is a write-only `out=` argument (not read)."""
    return any(a.kwarg_only and a.name.startswith("out") and kwargs.get(a.name) is t
               for a in schema.arguments)  # fmt: skip


def _scalar_stand_in(func: Any, args: Any, kwargs: Any) -> Any:
    """The value of a host read: real on a real device, a stand-in (1) on FakeTensors."""
    from torch._subclasses.fake_tensor import FakeTensor

    if not any(isinstance(a, FakeTensor) for a in tree_flatten((args, kwargs))[0]):
        return func(*args, **kwargs)
    if str(func) != "aten._local_scalar_dense.default":
        return True
    dtype = args[0].dtype
    return True if dtype == torch.bool else 1 if not dtype.is_floating_point else 1.0


def _step(
    layer: torch.nn.Module,
    x: torch.Tensor,
    autocast: Any,
    counter: Any,
    simulated: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One training step, counted by `counter` (a context: forward and backward, not the
    upstream gradient's creation): returns the output and the input gradient."""
    x = x.detach().requires_grad_(True)
    with counter, autocast():
        y = layer(x)
    g = torch.ones_like(y)  # any values: only shapes matter here
    with counter:
        backward_here(y, g) if simulated else y.backward(g)
    return y.detach(), x.grad


_INDUCTOR: list[InductorKernels] = []  # one per process: Dynamo caches code per backend


def compiled_regions(
    build: Callable[[], torch.nn.Module],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> KernelCount:
    """Kernels and bytes of the compiled regions in a layer's second training step, as
    Inductor's Triton backend generates them: the layer built on the CPU runs its regions
    through `simulate.InductorKernels` (the accelerator path forced on the CPU)."""
    from normbench.variants import _region

    if not _INDUCTOR:
        _INDUCTOR.append(InductorKernels())
    backend, cpu = _INDUCTOR[0], torch.device("cpu")
    # A fresh Dynamo: what earlier calls of the same region saw (other option values, dtypes,
    # shapes) would make its floats and sizes dynamic ("automatic dynamic") and change the
    # graph, so the count would depend on what ran before in this process. A model's layers
    # of one kind share their options, so the first compile is the graph a training runs.
    torch._dynamo.reset()
    torch.manual_seed(0)
    with cpu, _region.coefficient_mode("compiled"), _region.compiled_with(backend):
        layer = build().train()
        x = torch.randn(shape).to(dtype=dtype, memory_format=memory_format)

        def autocast() -> Any:
            return autocast_to(cpu, dtype, False)

        _step(layer, x, autocast, contextlib.nullcontext(), False)
        backend.count = KernelCount()
        _step(layer, x, autocast, contextlib.nullcontext(), False)
    return backend.count


def count_step(
    build: Callable[[], torch.nn.Module],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    *,
    regions: bool = True,
) -> tuple[_Tally, bool, bool]:
    """(tally of a layer's second training step, simulated, whether the output and input
    gradient kept `memory_format`); `build()` makes the layer, on `device` by default (the
    conformance kit calls this for any variant class). With `regions`, the compiled regions'
    kernels are counted (`compiled_regions`, which compiles; see the module docstring);
    without, they count nothing."""
    from normbench.variants import _region

    compiled = KernelCount()
    if regions and _region.active_on(device.type):
        compiled = compiled_regions(build, shape, dtype, memory_format)
    with on_device(device) as simulated:
        torch.manual_seed(0)  # SaBN draws its branch affine at random
        with device:  # the default device of the layer's factory calls
            layer = build().train()
        x = torch.randn(shape, device=device).to(dtype=dtype, memory_format=memory_format)

        def autocast() -> Any:
            return autocast_to(device, dtype, simulated)

        # the first step may initialise state (UBN); counted too (host reads need stand-ins)
        first = TrafficCounter(device.type)
        with _region.intercepted(first.run_region):
            _step(layer, x, autocast, first, simulated)
        counter = TrafficCounter(device.type, x.numel())
        with _region.intercepted(counter.run_region):
            y, dx = _step(layer, x, autocast, counter, simulated)
        kept = y.is_contiguous(memory_format=memory_format) and (
            dx is None or dx.is_contiguous(memory_format=memory_format)
        )
    counter.tally.compiled = compiled
    counter.tally.kernels += compiled.kernels
    return counter.tally, simulated, kept


def measure_layer(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    shape: tuple[int, ...] = DEFAULT_SHAPE,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
) -> LayerTraffic:
    """Bytes read and written, kernels, host syncs and the bound of one training step of a
    layer.

    `name`: a registered variant (built-in or plugin), built with `options` at shape[1]
    channels; `shape` (N, C, H, W); `dtype` the input's (bf16/fp16 run under autocast to it,
    as after an autocast convolution); `device` where it runs (FakeTensors of it when it is
    not here). Also steps a channels_last input to tell whether the layer keeps that format.
    Raises UnknownName (a UserError) for an unregistered name, UserError for bad options.
    """
    from normbench.variants_api import create_norm

    device = torch.device(device)
    options = dict(options or {})

    def build() -> torch.nn.Module:
        return create_norm(name, shape[1], **options)

    tally, simulated, _ = count_step(build, shape, dtype, device)
    _, _, kept = count_step(build, shape, dtype, device, torch.channels_last, regions=False)
    ref = _reference(shape, dtype, device)
    return LayerTraffic(
        name=name,
        options=options,
        shape=tuple(shape),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        simulated=simulated,
        read_bytes=tally.read,
        written_bytes=tally.written,
        activation_read=tally.act_read,
        activation_written=tally.act_written,
        conv_activation_bytes=tally.conv,
        conv_activation_written=tally.conv_written,
        kernels=tally.kernels,
        host_syncs=tally.syncs,
        host_copies=tally.copies,
        bound_bytes=int(BOUND_FACTOR * (ref.act_read + ref.act_written)),
        bound_written=int(BOUND_FACTOR * ref.act_written),
        channels_last_kept=kept,
        compiled_kernels=tally.compiled.kernels,
        compiled_bytes=tally.compiled.bytes,
        conv_kernels=tally.conv_kernels,
        bound_kernels=KERNEL_FACTOR * ref.kernels + tally.conv_kernels,
    )


_REFERENCES: dict[tuple[Any, ...], _Tally] = {}


def _reference(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> _Tally:
    """BN's tally for this input (cached per shape, dtype and device)."""
    key = (tuple(shape), dtype, str(device))
    if key not in _REFERENCES:
        from normbench.variants_api import create_norm

        _REFERENCES[key] = count_step(
            lambda: create_norm(REFERENCE, shape[1]), shape, dtype, device
        )[0]
    return _REFERENCES[key]
