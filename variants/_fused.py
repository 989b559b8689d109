"""Per-instance affine normalisation: chunked on an eager CPU, Triton kernels on an eager CUDA
device, composite ops elsewhere; gradients of any order.

Every BN-family layer built here (BGN with G | C, GhostBN, IEBN, RBN, UBN, FourThings) maps its
input, per (sample, channel), by an affine function whose coefficients depend on the
per-instance moments m = mean over (H, W) and v = biased variance over (H, W), both (N, C), and
on parameters:

    y[n, c] = (x[n, c] − m[n, c]) · A[n, c] + Y[n, c]      (Y = the output at the instance mean)

`fused_instance_affine(x, coefficients, *params)` computes m and v, calls
`coefficients(m, v, *params) -> (A, Y)` (ordinary torch ops on (N, C) tensors, so autograd
differentiates them) and writes y. Three implementations of the same function:

* Eager on a CPU or a CUDA device (`_backend`): two autograd Functions, `_InstanceMoments`
  (chunked two-pass moments) and `_InstanceAffine` (one affine pass; backward: the reductions
  S_g = Σ_hw g and S_gc = Σ_hw g·(x − m) in one chunked pass). Autograd joins them through the
  coefficient graph, so dL/dx = g·A + (x − m)·2·dL/dv / HW + dL/dm / HW: exact, centred (no
  cancellation of Σ g·x − m·Σ g for a large offset). The first-order input gradient is written
  in one pass: `_InstanceAffine`'s backward hands g and A to `_InstanceMoments`'s backward
  (through a shared `_Handoff`; autograd runs it later, as it needs the gradient of m), which
  writes all three terms at once, instead of two full-size gradients that autograd then adds.
  On CPU a fresh full-size tensor costs a page-faulting allocation, so the centred temporaries
  live in cache-sized chunks of samples. On CUDA the four passes are Triton kernels
  (`_kernels`, one `normbench::` operator each) that read x (and g) once per pass and write
  only y or dx: about BN's memory traffic (docs/variants.md#memory-traffic); there the
  coefficient math runs as one compiled region (`_region`: a few fused kernels instead of one
  launch per op, docs/variants.md#kernel-launches). Neither backward
  is `once_differentiable`: under create_graph (double backward, gradient penalties) they
  switch to differentiable ops.
* Under `torch.compile` or a `torch.func` transform, on other devices, and for float64 on
  CUDA: composite ops (`torch.var_mean`, `addcmul` on the centred input), which Dynamo traces
  with no graph break and Inductor fuses into a few loops; autograd differentiates them to
  any order.

Precision: the moments and the (N, C) coefficient graph run in at least fp32 with autocast
disabled (`statistics_precision`), whatever the input dtype or the autocast state (bf16
autocast would otherwise run reductions in bf16); y has the input's dtype and
memory format (channels_last included).

The batch statistics of every BN-family layer come from these per-instance moments through
`block_moments` here or `_core.batch_moments`.

Global statistics across devices (`global_statistics`): inside that context (a data-parallel
trial with `stats_scope: global` installs it around each training forward) every rank's
per-instance moments (N, C) are exchanged before `coefficients` runs, so `coefficients` sees
the moments of the whole R x N batch (rank order) and computes what the layer computes on that
batch on one device: block statistics, counts, running-statistics updates. Each rank then keeps
its own rows of (A, Y). The exchange is one differentiable all-reduce of the moments
zero-padded to (R x N, C) (`_AllReduceSum`: its backward all-reduces the gradient, so each
rank's moments receive the gradient of the sum of all ranks' losses, SyncBatchNorm's rule;
`_scope`). This is exact: adding zeros rounds nothing. Layers whose fast path is
`F.batch_norm` route through `fused_instance_affine` while the context is active.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _kernels, _region
from ._scope import (  # noqa: F401  (re-exported: `_fused` was their home)
    _Scope,
    all_sum,
    gather_rows,
    global_scope,
    global_statistics,
    own_rows,
    statistics_ranks,
)

Coefficients = Callable[..., tuple[torch.Tensor, torch.Tensor]]


# Elements per chunk (1 MiB of fp32): the centred temporaries go to one scratch buffer that
# stays in cache; fresh full-size temporaries would cost page-faulting allocations.
CHUNK_ELEMENTS = 1 << 18

Index = tuple[slice, slice]


def _nc11(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], 1, 1)


def _chunk_limit(x: torch.Tensor) -> int:
    """CHUNK_ELEMENTS on CPU; the whole tensor elsewhere.

    NOTE: on a GPU the caching allocator makes full-size temporaries cheap, while every chunk
    costs kernel launches, so one chunk is the fast choice there.
    """
    return CHUNK_ELEMENTS if x.device.type == "cpu" else max(x.numel(), 1)


def _chunks(x: torch.Tensor) -> Iterator[Index]:
    """(samples, channels) index blocks of at most `_chunk_limit` elements (or one plane)."""
    n, c, h, w = x.shape
    hw = max(h * w, 1)
    limit = _chunk_limit(x)
    channels = min(max(limit // hw, 1), c)
    samples = max(limit // (hw * c), 1) if channels == c else 1
    for n0 in range(0, n, samples):
        for c0 in range(0, c, channels):
            yield slice(n0, min(n0 + samples, n)), slice(c0, min(c0 + channels, c))


def _scratch(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A buffer for one chunk's temporaries (flat; viewed per chunk by `_view`)."""
    n, c, h, w = x.shape
    return x.new_empty(min(max(_chunk_limit(x), h * w), x.numel()), dtype=dtype)


def _view(scratch: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scratch[: like.numel()].view(like.shape)


def chunked_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance over (H, W), (N, C) each, two-pass, no grad."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    mean = x.new_empty(x.shape[:2], dtype=dtype)
    var = torch.empty_like(mean)
    scratch = _scratch(x, dtype)
    for idx in _chunks(x):
        part = x[idx]  # read from memory once; the second pass finds it in cache
        m = torch.mean(part, dim=(2, 3), dtype=dtype, out=mean[idx])
        centred = torch.sub(part, _nc11(m), out=_view(scratch, part))
        torch.linalg.vector_norm(centred, dim=(2, 3), out=var[idx])
    return mean, var.square_().div_(x.shape[2] * x.shape[3])


def _grad_reductions(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_g = Σ_hw g and S_gc = Σ_hw g·(x − m), (N, C) each, in the mean's dtype."""
    sums, dots = torch.empty_like(mean), torch.empty_like(mean)
    scratch, m = _scratch(x, mean.dtype), _nc11(mean)
    for idx in _chunks(x):
        part = g[idx]
        torch.sum(part, dim=(2, 3), dtype=mean.dtype, out=sums[idx])
        centred = torch.sub(x[idx], m[idx], out=_view(scratch, part))
        torch.sum(centred.mul_(part), dim=(2, 3), out=dots[idx])
    return sums, dots


def _transformed() -> bool:
    """Inside a `torch.func` transform (vmap, grad, ...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def _backend(x: torch.Tensor) -> str | None:
    """ "cpu" (chunked kernels), "cuda" (Triton kernels) or None (composite ops): the
    Functions run eagerly, without a torch.func transform, on a CPU or a kernel-ready CUDA
    tensor (see the module docstring)."""
    if torch.compiler.is_compiling() or _transformed():
        return None
    if x.device.type == "cpu":
        return "cpu"
    return "cuda" if _kernels.available(x) else None


def accelerator_path(x: torch.Tensor) -> bool:
    """Whether `x` takes the accelerator's code path: off the CPU, or on it with the
    coefficients forced compiled (`_region.coefficient_mode("compiled")`: how the tests and
    `normbench bench traffic` run that path without a GPU). GN takes `F.group_norm` otherwise."""
    return x.device.type != "cpu" or _region.forced()


def regions_on(x: torch.Tensor) -> bool:
    """Whether the per-channel math of `x`'s layer runs as compiled regions (`_region.call`):
    the Functions run (eager, no transform) and the mode compiles on `x`'s device."""
    return _backend(x) is not None and _region.active(x)


def _fast_path(x: torch.Tensor) -> bool:
    """Whether `fused_instance_affine` runs its autograd Functions (`_backend` is not None)."""
    return _backend(x) is not None


InputGrad = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]


class _Handoff:
    """The affine term of dL/dx (g and A), passed from `_InstanceAffine`'s backward to
    `_InstanceMoments`'s backward of the same call, which adds it in its own pass; or, from
    another element-wise node on CUDA (`_elementwise`), a function that writes the whole dx
    given (m, dL/dv, dL/dm, 2/(H·W), 1/(H·W))."""

    def __init__(self) -> None:
        self.grad: tuple[torch.Tensor, torch.Tensor] | InputGrad | None = None


class _InstanceMoments(torch.autograd.Function):
    """(m, v) = per-instance mean and biased variance of x over (H, W), chunked forward.

    Backward dL/dx = dL/dm / HW + (x − m)·2·dL/dv / HW (+ g·A when `_InstanceAffine` handed
    it over): chunked when only first-order gradients are wanted; in differentiable ops
    (recomputing m from x) under create_graph.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, handoff: _Handoff, cuda: bool) -> Any:
        mean, var = _kernels.instance_moments(x) if cuda else chunked_moments(x)
        ctx.save_for_backward(x, mean)
        ctx.handoff, ctx.cuda = handoff, cuda
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor, g_var: torch.Tensor) -> Any:
        x, mean = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]
        affine, ctx.handoff.grad = ctx.handoff.grad, None
        if callable(affine) and not torch.is_grad_enabled():
            return affine(mean, g_var, g_mean, 2.0 / hw, 1.0 / hw), None, None
        if ctx.cuda and not torch.is_grad_enabled():  # the kernel scales p and q itself
            g, a = affine if isinstance(affine, tuple) else (None, None)
            dx = _kernels.instance_input_grad(x, mean, g_var, g_mean, g, a, 2.0 / hw, 1.0 / hw)
            return dx, None, None
        p, q = 2.0 * g_var / hw, g_mean / hw
        if torch.is_grad_enabled():  # double backward: differentiable in x
            centred = x.to(mean.dtype) - _nc11(x.to(mean.dtype).mean(dim=(2, 3)))
            return (centred * _nc11(p) + _nc11(q)).to(x.dtype), None, None
        return _input_grad(x, mean, p, q, affine if isinstance(affine, tuple) else None), None, None


class _InstanceAffine(torch.autograd.Function):
    """y = (x − m)·A + Y per (n, c); backward reductions S_g = Σ g, S_gc = Σ g·(x − m) in one
    chunked pass (centred: no cancellation for a large offset)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        at_mean: torch.Tensor,
        handoff: _Handoff,
        cuda: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, mean, scale)
        ctx.handoff, ctx.cuda = handoff, cuda
        if cuda:
            return _kernels.instance_affine(x, mean, scale, at_mean)
        shift = at_mean - mean * scale  # fp32 or wider: a bf16 x is promoted, then rounded once
        return torch.addcmul(_nc11(shift), x, _nc11(scale)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        x, mean, scale = ctx.saved_tensors
        grad_x = None
        if torch.is_grad_enabled():  # double backward: differentiable ops
            centred = x.to(mean.dtype) - _nc11(mean)
            s_g = g.to(mean.dtype).sum(dim=(2, 3))
            s_gc = (g.to(mean.dtype) * centred).sum(dim=(2, 3))
            if ctx.needs_input_grad[0]:
                grad_x = (g * _nc11(scale)).to(x.dtype)
        else:
            sums = _kernels.instance_grad_sums if ctx.cuda else _grad_reductions
            s_g, s_gc = sums(g, x, mean)
            if ctx.needs_input_grad[0]:  # NOTE: x's moments node needs d/dm, so it runs next
                ctx.handoff.grad = (g, scale)
        # the mean's term −A·S_g; none for a detached mean (the compiled region owns it)
        grad_mean = -s_g * scale if ctx.needs_input_grad[1] else None
        return grad_x, grad_mean, s_gc, s_g, None, None


def _input_grad(
    x: torch.Tensor,
    m: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x − m)·P + Q (+ g·A with `affine` = (g, A)), chunk by chunk into one tensor like x."""
    out = torch.empty_like(x)
    dt = x.dtype
    m, p, q = (_nc11(t).to(dt) for t in (m, p, q))
    g, a = affine if affine is not None else (None, None)
    a = _nc11(a).to(dt) if a is not None else None
    scratch = _scratch(x, dt) if g is not None else None
    for idx in _chunks(x):
        part = out[idx]
        torch.sub(x[idx], m[idx], out=part)
        torch.addcmul(q[idx], part, p[idx], out=part)
        if g is not None and a is not None and scratch is not None:
            # NOTE: a product then a sum, each rounded, the same floats as the two terms
            # autograd adds; addcmul_ rounds once (fused), 1 ulp apart in about a third of
            # the elements, and with it a 2-rank DDP UBN trial drifted from its virtual-device
            # twin (stem weight 0.5% apart after 4 steps; tests/engine/test_distributed.py).
            part.add_(torch.mul(g[idx], a[idx], out=_view(scratch, part)))
    return out


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics of `x` are computed in: at least fp32 (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


@contextlib.contextmanager
def statistics_precision(x: torch.Tensor) -> Iterator[None]:
    """Autocast off for the statistics of `x` (on its device type): they stay fp32 or wider.

    `torch.compile` traces this context manager (no graph break). The meta device has no
    autocast (shape-only runs: there is nothing to turn off).
    """
    if x.device.type == "meta":
        yield
        return
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance over (H, W), (N, C) each, in `stats_dtype(x)`.

    `torch.var_mean` (a single-kernel, cancellation-free reduction); differentiable.
    """
    var, mean = torch.var_mean(x.to(stats_dtype(x)), dim=(2, 3), correction=0)
    return mean, var


def fused_instance_affine(
    x: torch.Tensor,
    coefficients: Coefficients,
    *params: torch.Tensor,
    across_ranks: bool = True,
) -> torch.Tensor:
    """Apply y = (x − m)·A + Y per (n, c), (A, Y) = coefficients(m, v, *params), (N, C) each.

    x: (N, C, H, W), any floating dtype; m, v: the per-instance moments of x (N, C) in at least
    fp32. `coefficients` may update buffers under `torch.no_grad()` (running statistics); it
    runs with autocast disabled. On CUDA it runs as a compiled region (`_region`) when it is a
    bound method or a `functools.partial` of one (a closure runs eagerly). Inside
    `global_statistics` it sees every rank's moments unless `across_ranks` is False (a
    batch-independent layer: IN, GN). Returns y with x's shape, dtype and memory format.
    """
    with statistics_precision(x):
        backend = _backend(x)
        if backend is not None:
            handoff, cuda = _Handoff(), backend == "cuda"
            mean, var = _InstanceMoments.apply(x, handoff, cuda)
            compiled = _region.active(x) and _region.compilable(coefficients)
            scale, at_mean = _global_coefficients(
                coefficients, mean, var, params, across_ranks, compiled
            )
            centre = mean.detach() if compiled else mean  # see _region: its Y owns d/dm
            return _InstanceAffine.apply(x, centre, scale, at_mean, handoff, cuda)
        mean, var = instance_moments(x)
        scale, at_mean = _global_coefficients(coefficients, mean, var, params, across_ranks)
        centred = x.to(mean.dtype) - _nc11(mean)
        y = torch.addcmul(_nc11(at_mean), centred, _nc11(scale))
    return y.to(x.dtype)


def sample_weighted_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_n weights[n]·x[n], (C, H, W) in at least fp32, no gradient; x (N, C, H, W) in any
    memory format is read once (a Triton operator on CUDA, a mat-vec elsewhere)."""
    traced = torch.compiler.is_compiling()  # NOTE: Dynamo answers `_transformed()` True
    if _backend(x) == "cuda" or (
        traced and (x.is_cpu or _kernels.available(x)) and x.dtype in _kernels.KERNEL_DTYPES
    ):  # eager CUDA, or compiled (a region or a model: an operator that reads x once)
        return _kernels.sample_weighted_sum(x, weights)
    n, c, h, w = x.shape
    dtype = stats_dtype(x)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # (N, H·W·C): a free view of channels_last, summed in that order
        flat = weights.to(dtype) @ x.permute(0, 2, 3, 1).reshape(n, -1).to(dtype)
        return flat.reshape(h, w, c).permute(2, 0, 1)
    return (weights.to(dtype) @ x.reshape(n, -1).to(dtype)).reshape(c, h, w)


def _global_coefficients(
    coefficients: Coefficients,
    mean: torch.Tensor,
    var: torch.Tensor,
    params: tuple[Any, ...],
    across_ranks: bool = True,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`coefficients` on the whole batch's moments (inside `global_statistics`), this rank's rows;
    as a compiled region (`_region.run`) if `compiled`.

    (A, Y) may broadcast over samples ((1, C) or (C,)): only (R x N, C) results are sliced.
    """

    def evaluate(m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _region.run(coefficients, m, v, params) if compiled else coefficients(m, v, *params)

    if _Scope.group is None or not across_ranks:
        return evaluate(mean, var)
    n = mean.shape[0]
    scale, at_mean = evaluate(gather_rows(mean), gather_rows(var))
    whole = n * statistics_ranks()

    def mine(t: torch.Tensor) -> torch.Tensor:
        return own_rows(t, n) if t.dim() == 2 and t.shape[0] == whole else t

    return mine(scale), mine(at_mean)


def block_moments(
    mean: torch.Tensor, var: torch.Tensor, chunk: int, channels_per_group: int
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Mean and biased variance of x over blocks, from its per-instance moments (N, C).

    A block is a run of `chunk` contiguous samples (the last one shorter when chunk ∤ N; K
    blocks) times a group of `channels_per_group` contiguous channels (G = C / cpg), all
    positions: BN, BGN, GhostBN and FourThings statistics. Law of total variance, exact and
    free of cancellation: σ² = mean v_nc + mean (m_nc − μ)² over the block's (n, c). Returns
    μ, σ² (K, G) and a function expanding a (K, G) tensor to (N, C) (each (n, c) gets its
    block's value). Differentiable; reshapes and means only, so no tensor is built from host
    data (no host-to-device copy or sync on a GPU).
    """
    n, c = mean.shape
    cpg = channels_per_group
    g, full = c // cpg, n - n % chunk

    def pool(t: torch.Tensor) -> torch.Tensor:  # (N, C) -> (K, G): one reduction per part
        parts = [t[:full].reshape(full // chunk, chunk, g, cpg).mean(dim=(1, 3))] if full else []
        if full < n:  # the short last block
            parts.append(t[full:].reshape(1, n - full, g, cpg).mean(dim=(1, 3)))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def expand(t: torch.Tensor) -> torch.Tensor:  # (K, G) -> (N, C)
        k = t.shape[0]
        rows = t[:, None, :].expand(k, chunk, g).reshape(k * chunk, g)[:n]  # (N, G)
        return rows[:, :, None].expand(n, g, cpg).reshape(n, c)

    mu = pool(mean)
    return mu, pool(var) + pool((mean - expand(mu)).square()), expand


def block_affine(
    mean: torch.Tensor,
    mu: torch.Tensor,
    block_var: torch.Tensor,
    expand: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Y) of y = (x − mean)·A + Y when each (n, c) is normalised by its block's statistics.

    `mu`, `block_var` (K, G) and `expand` come from `block_moments`; `mean` (N, C) is the
    per-instance mean, `weight`, `bias` (C,) the affine: A = γ/sqrt(σ² + eps), Y = β + (m − μ)·A.
    """
    scale = weight * expand(torch.rsqrt(block_var + eps))  # (N, C)
    return scale, bias + (mean - expand(mu)) * scale
