"""The accelerator path of the element-wise non-linear layers: DyT, FRN with its TLU,
EvoNorm-S0 and EvoNorm-B0 (docs/variants.md#memory-traffic, #kernel-launches).

Each is y = f(x; coef) element by element with K per-(n, c) coefficients `coef` (K, N, C)
(the formulas: `_triton_elementwise`). For the layers with statistics, `coef` comes from the
per-instance moments m, v (N, C) of x through the layer's coefficient function
`statistics(m, v, ...)` (its group or batch statistics, running-statistics update, and the
per-channel parameters expanded to (N, C)), run as one compiled region (`_region.call`):

    forward:  moments (read x) -> region -> `pointwise_forward` (read x, write y)
    backward: `pointwise_grad_sums` (read g, x: the gradient of coef) -> the region's compiled
              backward (the parameters' gradients summed over samples, the moments' gradients)
              -> `pointwise_input_grad` (read g, x, write dx with the moments' term)

DyT has no statistics: its coef is (α, γ, β) expanded, its backward one pass (`dyt_backward`).
The element-wise node hands the direct term of dx to `_fused`'s moments node (its `_Handoff`),
which writes dx once with the statistics' term.

Where it runs (`path`): the Triton operators on an eager CUDA tensor of a kernel dtype; on the
CPU only with the accelerator path forced (`_region.coefficient_mode("compiled")`), where the
same region runs between `_fused.instance_moments` and the composite f (`composite`), so
`normbench bench traffic` counts the region's kernels and the tests check it in float64. The
layers keep their own composite forward everywhere else (CPU, float64, `torch.compile`,
`torch.func`). Double backward: the Functions' backward switches to the composite f,
differentiable; the compiled region's backward is not (as `_region`'s), so a gradient penalty
needs NORMBENCH_COEFFICIENTS=eager on this path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from . import _elementwise_kernels as ops
from . import _fused, _kernels, _region
from ._elementwise_kernels import DYT, EVO_B0, EVO_S0, FRN
from ._scope import gather_rows, global_scope

__all__ = ["DYT", "EVO_B0", "EVO_S0", "FRN", "composite", "dyt", "normalise", "path"]
Statistics = Callable[..., torch.Tensor]


def path(x: torch.Tensor) -> str | None:
    """ "cuda" (the Triton operators), "cpu" (the accelerator path forced on the CPU: region
    and composite f) or None (the layer's own composite forward)."""
    backend = _fused._backend(x)
    if backend == "cuda":
        return "cuda"
    return "cpu" if backend == "cpu" and _region.forced() else None


def _nc(t: torch.Tensor) -> torch.Tensor:
    return t[..., None, None]


def composite(kind: int, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """f(x; coef) in torch ops (coef's dtype, at least fp32), returned in x's dtype."""
    c = [_nc(t) for t in coef.unbind(0)]  # K x (N, C, 1, 1)
    xf = x.to(coef.dtype)
    if kind == DYT:
        y = c[1] * torch.tanh(c[0] * xf) + c[2]
    elif kind == FRN:
        y = xf * c[0] + c[1]
        y = torch.where(y >= c[2], y, c[2])  # a tie's gradient goes to y
    elif kind == EVO_S0:
        y = xf * torch.sigmoid(c[0] * xf) * c[1] + c[2]
    else:
        y = c[3] * xf / torch.maximum(c[0], c[2] * xf + c[1]) + c[4]
    return y.to(x.dtype)


def _region_or_eager(x: torch.Tensor, statistics: Statistics, *args: Any) -> torch.Tensor:
    return _region.call(statistics, *args) if _region.active(x) else statistics(*args)


def normalise(
    x: torch.Tensor,
    kind: int,
    statistics: Statistics,
    *args: Any,
    batch: bool = False,
) -> torch.Tensor:
    """y of a layer with per-instance statistics on `path(x)` (not None): coef =
    statistics(m, v, *args), or statistics(m, v, m_all, v_all, *args) with `batch` (the
    moments of every rank's batch under `stats_scope: global`, None otherwise);
    `statistics` a bound method (one compiled region per layer class)."""
    cuda = path(x) == "cuda"
    handoff = _fused._Handoff()
    if cuda:
        mean, var = _fused._InstanceMoments.apply(x, handoff, True)
    else:
        mean, var = _fused.instance_moments(x)
    if batch:
        # None: this rank's (not passed twice, which would add their gradients: 2 launches)
        whole = (gather_rows(mean), gather_rows(var)) if global_scope() else (None, None)
        args = (*whole, *args)
    coef = _region_or_eager(x, statistics, mean, var, *args)
    if cuda:
        return _Pointwise.apply(x, coef, kind, handoff)
    return composite(kind, x, coef)


def dyt(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """DyT on the Triton operators: y = γ·tanh(α·x) + β (CUDA path only)."""
    n, c = x.shape[:2]
    coef = torch.stack([t.to(_kernels.STATS).expand(n, c) for t in (alpha, weight, bias)])
    return _Pointwise.apply(x, coef, DYT, None)


class _Pointwise(torch.autograd.Function):
    """y = f_kind(x; coef); backward: the gradient of coef (one read of g and x), and dx
    directly (DyT) or handed to the moments' node (`handoff`)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, coef: torch.Tensor, kind: int, handoff: _fused._Handoff | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, coef)
        ctx.kind, ctx.handoff = kind, handoff
        return ops.pointwise_forward(x, coef, kind)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        x, coef = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the composite f, differentiable
            return (*_composite_grads(ctx, g, x, coef), None, None)
        if ctx.kind == DYT:
            dx, sums = ops.dyt_backward(g, x, coef)
            return (dx if ctx.needs_input_grad[0] else None), sums, None, None
        sums = ops.pointwise_grad_sums(g, x, coef, ctx.kind)
        if ctx.needs_input_grad[0]:  # NOTE: x's moments node needs d/dm, so it runs next
            ctx.handoff.grad = functools.partial(ops.pointwise_input_grad, g, x, coef, ctx.kind)
        return None, sums, None, None


def _composite_grads(
    ctx: Any, g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor
) -> list[torch.Tensor | None]:
    """(dx, dcoef) of the composite f, differentiable (create_graph). `torch.func.vjp` takes
    the partial derivatives: coef depends on x through the statistics, whose term the moments'
    node adds (`torch.autograd.grad` would count it here too)."""
    pullback = torch.func.vjp(functools.partial(composite, ctx.kind), x, coef)[1]
    dx, dcoef = pullback(g)
    needs = ctx.needs_input_grad[:2]
    return [t if need else None for t, need in zip((dx, dcoef), needs, strict=True)]
