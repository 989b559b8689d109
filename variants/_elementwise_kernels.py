"""DyT's, FRN's and EvoNorm-S0's CUDA kernels as torch operators (`torch.library`), as
`_kernels` does for the per-instance affine: each Triton kernel of `_triton_elementwise` is one
operator `normbench::<name>`, so autograd, `torch.compile` and the traffic counter see one
call, and FakeTensor/meta tensors get shapes from the fake implementations without importing
Triton. x, g, y, dx: (N, C, H, W)
in any memory format, fp16, bf16 or fp32 (`_kernels.available`); alpha (1,), weight, bias,
tau (C,); per-(n, c) coefficients and sums (N, C) float32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ._kernels import STATS, _blocks, _cdiv, _geometry, _stat


def _launch(x: torch.Tensor, name: str, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    from normbench.variants import _triton_elementwise

    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _triton_elementwise.kernels()[name][grid](*args, **meta)


def _param(p: torch.Tensor) -> torch.Tensor:
    return p.detach().to(STATS).contiguous()


@torch.library.custom_op("normbench::dyt_forward", mutates_args=())
def dyt_forward(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """y = weight_c·tanh(alpha·x) + bias_c, in x's dtype and memory format; reads x once."""
    y = torch.empty_like(x)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=True)
        c, w, hw = _geometry(x)
        grid = (x.shape[0], _cdiv(c, bc), _cdiv(hw, bhw))
        _launch(
            x, "dyt_forward", grid,
            x, y, _param(alpha), _param(weight), _param(bias),
            c, w, hw, *x.stride(), *y.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return y


@dyt_forward.register_fake
def _(x: torch.Tensor, alpha: Any, weight: Any, bias: Any) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("normbench::dyt_backward", mutates_args=())
def dyt_backward(
    g: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, Σ_hw g·t, Σ_hw g, Σ_hw g·weight·(1 − t²)·x) with t = tanh(alpha·x): dx in x's dtype
    and memory format, the sums (N, C) float32; reads g and x once."""
    dx = torch.empty_like(x)
    s_t = x.new_empty(x.shape[:2], dtype=STATS)
    s_g, s_a = torch.empty_like(s_t), torch.empty_like(s_t)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=False)
        c, w, hw = _geometry(x)
        grid = (x.shape[0], _cdiv(c, bc))
        _launch(
            x, "dyt_backward", grid,
            g, x, dx, s_t, s_g, s_a, _param(alpha), _param(weight),
            c, w, hw, *x.stride(), *g.stride(), *dx.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return dx, s_t, s_g, s_a


@dyt_backward.register_fake
def _(g: torch.Tensor, x: torch.Tensor, alpha: Any, weight: Any) -> Any:
    s = x.new_empty(x.shape[:2], dtype=STATS)
    return torch.empty_like(x), s, torch.empty_like(s), torch.empty_like(s)


@torch.library.custom_op("normbench::frn_forward", mutates_args=())
def frn_forward(
    x: torch.Tensor, a: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """z = max(x·a + bias_c, tau_c) with a (N, C), in x's dtype and memory format."""
    z = torch.empty_like(x)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=True)
        c, w, hw = _geometry(x)
        grid = (x.shape[0], _cdiv(c, bc), _cdiv(hw, bhw))
        _launch(
            x, "frn_forward", grid,
            x, z, _stat(a, x), _param(bias), _param(tau),
            c, w, hw, *x.stride(), *z.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return z


@frn_forward.register_fake
def _(x: torch.Tensor, a: Any, bias: Any, tau: Any) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("normbench::frn_grad_sums", mutates_args=())
def frn_grad_sums(
    g: torch.Tensor, x: torch.Tensor, a: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ_hw g·x and Σ_hw g where the TLU passes y (y >= tau), Σ_hw g where it gives tau;
    (N, C) float32 each; reads g and x once."""
    s_gx = x.new_empty(x.shape[:2], dtype=STATS)
    s_g, s_tau = torch.empty_like(s_gx), torch.empty_like(s_gx)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=False)
        c, w, hw = _geometry(x)
        _launch(
            x, "frn_grad_sums", (x.shape[0], _cdiv(c, bc)),
            g, x, _stat(a, x), _param(bias), _param(tau), s_gx, s_g, s_tau,
            c, w, hw, *x.stride(), *g.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return s_gx, s_g, s_tau


@frn_grad_sums.register_fake
def _(g: torch.Tensor, x: torch.Tensor, a: Any, bias: Any, tau: Any) -> Any:
    s = x.new_empty(x.shape[:2], dtype=STATS)
    return s, torch.empty_like(s), torch.empty_like(s)


@torch.library.custom_op("normbench::frn_input_grad", mutates_args=())
def frn_input_grad(
    g: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    bias: torch.Tensor,
    tau: torch.Tensor,
    p: torch.Tensor,
) -> torch.Tensor:
    """dx = x·p + g·a where the TLU passes y, with a, p (N, C); x's dtype and memory format."""
    dx = torch.empty_like(x)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=True)
        c, w, hw = _geometry(x)
        grid = (x.shape[0], _cdiv(c, bc), _cdiv(hw, bhw))
        _launch(
            x, "frn_input_grad", grid,
            g, x, dx, _stat(a, x), _param(bias), _param(tau), _stat(p, x),
            c, w, hw, *x.stride(), *g.stride(), *dx.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return dx


@frn_input_grad.register_fake
def _(g: torch.Tensor, x: torch.Tensor, a: Any, bias: Any, tau: Any, p: Any) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("normbench::evo_s0_forward", mutates_args=())
def evo_s0_forward(
    x: torch.Tensor, v: torch.Tensor, k: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """y = x·sigmoid(v_c·x)·k + bias_c with k (N, C), in x's dtype and memory format."""
    y = torch.empty_like(x)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=True)
        c, w, hw = _geometry(x)
        grid = (x.shape[0], _cdiv(c, bc), _cdiv(hw, bhw))
        _launch(
            x, "evo_s0_forward", grid,
            x, y, _param(v), _stat(k, x), _param(bias),
            c, w, hw, *x.stride(), *y.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return y


@evo_s0_forward.register_fake
def _(x: torch.Tensor, v: Any, k: Any, bias: Any) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("normbench::evo_s0_grad_sums", mutates_args=())
def evo_s0_grad_sums(
    g: torch.Tensor, x: torch.Tensor, v: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ_hw g·x·s, Σ_hw g, Σ_hw g·k·x²·s·(1 − s)) with s = sigmoid(v_c·x): the gradients
    of k, β and v per (n, c), float32; reads g and x once."""
    s1 = x.new_empty(x.shape[:2], dtype=STATS)
    s2, s3 = torch.empty_like(s1), torch.empty_like(s1)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=False)
        c, w, hw = _geometry(x)
        _launch(
            x, "evo_s0_grad_sums", (x.shape[0], _cdiv(c, bc)),
            g, x, _param(v), _stat(k, x), s1, s2, s3,
            c, w, hw, *x.stride(), *g.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return s1, s2, s3


@evo_s0_grad_sums.register_fake
def _(g: torch.Tensor, x: torch.Tensor, v: Any, k: Any) -> Any:
    s = x.new_empty(x.shape[:2], dtype=STATS)
    return s, torch.empty_like(s), torch.empty_like(s)


@torch.library.custom_op("normbench::evo_s0_input_grad", mutates_args=())
def evo_s0_input_grad(
    g: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    k: torch.Tensor,
    mean: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
) -> torch.Tensor:
    """dx = g·k·s·(1 + v·x·(1 − s)) + (x − mean)·p + q, s = sigmoid(v_c·x), per (n, c)
    coefficients k, mean, p, q; in x's dtype and memory format."""
    dx = torch.empty_like(x)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=True)
        c, w, hw = _geometry(x)
        grid = (x.shape[0], _cdiv(c, bc), _cdiv(hw, bhw))
        _launch(
            x, "evo_s0_input_grad", grid,
            g, x, dx, _param(v), _stat(k, x), _stat(mean, x), _stat(p, x), _stat(q, x),
            c, w, hw, *x.stride(), *g.stride(), *dx.stride(), BLOCK_C=bc, BLOCK_HW=bhw,
        )  # fmt: skip
    return dx


@evo_s0_input_grad.register_fake
def _(g: torch.Tensor, x: torch.Tensor, v: Any, k: Any, mean: Any, p: Any, q: Any) -> Any:
    return torch.empty_like(x)
