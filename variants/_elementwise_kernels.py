"""The element-wise layers' CUDA kernels (`_triton_elementwise`) as torch operators
(`torch.library`), as `_kernels` does for the per-instance affine: each kernel is one operator
`normbench::pointwise_*`, so autograd, `torch.compile` and the traffic counter see one call,
and FakeTensor/meta tensors get shapes from the fake implementations without importing Triton.

Shapes: x, g, y, dx (N, C, H, W) in any memory format, fp16, bf16 or fp32
(`_kernels.available`); `coef` the (K, N, C) stacked per-(n, c) coefficients of layer `kind`
(`_triton_elementwise.DYT` .. `EVO_B0`: the formulas there); sums (K, N, C) float32; mean, p,
q (N, C). The public functions convert their per-instance arguments to contiguous float32
outside the operators, where the dispatcher (and `normbench bench traffic`) sees any
conversion; the coefficient region's outputs need none.
"""

from __future__ import annotations

from typing import Any

import torch

from ._kernels import STATS, _stat, launch_over

DYT, FRN, EVO_S0, EVO_B0 = 0, 1, 2, 3  # `_triton_elementwise`'s, without importing Triton


def _over(
    name: str, x: torch.Tensor, args: tuple[Any, ...], strided: tuple[torch.Tensor, ...],
    **meta: Any,
) -> None:  # fmt: skip
    """Kernel `name` of `_triton_elementwise` over x (`_kernels.launch_over`), N·C after
    `args` (the (K, N, C) planes' distance)."""
    args = (*args, x.shape[0] * x.shape[1])
    launch_over("_triton_elementwise", name, x, args, strided, **meta)


def pointwise_forward(x: torch.Tensor, coef: torch.Tensor, kind: int) -> torch.Tensor:
    """y = f_kind(x; coef), in x's dtype and memory format; reads x once."""
    return _forward(x, coef.to(STATS).contiguous(), kind)


@torch.library.custom_op("normbench::pointwise_forward", mutates_args=())
def _forward(x: torch.Tensor, coef: torch.Tensor, kind: int) -> torch.Tensor:
    y = torch.empty_like(x)
    _over("pointwise_forward", x, (x, y, coef), (x, y), tiles=True, KIND=kind)
    return y


@_forward.register_fake
def _(x: torch.Tensor, coef: torch.Tensor, kind: int) -> torch.Tensor:
    return torch.empty_like(x)


def pointwise_grad_sums(
    g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, kind: int
) -> torch.Tensor:
    """Σ_hw g·∂y/∂coef_k per (n, c): the gradient of `coef`, (K, N, C) float32; reads g and x
    once."""
    return _grad_sums(g, x, coef.to(STATS).contiguous(), kind)


@torch.library.custom_op("normbench::pointwise_grad_sums", mutates_args=())
def _grad_sums(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, kind: int) -> torch.Tensor:
    sums = torch.empty_like(coef)
    _sums_launch(g, x, x, coef, sums, kind, write_dx=False)
    return sums


@_grad_sums.register_fake
def _(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, kind: int) -> torch.Tensor:
    return torch.empty_like(coef)


def dyt_backward(
    g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DyT's whole backward in one pass: (dx in x's dtype and memory format, the (3, N, C)
    sums of its coefficients' gradients); reads g and x once."""
    return _dyt_backward(g, x, coef.to(STATS).contiguous())


@torch.library.custom_op("normbench::dyt_backward", mutates_args=())
def _dyt_backward(
    g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    dx, sums = torch.empty_like(x), torch.empty_like(coef)
    _sums_launch(g, x, dx, coef, sums, DYT, write_dx=True)
    return dx, sums


@_dyt_backward.register_fake
def _(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor) -> Any:
    return torch.empty_like(x), torch.empty_like(coef)


def _sums_launch(
    g: torch.Tensor,
    x: torch.Tensor,
    dx: torch.Tensor,
    coef: torch.Tensor,
    sums: torch.Tensor,
    kind: int,
    *,
    write_dx: bool,
) -> None:
    if not x.numel():
        sums.zero_()
    meta = {"KIND": kind, "WRITE_DX": write_dx}
    _over("pointwise_grad_sums", x, (g, x, dx, coef, sums), (x, g, dx), tiles=False, **meta)


def pointwise_input_grad(
    g: torch.Tensor,
    x: torch.Tensor,
    coef: torch.Tensor,
    kind: int,
    mean: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    p_scale: float,
    q_scale: float,
) -> torch.Tensor:
    """dx = g·∂y/∂x + (x − mean)·p·p_scale + q·q_scale per (n, c) (the second term: the
    per-instance moments' gradients, p_scale = 2/(H·W), q_scale = 1/(H·W)), in x's dtype and
    memory format; reads g and x once. Not for DyT (no statistics: `dyt_backward`)."""
    if kind == DYT:
        raise ValueError("DyT has no statistics: its input gradient comes from dyt_backward")
    stats = [_stat(t, x) for t in (mean, p, q)]
    return _input_grad(g, x, coef.to(STATS).contiguous(), kind, *stats, p_scale, q_scale)


@torch.library.custom_op("normbench::pointwise_input_grad", mutates_args=())
def _input_grad(
    g: torch.Tensor,
    x: torch.Tensor,
    coef: torch.Tensor,
    kind: int,
    mean: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    p_scale: float,
    q_scale: float,
) -> torch.Tensor:
    dx = torch.empty_like(x)
    args = (g, x, dx, coef, mean, p, q, p_scale, q_scale)
    _over("pointwise_input_grad", x, args, (x, g, dx), tiles=True, KIND=kind)
    return dx


@_input_grad.register_fake
def _(g: torch.Tensor, x: torch.Tensor, coef: Any, kind: int, mean: Any, p: Any, q: Any,
      p_scale: float, q_scale: float) -> torch.Tensor:  # fmt: skip
    return torch.empty_like(x)
