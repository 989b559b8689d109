"""The per-instance affine normalisation's CUDA kernels as torch operators (`torch.library`).

Each Triton kernel of `_triton` is one operator `normbench::<name>`, so autograd, `torch.compile`
and a `TorchDispatchMode` see one call that reads its tensor arguments and writes its results
(`normbench bench traffic` counts bytes that way), and FakeTensor/meta tensors get the shapes
from the fake implementations here without importing Triton. Shapes: x, g, y, dx (N, C, H, W)
in any memory format; per-instance statistics (N, C) float32; dtypes fp16, bf16 or fp32
(`KERNEL_DTYPES`). `available(x)` says whether a CUDA tensor can take this path.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STATS = torch.float32


@functools.cache
def triton_installed() -> bool:
    """Whether Triton can be imported (it ships with torch's Linux CUDA wheels)."""
    return importlib.util.find_spec("triton") is not None


def available(x: torch.Tensor) -> bool:
    """A CUDA tensor of a kernel dtype, with Triton installed."""
    return x.device.type == "cuda" and x.dtype in KERNEL_DTYPES and triton_installed()


def _launch(
    module: str, name: str, x: torch.Tensor, grid: tuple[int, ...], *args: Any, **meta: Any
) -> None:
    """Run kernel `name` of `normbench.variants.<module>` on x's device (Triton launches on
    the current CUDA device). Importing the module builds its kernels: this first launch."""
    kernel = getattr(importlib.import_module(f"normbench.variants.{module}"), name)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](*args, **meta)


def launch_over(
    module: str,
    name: str,
    x: torch.Tensor,
    args: tuple[Any, ...],
    strided: tuple[torch.Tensor, ...],
    *,
    tiles: bool,
    **meta: Any,
) -> None:
    """Run kernel `name` over x (N, C, H, W): one program per (sample, channel block) that
    walks the positions (a reduction), or with `tiles` per (sample, channel block, position
    block). Its arguments: `args`, x's `C, W, H·W`, each `strided` tensor's strides (one
    tuple each), `meta`, and the blocks (`_blocks`). Nothing runs on an empty x."""
    if not x.numel():
        return
    bc, bhw = _blocks(x, elementwise=tiles)
    c, w, hw = _geometry(x)
    grid = (x.shape[0], _cdiv(c, bc), _cdiv(hw, bhw))[: 3 if tiles else 2]
    strides = (t.stride() for t in strided)
    _launch(module, name, x, grid, *args, c, w, hw, *strides, BLOCK_C=bc, BLOCK_HW=bhw, **meta)


def _pow2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()


def _blocks(x: torch.Tensor, *, elementwise: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): a tile of about 1-4 Ki elements whose fast axis is the contiguous
    one: channels for channels_last, positions otherwise (coalesced loads on a GPU)."""
    c, hw = x.shape[1], x.shape[2] * x.shape[3]
    if x.stride(1) == 1 and c > 1:  # channels_last
        block_c = min(_pow2(c), 64)
        return block_c, min(_pow2(hw), max(4096 // block_c, 1))
    block_hw = min(_pow2(hw), 1024 if elementwise else 2048)
    return min(_pow2(c), max(2048 // block_hw, 1)), block_hw


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _stat(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-instance quantity as a contiguous (N, C) float32 tensor: a no-op for the
    coefficients' own outputs; a conversion is a kernel the dispatcher sees (and
    `normbench bench traffic` counts), outside the operators."""
    return t.to(STATS).expand(like.shape[0], like.shape[1]).contiguous()


def _geometry(x: torch.Tensor) -> tuple[int, int, int]:
    """(C, W, H·W): what every kernel needs besides strides."""
    return x.shape[1], x.shape[3], x.shape[2] * x.shape[3]


@torch.library.custom_op("normbench::instance_moments", mutates_args=())
def instance_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance over (H, W), (N, C) float32 each; reads x once."""
    mean = x.new_empty(x.shape[:2], dtype=STATS)
    var = torch.empty_like(mean)
    launch_over("_triton", "moments", x, (x, mean, var), (x,), tiles=False)
    return mean, var


@instance_moments.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.new_empty(x.shape[:2], dtype=STATS)
    return mean, torch.empty_like(mean)


def instance_affine(
    x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, at_mean: torch.Tensor
) -> torch.Tensor:
    """y = (x − mean)·scale + at_mean per (n, c), in x's dtype and memory format."""
    return _affine(x, *(_stat(t, x) for t in (mean, scale, at_mean)))


@torch.library.custom_op("normbench::instance_affine", mutates_args=())
def _affine(
    x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, at_mean: torch.Tensor
) -> torch.Tensor:
    y = torch.empty_like(x)
    launch_over("_triton", "affine", x, (x, y, mean, scale, at_mean), (x, y), tiles=True)
    return y


@_affine.register_fake
def _(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, at_mean: torch.Tensor) -> Any:
    return torch.empty_like(x)


def instance_grad_sums(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_g = Σ_hw g and S_gc = Σ_hw g·(x − mean), (N, C) float32 each; reads g and x once."""
    return _grad_sums(g, x, _stat(mean, x))


@torch.library.custom_op("normbench::instance_grad_sums", mutates_args=())
def _grad_sums(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    s_g = x.new_empty(x.shape[:2], dtype=STATS)
    s_gc = torch.empty_like(s_g)
    launch_over("_triton", "grad_sums", x, (g, x, mean, s_g, s_gc), (x, g), tiles=False)
    return s_g, s_gc


@_grad_sums.register_fake
def _(g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor) -> Any:
    s_g = x.new_empty(x.shape[:2], dtype=STATS)
    return s_g, torch.empty_like(s_g)


def instance_input_grad(
    x: torch.Tensor,
    mean: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    g: torch.Tensor | None,
    a: torch.Tensor | None,
    p_scale: float = 1.0,
    q_scale: float = 1.0,
) -> torch.Tensor:
    """dx = (x − mean)·p·p_scale + q·q_scale (+ g·a) per (n, c), in x's dtype and memory
    format (the scales: the moments' 2/(H·W) and 1/(H·W), applied in the kernel)."""
    stats = [_stat(t, x) for t in (mean, p, q)]
    a_stat = _stat(a, x) if g is not None and a is not None else None
    return _input_grad(x, *stats, g, a_stat, p_scale, q_scale)


@torch.library.custom_op("normbench::instance_input_grad", mutates_args=())
def _input_grad(
    x: torch.Tensor,
    mean: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    g: torch.Tensor | None,
    a: torch.Tensor | None,
    p_scale: float,
    q_scale: float,
) -> torch.Tensor:
    dx = torch.empty_like(x)
    has_g = g is not None and a is not None
    g_arg = g if g is not None else x
    a_arg = a if a is not None else mean  # unread without g
    args = (x, g_arg, dx, mean, p, q, a_arg, p_scale, q_scale)
    launch_over("_triton", "input_grad", x, args, (x, g_arg, dx), tiles=True, HAS_G=has_g)
    return dx


@_input_grad.register_fake
def _(x: torch.Tensor, mean: Any, p: Any, q: Any, g: Any, a: Any, ps: Any, qs: Any) -> Any:
    return torch.empty_like(x)


def sample_weighted_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_n weights[n]·x[n], (C, H, W) contiguous float32; reads x once (UBN's similarity)."""
    return _weighted_sum(x, weights.to(STATS).contiguous())


@torch.library.custom_op("normbench::sample_weighted_sum", mutates_args=())
def _weighted_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    out = x.new_zeros((c, h, w), dtype=STATS)
    if x.numel():
        bc, bhw = _blocks(x, elementwise=True)
        grid = (_cdiv(c, bc), _cdiv(h * w, bhw))
        args = (x, weights, out, n, c, w, h * w, x.stride())
        _launch("_triton", "weighted_sum", x, grid, *args, BLOCK_C=bc, BLOCK_HW=bhw)
    return out


@_weighted_sum.register_kernel("cpu")
def _(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The CPU's (a compiled region on the CPU calls the operator too): a mat-vec."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        flat = weights @ x.permute(0, 2, 3, 1).reshape(n, -1).to(STATS)  # a free view
        return flat.reshape(h, w, c).permute(2, 0, 1).contiguous()
    return (weights @ x.reshape(n, -1).to(STATS)).reshape(c, h, w)


@_weighted_sum.register_fake
def _(x: torch.Tensor, weights: torch.Tensor) -> Any:
    return x.new_empty(x.shape[1:], dtype=STATS)
