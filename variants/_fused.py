"""Per-instance affine normalisation: chunked on an eager CPU, composite elsewhere; any order.

Every BN-family layer built here (BGN with G | C, GhostBN, IEBN, RBN, UBN, FourThings) maps its
input, per (sample, channel), by an affine function whose coefficients depend on the
per-instance moments m = mean over (H, W) and v = biased variance over (H, W), both (N, C), and
on parameters:

    y[n, c] = (x[n, c] − m[n, c]) · A[n, c] + Y[n, c]      (Y = the output at the instance mean)

`fused_instance_affine(x, coefficients, *params)` computes m and v, calls
`coefficients(m, v, *params) -> (A, Y)` (ordinary torch ops on (N, C) tensors, so autograd
differentiates them) and writes y. Two implementations of the same function:

* Eager on a CPU (`_fast_path`): two autograd Functions, `_InstanceMoments` (chunked two-pass
  moments) and `_InstanceAffine` (one affine pass; backward: the reductions S_g = Σ_hw g and
  S_gc = Σ_hw g·(x − m) in one chunked pass). Autograd joins them through the coefficient
  graph, so dL/dx = g·A + (x − m)·2·dL/dv / HW + dL/dm / HW: exact, centred (no cancellation
  of Σ g·x − m·Σ g for a large offset). The first-order input gradient is written in one
  pass: `_InstanceAffine`'s backward hands g and A to `_InstanceMoments`'s backward (through
  a shared `_Handoff`; autograd runs it later, as it needs the gradient of m), which writes
  all three terms at once, instead of two full-size gradients that autograd then adds. On
  CPU a fresh full-size tensor costs a page-faulting allocation, so the centred temporaries
  live in cache-sized chunks of samples. Neither backward is `once_differentiable`: under
  create_graph (double backward, gradient penalties) they switch to differentiable ops.
* Under `torch.compile` or a `torch.func` transform, and off the CPU: composite ops
  (`torch.var_mean`, `addcmul` on the centred input), which Dynamo traces with no graph break
  and Inductor fuses into a few loops; autograd differentiates them to any order.

Precision: the moments and the (N, C) coefficient graph run in at least fp32 with autocast
disabled (`statistics_precision`), whatever the input dtype or the autocast state (bf16
autocast would otherwise run the block-averaging matmul in bf16); y has the input's dtype and
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
rank's moments receive the gradient of the sum of all ranks' losses, SyncBatchNorm's rule).
This is exact: adding zeros rounds nothing. Layers whose fast path is `F.batch_norm` route
through `fused_instance_affine` while the context is active.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

Coefficients = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class _Scope:
    """The process group whose ranks' batches the statistics span (None: this batch only).

    A plain module attribute, not a ContextVar: Dynamo guards on it, so a compiled layer
    outside the context traces no collective (the single-device path stays one graph).
    """

    group: Any = None


@contextlib.contextmanager
def global_statistics(group: Any = None) -> Iterator[None]:
    """Batch statistics over every rank's batch of `group` (default: the whole world).

    Every rank must run the same layers on batches of equal size inside the context (a
    training step of a DDP trial). Nested use is not supported.
    """
    import torch.distributed as dist

    _Scope.group = group if group is not None else dist.group.WORLD
    try:
        yield
    finally:
        _Scope.group = None


def global_scope() -> bool:
    """Whether the statistics span every rank's batch (inside `global_statistics`)."""
    return _Scope.group is not None


def statistics_ranks() -> int:
    """Ranks whose batches the statistics span: the world size inside `global_statistics`,
    else 1. A layer's whole batch is `statistics_ranks() * N` samples."""
    if _Scope.group is None:
        return 1
    return _world(_Scope.group)[1]


def _world(group: Any) -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


@torch.compiler.disable  # a collective: eager, between compiled regions
def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (N, ...) stacked in rank order, (R x N, ...); `t` outside the context.

    Differentiable (the backward sends each rank the gradient of the sum of all ranks' losses
    with respect to its own rows). Every rank must pass the same shape.
    """
    if _Scope.group is None:
        return t
    rank, world = _world(_Scope.group)
    n = t.shape[0]
    pad = [0, 0] * (t.dim() - 1) + [rank * n, (world - 1 - rank) * n]
    return _AllReduceSum.apply(F.pad(t, pad), _Scope.group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: the sum over ranks of the gradients (d of Σ_r loss_r).

    What `torch.distributed.nn.functional.all_reduce` does (deprecated in torch 2.14); the
    backward is this Function again, so a double backward works too.
    """

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = t.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return _AllReduceSum.apply(grad, ctx.group), None


def own_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """This rank's N rows of a (R x N, ...) tensor from `gather_rows`; `t` outside the context."""
    if _Scope.group is None:
        return t
    rank = _world(_Scope.group)[0]
    return t[rank * n : (rank + 1) * n]


@torch.compiler.disable
def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over the ranks inside `global_statistics` (no gradient); `t` outside it."""
    if _Scope.group is None:
        return t
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t, group=_Scope.group)
    return t


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


def _fast_path(x: torch.Tensor) -> bool:
    """Eager CPU without a torch.func transform: the chunked kernels (see the docstring)."""
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and torch._C._functorch.peek_interpreter_stack() is None
    )


class _Handoff:
    """The affine term of dL/dx (g and A), passed from `_InstanceAffine`'s backward to
    `_InstanceMoments`'s backward of the same call, which adds it in its own pass."""

    def __init__(self) -> None:
        self.grad: tuple[torch.Tensor, torch.Tensor] | None = None


class _InstanceMoments(torch.autograd.Function):
    """(m, v) = per-instance mean and biased variance of x over (H, W), chunked forward.

    Backward dL/dx = dL/dm / HW + (x − m)·2·dL/dv / HW (+ g·A when `_InstanceAffine` handed
    it over): chunked when only first-order gradients are wanted; in differentiable ops
    (recomputing m from x) under create_graph.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, handoff: _Handoff) -> Any:
        mean, var = chunked_moments(x)
        ctx.save_for_backward(x, mean)
        ctx.handoff = handoff
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor, g_var: torch.Tensor) -> Any:
        x, mean = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]
        p, q = 2.0 * g_var / hw, g_mean / hw
        if torch.is_grad_enabled():  # double backward: differentiable in x
            centred = x.to(mean.dtype) - _nc11(x.to(mean.dtype).mean(dim=(2, 3)))
            return (centred * _nc11(p) + _nc11(q)).to(x.dtype), None
        affine, ctx.handoff.grad = ctx.handoff.grad, None
        return _input_grad(x, mean, p, q, affine), None


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
    ) -> torch.Tensor:
        ctx.save_for_backward(x, mean, scale)
        ctx.handoff = handoff
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
            s_g, s_gc = _grad_reductions(g, x, mean)
            if ctx.needs_input_grad[0]:  # NOTE: x's moments node needs d/dm, so it runs next
                ctx.handoff.grad = (g, scale)
        return grad_x, -s_g * scale, s_gc, s_g, None


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

    `torch.compile` traces this context manager (no graph break).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance over (H, W), (N, C) each, in `stats_dtype(x)`.

    `torch.var_mean` (a single-kernel, cancellation-free reduction); differentiable.
    """
    var, mean = torch.var_mean(x.to(stats_dtype(x)), dim=(2, 3), correction=0)
    return mean, var


def fused_instance_affine(
    x: torch.Tensor, coefficients: Coefficients, *params: torch.Tensor
) -> torch.Tensor:
    """Apply y = (x − m)·A + Y per (n, c), (A, Y) = coefficients(m, v, *params), (N, C) each.

    x: (N, C, H, W), any floating dtype; m, v: the per-instance moments of x (N, C) in at least
    fp32. `coefficients` may update buffers under `torch.no_grad()` (running statistics); it
    runs with autocast disabled. Returns y with x's shape, dtype and memory format.
    """
    with statistics_precision(x):
        if _fast_path(x):
            handoff = _Handoff()
            mean, var = _InstanceMoments.apply(x, handoff)
            scale, at_mean = _global_coefficients(coefficients, mean, var, params)
            return _InstanceAffine.apply(x, mean, scale, at_mean, handoff)
        mean, var = instance_moments(x)
        scale, at_mean = _global_coefficients(coefficients, mean, var, params)
        centred = x.to(mean.dtype) - _nc11(mean)
        y = torch.addcmul(_nc11(at_mean), centred, _nc11(scale))
    return y.to(x.dtype)


def _global_coefficients(
    coefficients: Coefficients, mean: torch.Tensor, var: torch.Tensor, params: tuple[Any, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`coefficients` on the whole batch's moments (inside `global_statistics`), this rank's rows.

    (A, Y) may broadcast over samples ((1, C) or (C,)): only (R x N, C) results are sliced.
    """
    if _Scope.group is None:
        return coefficients(mean, var, *params)
    n = mean.shape[0]
    scale, at_mean = coefficients(gather_rows(mean), gather_rows(var), *params)
    whole = n * statistics_ranks()

    def mine(t: torch.Tensor) -> torch.Tensor:
        return own_rows(t, n) if t.dim() == 2 and t.shape[0] == whole else t

    return mine(scale), mine(at_mean)


def block_moments(
    mean: torch.Tensor, var: torch.Tensor, sizes: list[int], channels_per_group: int
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Mean and biased variance of x over blocks, from its per-instance moments (N, C).

    A block is a run of contiguous samples (lengths `sizes`, K of them) times a group of
    `channels_per_group` contiguous channels (G = C / cpg), all positions: BN, BGN, GhostBN
    and FourThings statistics. Law of total variance, exact and free of cancellation:
    σ² = mean v_nc + mean (m_nc − μ)² over the block's (n, c). Returns μ, σ² (K, G) and a
    function expanding a (K, G) tensor to (N, C) (each (n, c) gets its block's value).
    Differentiable; call it with autocast disabled (`statistics_precision`): the averaging
    is a matmul, which autocast would run in bf16.
    """
    n, c = mean.shape
    k, g, device = len(sizes), c // channels_per_group, mean.device
    counts = torch.tensor(sizes, device=device)
    block = torch.repeat_interleave(torch.arange(k, device=device), counts, output_size=n)
    # (K, N) averaging matrix: row b holds 1/|b| on block b's samples.
    average = F.one_hot(block, k).T.to(mean.dtype) / counts[:, None].to(mean.dtype)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return (average @ t).reshape(k, g, channels_per_group).mean(dim=2)

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t[block].repeat_interleave(channels_per_group, dim=1)

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
